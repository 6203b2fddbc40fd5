import type {
  CheckJson,
  ClientJson,
  DeliveriesPageJson,
  DeliveryJson,
  EventJson,
  EventsPageJson,
  GeneratedJson,
  HistoryJson,
  ImportJson,
  LeaseJson,
  LeaseRecordJson,
  NewClientJson,
  PoolJson,
  ReleasedJson,
  RetiredJson,
  RevokedClientJson,
  StatsJson,
  TokenDetailsJson,
  TokenJson,
  UserRevokedJson,
  ValidationJson,
  WebhookJson,
  WebhookWithSecretJson,
} from './contract.js';

// The answers' examples in the OpenAPI document (contract.ts), like those docs/api.md shows. Typed
// with the answers' types, and checked against the document's schemas by test/openapi.test.ts.

export const ids = {
  token: '0c6d4a5e-8f51-4a8e-b6a3-3f1f0e2b9c77',
  otherToken: '1d7e5b6f-9a62-4b9f-87b4-4a2a1f3cad88',
  user: '9b2f4c1e-5d3a-4b6f-8e7d-1a2b3c4d5e6f',
  lease: '5f0e9d2c-1b7a-4c3e-9a8b-7d6c5b4a3f21',
  client: '4e5f6a7b-8c9d-4e0f-9a1b-2c3d4e5f6a7b',
  webhook: '6a7b8c9d-0e1f-4a2b-8c3d-4e5f6a7b8c9d',
} as const;

const at = {
  start: '2026-11-23T10:00:00.000Z',
  end: '2026-11-23T10:02:00.000Z',
  ended: '2026-11-23T10:00:42.120Z',
  earlier: '2026-11-23T09:00:00.000Z',
} as const;

const lease: LeaseJson = {
  token_id: ids.token,
  user_id: ids.user,
  activated_at: at.start,
  expires_at: at.end,
  lease_id: ids.lease,
  fence: 1,
};

const token: TokenJson = {
  id: ids.token,
  status: 'active',
  current_user_id: ids.user,
  activated_at: at.start,
  expires_at: at.end,
};

const released: ReleasedJson = {
  token_id: ids.token,
  lease_id: ids.lease,
  user_id: ids.user,
  fence: 1,
  started_at: at.start,
  expires_at: at.end,
  ended_at: at.ended,
  end_reason: 'released',
};

const leaseRecord: LeaseRecordJson = {
  lease_id: ids.lease,
  pool: 'default',
  token_id: ids.token,
  user_id: ids.user,
  fence: 1,
  started_at: at.start,
  expires_at: at.end,
  ended_at: at.ended,
  end_reason: 'revoked',
  active: false,
};

const pool: PoolJson = {
  name: 'gpu-a100',
  size: 8,
  lease_ttl_ms: 600_000,
  max_lease_ms: null,
  full_policy: 'reject',
  max_waiters: 1000,
  free: 8,
  held: 0,
  retired: 0,
};

const client: ClientJson = {
  id: ids.client,
  name: 'billing',
  scopes: ['lease', 'read'],
  created_at: at.earlier,
  last_used_at: at.start,
};

const webhook: WebhookJson = {
  id: ids.webhook,
  url: 'https://hooks.example.com/token-lease',
  events: ['lease.expired', 'lease.revoked'],
  created_at: at.earlier,
  disabled_at: null,
};

const secret = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw2XnUqHbT+hE=';

const delivery: DeliveryJson = {
  id: 42,
  event_id: 7,
  type: 'lease.expired',
  state: 'pending',
  next_attempt_at: at.end,
  created_at: at.start,
  attempts: [{ started_at: at.start, status: 503, duration_ms: 87, error: 'the endpoint answered 503' }],
};

const event: EventJson = {
  id: 1,
  type: 'lease.activated',
  timestamp: at.start,
  data: {
    pool: 'default',
    token_id: ids.token,
    lease_id: ids.lease,
    user_id: ids.user,
    fence: 1,
    started_at: at.start,
    expires_at: at.end,
    ended_at: null,
  },
};

/** The data of each operation's success answer. */
export const answers = {
  lease,
  tokens: [token, { id: ids.otherToken, status: 'available', current_user_id: null, activated_at: null, expires_at: null }] satisfies TokenJson[],
  tokenDetails: {
    ...token,
    active_usage: { user_id: ids.user, started_at: at.start, expires_at: at.end, lease_id: ids.lease, fence: 1 },
  } satisfies TokenDetailsJson,
  history: {
    token_id: ids.token,
    usages: [
      { lease_id: ids.lease, user_id: ids.user, fence: 2, started_at: at.start, expires_at: at.end, ended_at: null, end_reason: null },
      {
        lease_id: '7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d',
        user_id: '3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f',
        fence: 1,
        started_at: '2026-11-23T09:50:00.000Z',
        expires_at: '2026-11-23T09:52:00.000Z',
        ended_at: '2026-11-23T09:51:10.000Z',
        end_reason: 'revoked',
      },
    ],
    next_cursor: 'ZjE',
  } satisfies HistoryJson,
  released,
  validation: { valid: false, reason: 'revoked' } satisfies ValidationJson,
  cleared: { cleared_tokens: 3 },
  check: { token_id: ids.token, held: true, expires_at: at.end, fence: 1, user_id: ids.user } satisfies CheckJson,
  redeemed: { ...released, end_reason: 'redeemed' } satisfies ReleasedJson,
  retired: { token_id: ids.token, status: 'retiring', usage: { ...released, ended_at: null, end_reason: null } } satisfies RetiredJson,
  generated: { token_ids: ['0f4c2a9e-1b7d-4e3f-8a6b-5c4d3e2f1a0b', '7e6d5c4b-3a2f-4e1d-9c8b-7a6f5e4d3c2b'] } satisfies GeneratedJson,
  imported: {
    items: [
      { line: 1, value: 'LK-2026-0001', outcome: 'stored', reason: null, token_id: '2b1e6f0a-7c4d-4e8f-9a1b-3c5d7e9f1a2b' },
      { line: 3, value: 'LK 2026 0002', outcome: 'invalid', reason: 'not printable ASCII without spaces', token_id: null },
      { line: 4, value: 'LK-2026-0001', outcome: 'duplicate', reason: null, token_id: null },
    ],
    totals: { stored: 1, duplicate: 1, invalid: 1 },
  } satisfies ImportJson,
  leaseRecord,
  openLeaseRecord: { ...leaseRecord, ended_at: null, end_reason: null, active: true } satisfies LeaseRecordJson,
  userRevoked: { user_id: ids.user, revoked: 1, leases: [leaseRecord] } satisfies UserRevokedJson,
  newClient: {
    id: ids.client,
    name: 'billing',
    scopes: ['lease', 'read'],
    key: 'tlk_q3Vn8Yc2LwR0xT5bZk7HdPj4sGf1eMa9uNi6oKy-ErW',
    created_at: at.earlier,
  } satisfies NewClientJson,
  clients: [client],
  revokedClient: { ...client, revoked_at: at.ended } satisfies RevokedClientJson,
  webhook,
  webhooks: [webhook],
  webhookWithSecret: { ...webhook, secret } satisfies WebhookWithSecretJson,
  delivery,
  deliveries: { deliveries: [delivery], next_before: null } satisfies DeliveriesPageJson,
  pool,
  pools: [pool],
  stats: {
    pool: 'default',
    from: '2026-01-01T00:00:00.000Z',
    to: '2026-01-01T00:02:00.000Z',
    bucket_seconds: 60,
    tokens: 2,
    buckets: [
      { start: '2026-01-01T00:00:00.000Z', held_share: 0.4166666666666667, activations: 1, expiries: 0, refusals: 0, waits: 0 },
      { start: '2026-01-01T00:01:00.000Z', held_share: 0.5, activations: 0, expiries: 1, refusals: 2, waits: 1 },
    ],
  } satisfies StatsJson,
  events: { events: [event], next_after: 1 } satisfies EventsPageJson,
  health: { status: 'ok' },
  ready: { status: 'ready', checks: { postgres: 'up', redis: 'up' } },
} as const;

/** A Server-Sent Events stream as GET /api/events/stream sends it. */
export const eventStream = `id: 1\nevent: lease.activated\ndata: ${JSON.stringify(event)}\n\n: keep-alive\n\n`;

export const metricsText =
  '# HELP token_lease_activations_total Activation requests by pool and outcome: created, existing or exhausted.\n' +
  '# TYPE token_lease_activations_total counter\n' +
  'token_lease_activations_total{pool="default",outcome="created"} 42\n';
