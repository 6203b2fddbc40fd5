import { z } from 'zod';
import { ERRORS, type ErrorCode, type ErrorDefinition } from '../errors.js';
import { CLIENT_SCOPES } from '../domain/clients.js';
import { EVENT_TYPES } from '../domain/events.js';
import {
  activateQuery,
  checkBody,
  clientBody,
  eventsQuery,
  generateBody,
  historyQuery,
  importJsonBody,
  leaseBody,
  poolBody,
  poolPatch,
  redeemBody,
  retireBody,
  statsQuery,
  streamQuery,
  userBody,
  validateBody,
  deliveriesQuery,
  webhookBody,
} from './schemas.js';
import { answers, eventStream, ids, metricsText } from './examples.js';

// The API's answers as zod schemas: the routes build their answers with these types, the
// OpenAPI document served at GET /openapi.json is generated from them and from the request
// schemas, and the contract tests check real answers against them. One source, so the served
// docs cannot drift from the code.

const uuid = z.guid();
const time = z.iso.datetime({ precision: 3 }).describe('ISO 8601 UTC with milliseconds');
const endReason = z.enum(['expired', 'released', 'cleared', 'evicted', 'redeemed', 'retired', 'revoked']);

export const leaseSchema = z.object({
  token_id: uuid,
  user_id: uuid,
  activated_at: time,
  expires_at: time,
  lease_id: uuid,
  fence: z.int().min(1).describe('Grows with every lease of the same token'),
  value: z
    .string()
    .optional()
    .describe("The token's secret value, for its holder only; absent for a token without one"),
});

/** A holder's id, null to callers who may not see it (AUTH_MODE other than none; docs/security.md). */
const holderId = uuid.nullable();

export const tokenSchema = z.object({
  id: uuid,
  status: z.enum(['available', 'active', 'retired']),
  current_user_id: holderId,
  activated_at: time.nullable(),
  expires_at: time.nullable(),
});

export const tokenDetailsSchema = tokenSchema.extend({
  active_usage: z
    .object({ user_id: holderId, started_at: time, expires_at: time, lease_id: holderId, fence: z.int().min(1) })
    .nullable(),
});

export const usageSchema = z.object({
  lease_id: holderId,
  user_id: holderId,
  fence: z.int().min(1),
  started_at: time,
  expires_at: time,
  ended_at: time.nullable(),
  end_reason: endReason.nullable(),
});

export const historySchema = z.object({
  token_id: uuid,
  usages: z.array(usageSchema),
  next_cursor: z.string().nullable().describe('Pass as ?cursor= for the next page; null on the last'),
});

export const releasedSchema = usageSchema.extend({ token_id: uuid, lease_id: uuid, user_id: uuid });

export const validationSchema = z.discriminatedUnion('valid', [
  z.object({ valid: z.literal(true), lease_id: uuid, expires_at: time }),
  z.object({
    valid: z.literal(false),
    reason: z.enum(['expired', 'released', 'cleared', 'revoked', 'superseded', 'redeemed', 'retired', 'not_holder', 'unknown_lease']),
  }),
]);

export const clearedSchema = z.object({ cleared_tokens: z.int().min(0) });

export const checkSchema = z.object({
  token_id: uuid.nullable().describe('The token with this value; null when no token has it'),
  held: z.boolean().describe('Whether it is held now'),
  expires_at: time.nullable().describe('Until when, while held'),
  fence: z.int().min(1).nullable().describe("The holder's lease's fence, while held"),
  user_id: uuid
    .nullable()
    .optional()
    .describe('The holder, while held; only to callers who may see holders (docs/security.md)'),
});

export const retiredSchema = z.object({
  token_id: uuid,
  status: z.enum(['retired', 'retiring']).describe('retiring: held, and retired once its lease ends'),
  usage: usageSchema.nullable().describe('The lease this call ended, or (retiring) the lease it waits for'),
});

export const generatedSchema = z.object({ token_ids: z.array(uuid).describe('The new tokens, in order') });

const importOutcome = z.enum(['stored', 'duplicate', 'invalid']);
export const importSchema = z.object({
  items: z.array(
    z.object({
      line: z.int().min(1).describe('The line of a text/plain import; the place in the list of a JSON one'),
      value: z.string(),
      outcome: importOutcome,
      reason: z.string().nullable().describe('Why the value is invalid'),
      token_id: uuid.nullable().describe('The token a stored value became'),
    }),
  ),
  totals: z.object({ stored: z.int().min(0), duplicate: z.int().min(0), invalid: z.int().min(0) }),
});

/** One lease looked up by its id (GET /api/leases/:lease_id, and a revoke's answer). */
export const leaseRecordSchema = z.object({
  lease_id: uuid,
  pool: z.string().describe("The lease's pool"),
  token_id: uuid,
  user_id: uuid,
  fence: z.int().min(1),
  started_at: time,
  expires_at: time,
  ended_at: time.nullable().describe('Null while the lease is open'),
  end_reason: endReason.nullable().describe('Null while the lease is open'),
  active: z.boolean().describe('Open and not yet expired'),
});

/** POST /api/admin/users/:user_id/revoke: the leases it revoked. */
export const userRevokedSchema = z.object({
  user_id: uuid,
  revoked: z.int().min(0).describe('How many open leases were revoked (not those that had run out)'),
  leases: z.array(leaseRecordSchema),
});

const scopes = z.array(z.enum(CLIENT_SCOPES));

/** An API client as the admin routes list it: never its key. */
export const clientSchema = z.object({
  id: uuid,
  name: z.string(),
  scopes,
  created_at: time,
  last_used_at: time.nullable().describe('When its key was last used, to within a minute'),
});

/** A client just made: the only answer that carries its key. */
export const newClientSchema = z.object({
  id: uuid,
  name: z.string(),
  scopes,
  key: z.string().describe('Shown once: only its hash is kept'),
  created_at: time,
});

export const revokedClientSchema = clientSchema.extend({ revoked_at: time });

const check = z.enum(['up', 'down', 'not_used']);
export const readySchema = z.object({
  status: z.literal('ready'),
  checks: z.object({ postgres: check, redis: check }),
});

/** Every error answer (src/http/errors.ts); the codes, statuses and messages are src/errors.ts's. */
export const errorSchema = z.object({
  error: z.object({
    code: z.string().describe("The error's code: those an answer may carry are in its x-error-codes"),
    message: z.string(),
    details: z.record(z.string(), z.unknown()).describe('More about this error, by code (docs/api.md); {} when none'),
  }),
});

/** The 409 of release, renew and redeem: how the lease named ended, or that it is not the user's. */
export const leaseRefusalSchema = z.object({
  error: errorSchema.shape.error.extend({
    details: z.object({
      reason: z
        .enum([...endReason.options, 'not_held'])
        .optional()
        .describe("lease_ended, lease_expired: the lease's end_reason; not_holder: not_held"),
      ended_at: time.nullable().optional().describe('lease_ended, lease_expired, already_redeemed: when it ended'),
    }),
  }),
});

export const healthSchema = z.object({ status: z.literal('ok') });

/** `{"data": ...}`, the envelope of every successful answer. */
export const envelope = <S extends z.ZodType>(data: S) => z.object({ data });

export const poolSchema = z.object({
  name: z.string().describe('Lower-case letters, digits and -, at most 63 characters'),
  size: z.int().min(0).describe('How many tokens the pool is kept at; it only grows'),
  lease_ttl_ms: z.int().min(100).describe("The pool's lease time, else the service's LEASE_TTL_MS"),
  max_lease_ms: z.int().min(100).nullable().describe("The pool's longest lease, else MAX_LEASE_MS; null: no cap"),
  full_policy: z.enum(['reject', 'evict_oldest']).describe("When every token is leased; else POOL_FULL_POLICY"),
  max_waiters: z.int().min(0).describe('Clients one API process lets wait for this pool, within MAX_WAITERS'),
  free: z.int().min(0).describe('Tokens without an active lease'),
  held: z.int().min(0).describe('Tokens with an active lease'),
  retired: z.int().min(0).describe('Tokens taken out of use (a held one counts once its lease ends)'),
});

const count = z.int().min(0);
export const statsSchema = z.object({
  pool: z.string(),
  from: time.describe('Start of the first bucket: the asked from, rounded down to the minute'),
  to: time.describe('End of the last bucket'),
  bucket_seconds: z.int().min(60),
  tokens: count.describe("The pool's tokens now, the base of held_share"),
  buckets: z.array(
    z.object({
      start: time,
      held_share: z.number().min(0).max(1).describe("Share of the pool's token-time held in the bucket"),
      activations: count.describe('Leases that started in the bucket'),
      expiries: count.describe('Leases that ran out (expires_at) in the bucket'),
      refusals: count.describe('Activations answered pool_exhausted, at once or after waiting'),
      waits: count.describe('Activations that waited in the queue of a full pool'),
    }),
  ),
});

/** One change to a lease (docs/events.md): the same JSON in GET /api/events and in the stream's data lines. */
export const eventSchema = z.object({
  id: z.int().min(1).describe('Grows with every event; events are answered and streamed in id order'),
  type: z.enum(EVENT_TYPES),
  timestamp: time.describe('The database time of the change'),
  data: z.object({
    pool: z.string(),
    token_id: uuid,
    lease_id: uuid.nullable(),
    user_id: uuid.nullable(),
    fence: z.int().min(1).nullable(),
    started_at: time.nullable(),
    expires_at: time.nullable(),
    ended_at: time.nullable().describe('When the lease ended; null for lease.activated and lease.renewed'),
  }),
});

export const eventsPageSchema = z.object({
  events: z.array(eventSchema),
  next_after: z.int().min(0).describe('Pass as ?after= for the next page'),
});

/** A webhook as the admin routes list it: never its secret. */
export const webhookSchema = z.object({
  id: uuid,
  url: z.string(),
  events: z.array(z.enum(EVENT_TYPES)),
  created_at: time,
  disabled_at: time.nullable().describe('When its endpoint answered 410 Gone; nothing is sent to it since'),
});

/** A webhook just made, or its secret just rotated: the only answers that carry the secret. */
export const webhookWithSecretSchema = webhookSchema.extend({
  secret: z.string().describe('whsec_ and base64 of 32 random bytes: the signing key, shown only here'),
});

export const deliverySchema = z.object({
  id: z.int().min(1),
  event_id: z.int().min(1),
  type: z.enum(EVENT_TYPES).nullable().describe("The event's type; null once retention removed the event"),
  state: z.enum(['pending', 'succeeded', 'failed']),
  next_attempt_at: time.nullable().describe('When the next attempt may start; null unless pending'),
  created_at: time,
  attempts: z.array(
    z.object({
      started_at: time,
      status: z.int().nullable().describe("The answer's HTTP status; null when none came"),
      duration_ms: z.int().min(0),
      error: z.string().nullable().describe('What went wrong; null for a 2xx'),
    }),
  ),
});

export const deliveriesPageSchema = z.object({
  deliveries: z.array(deliverySchema).describe('Newest first'),
  next_before: z.int().min(1).nullable().describe('Pass as ?before= for the next (older) page; null on the last'),
});

export type WebhookJson = z.infer<typeof webhookSchema>;
export type WebhookWithSecretJson = z.infer<typeof webhookWithSecretSchema>;
export type DeliveryJson = z.infer<typeof deliverySchema>;
export type DeliveriesPageJson = z.infer<typeof deliveriesPageSchema>;
export type EventJson = z.infer<typeof eventSchema>;
export type EventsPageJson = z.infer<typeof eventsPageSchema>;
export type LeaseJson = z.infer<typeof leaseSchema>;
export type StatsJson = z.infer<typeof statsSchema>;
export type PoolJson = z.infer<typeof poolSchema>;
export type TokenJson = z.infer<typeof tokenSchema>;
export type TokenDetailsJson = z.infer<typeof tokenDetailsSchema>;
export type UsageJson = z.infer<typeof usageSchema>;
export type HistoryJson = z.infer<typeof historySchema>;
export type ReleasedJson = z.infer<typeof releasedSchema>;
export type ValidationJson = z.infer<typeof validationSchema>;
export type ClientJson = z.infer<typeof clientSchema>;
export type LeaseRecordJson = z.infer<typeof leaseRecordSchema>;
export type UserRevokedJson = z.infer<typeof userRevokedSchema>;
export type NewClientJson = z.infer<typeof newClientSchema>;
export type RevokedClientJson = z.infer<typeof revokedClientSchema>;
export type CheckJson = z.infer<typeof checkSchema>;
export type RetiredJson = z.infer<typeof retiredSchema>;
export type GeneratedJson = z.infer<typeof generatedSchema>;
export type ImportJson = z.infer<typeof importSchema>;

type JsonSchema = Record<string, unknown>;

/** Without $schema and $id: the document sets the dialect, and a component is named by its place. */
function bare(schema: JsonSchema): JsonSchema {
  const copy = { ...schema };
  delete copy.$schema;
  delete copy.$id;
  return copy;
}

/** What a request schema accepts, as JSON Schema. */
const input = (schema: z.ZodType): JsonSchema =>
  bare(z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any', target: 'draft-2020-12' }));

/**
 * Answers may gain fields (routes.ts: add fields, never rename them), so their schemas must not
 * forbid unknown ones, which zod writes for every object it outputs: a client validating answers
 * strictly against this document would break on the next added field.
 */
function open<T>(schema: T): T {
  if (Array.isArray(schema)) return schema.map(open) as T;
  if (typeof schema !== 'object' || schema === null) return schema;
  return Object.fromEntries(
    Object.entries(schema)
      .filter(([key, value]) => !(key === 'additionalProperties' && value === false))
      .map(([key, value]) => [key, open(value)]),
  ) as T;
}

/** The answers' shapes, as components.schemas: each is written once and referenced with $ref. */
const SCHEMAS = {
  Timestamp: time,
  Error: errorSchema,
  LeaseRefusal: leaseRefusalSchema,
  EndReason: endReason,
  Lease: leaseSchema,
  Token: tokenSchema,
  TokenDetails: tokenDetailsSchema,
  Usage: usageSchema,
  History: historySchema,
  Released: releasedSchema,
  Validation: validationSchema,
  Cleared: clearedSchema,
  Check: checkSchema,
  Retired: retiredSchema,
  Generated: generatedSchema,
  Import: importSchema,
  LeaseRecord: leaseRecordSchema,
  UserRevoked: userRevokedSchema,
  Client: clientSchema,
  NewClient: newClientSchema,
  RevokedClient: revokedClientSchema,
  Pool: poolSchema,
  Stats: statsSchema,
  Event: eventSchema,
  EventsPage: eventsPageSchema,
  Webhook: webhookSchema,
  WebhookWithSecret: webhookWithSecretSchema,
  Delivery: deliverySchema,
  DeliveriesPage: deliveriesPageSchema,
  Health: healthSchema,
  Ready: readySchema,
} as const;
type SchemaName = keyof typeof SCHEMAS;
type DataOf<N extends SchemaName> = z.output<(typeof SCHEMAS)[N]>;

const ref = (name: SchemaName) => ({ $ref: `#/components/schemas/${name}` });

/** components.schemas, with the shapes one contains referenced, not repeated. */
function componentSchemas(): Record<string, JsonSchema> {
  const registry = z.registry<{ id: string }>();
  for (const [id, schema] of Object.entries(SCHEMAS)) registry.add(schema, { id });
  const { schemas } = z.toJSONSchema(registry, {
    io: 'output',
    unrepresentable: 'any',
    target: 'draft-2020-12',
    uri: (id) => ref(id as SchemaName).$ref,
  });
  return Object.fromEntries(Object.entries(schemas).map(([id, schema]) => [id, open(bare(schema))]));
}

/** `{"data": ...}`: a success answer with its example. */
function success(description: string, data: JsonSchema, example: unknown) {
  return {
    description,
    content: {
      'application/json': {
        schema: { type: 'object', properties: { data }, required: ['data'] },
        example: { data: example },
      },
    },
  };
}

const answer = <N extends SchemaName>(description: string, name: N, example: DataOf<N>) =>
  success(description, ref(name), example);

const answerList = <N extends SchemaName>(description: string, name: N, example: ReadonlyArray<DataOf<N>>) =>
  success(description, { type: 'array', items: ref(name) }, example);

/** What sendError (src/http/errors.ts) adds to these answers: when to retry. */
const retryAfterHeader = {
  description: 'Seconds to wait before retrying',
  schema: { type: 'integer', minimum: 0 },
  example: 1,
};
const RETRY_AFTER: ReadonlySet<string> = new Set([
  ERRORS.pool_exhausted.code,
  ERRORS.rate_limited.code,
  ...Object.values(ERRORS)
    .filter((e) => e.status === 503)
    .map((e) => e.code),
]);

/** The 409s that name a lease: their details say how it ended (LeaseRefusal). */
const LEASE_REFUSALS: ReadonlySet<string> = new Set([ERRORS.lease_ended.code, ERRORS.lease_expired.code, ERRORS.not_holder.code]);

/** An error answer that may carry these codes (of one status), with an example of each code it can show. */
function errorResponse(list: readonly ErrorDefinition[]) {
  const schema = list.some((d) => LEASE_REFUSALS.has(d.code)) ? ref('LeaseRefusal') : ref('Error');
  const examples = Object.fromEntries(
    list.flatMap((d) => {
      const details = ERROR_DETAILS[d.code as ErrorCode];
      return details === undefined ? [] : [[d.code, { value: { error: { code: d.code, message: d.message, details } } }]];
    }),
  );
  return {
    description: list.map((d) => `${d.code}: ${d.message}`).join('; '),
    'x-error-codes': list.map((d) => d.code),
    ...(list.some((d) => RETRY_AFTER.has(d.code)) ? { headers: { 'Retry-After': { $ref: '#/components/headers/RetryAfter' } } } : {}),
    content: { 'application/json': { schema, ...(Object.keys(examples).length > 0 ? { examples } : {}) } },
  };
}

/**
 * details in the error examples, for the codes whose details are the same on every route (those
 * of not_found, for one, name what was not found).
 */
const ERROR_DETAILS: Partial<Record<ErrorCode, Record<string, unknown>>> = {
  invalid_json: {},
  payload_too_large: {},
  idempotency_key_reused: {},
  unauthorized: { reason: 'missing' },
  forbidden: { reason: 'missing_scope', scope: 'admin' },
  validation_failed: { fields: [{ field: 'user_id', message: 'must be a UUID' }] },
  pool_exhausted: { retry_after_seconds: 12 },
  not_holder: { reason: 'not_held' },
  lease_ended: { reason: 'revoked', ended_at: '2026-11-23T10:00:42.120Z' },
  lease_expired: { reason: 'expired', ended_at: '2026-11-23T10:02:00.000Z' },
  max_lease_reached: { expires_at: '2026-11-23T11:00:00.000Z' },
  rate_limited: { budget: 'lease', limit_per_minute: 600 },
  unavailable: { reason: 'database_unreachable' },
  too_many_waiters: { max_waiters: 1000 },
  too_many_streams: { max_streams: 1000 },
  not_ready: { checks: { postgres: 'down', redis: 'up' } },
};

/** The error answers many operations share, as components.responses. */
const COMMON_ERRORS = {
  BadRequest: [ERRORS.invalid_json, ERRORS.bad_request],
  Unauthorized: [ERRORS.unauthorized],
  Forbidden: [ERRORS.forbidden],
  NotFound: [ERRORS.not_found],
  PayloadTooLarge: [ERRORS.payload_too_large],
  UnsupportedMediaType: [ERRORS.unsupported_media_type],
  ValidationFailed: [ERRORS.validation_failed],
  RateLimited: [ERRORS.rate_limited],
  Unavailable: [ERRORS.unavailable],
  Internal: [ERRORS.internal],
} as const satisfies Record<string, readonly ErrorDefinition[]>;

const codesOf = (list: readonly ErrorDefinition[]) => list.map((d) => d.code).sort().join(' ');
const commonByCodes = new Map(Object.entries(COMMON_ERRORS).map(([name, list]) => [codesOf(list), name]));

/**
 * The error answers of an operation, by status, from the registry (src/errors.ts): each status
 * lists its codes and their messages, and names them in `x-error-codes`; a status whose codes
 * are those of a common answer refers to it.
 */
function failures(...definitions: readonly ErrorDefinition[]) {
  const byStatus = new Map<number, ErrorDefinition[]>();
  for (const d of definitions) byStatus.set(d.status, [...(byStatus.get(d.status) ?? []), d]);
  return Object.fromEntries(
    [...byStatus].map(([status, list]) => {
      const common = commonByCodes.get(codesOf(list));
      return [String(status), common === undefined ? errorResponse(list) : { $ref: `#/components/responses/${common}` }];
    }),
  );
}

const body = <S extends z.ZodType>(schema: S, example: z.input<S>, required = true) => ({
  required,
  content: { 'application/json': { schema: input(schema), example } },
});

const idempotencyKeyParameter = {
  name: 'Idempotency-Key',
  in: 'header',
  required: false,
  description: "A retry with the same key and request answers the first request's result (kept 24 hours)",
  schema: { type: 'string', pattern: '^[\\x21-\\x7e]{1,255}$' },
  example: 'generate-2026-11-23-01',
};

const uuidIn = (name: string, description: string, example: string) => ({
  name,
  in: 'path',
  required: true,
  description,
  schema: { type: 'string', format: 'uuid' },
  example,
});

const tokenIdParameter = uuidIn('id', 'Token id; an unknown or malformed id answers 404', ids.token);
const leaseIdParameter = uuidIn('lease_id', 'Lease id; an unknown or malformed id answers 404', ids.lease);
const userIdParameter = uuidIn('user_id', 'User id (a UUID); a malformed one answers 422', ids.user);
const webhookIdParameter = uuidIn('id', 'Webhook id; an unknown or malformed id answers 404', ids.webhook);
const clientIdParameter = uuidIn('id', 'Client id; an unknown or malformed id answers 404', ids.client);

const poolParameter = {
  name: 'pool',
  in: 'path',
  required: true,
  description: 'Pool name; an unknown name answers 404',
  schema: { type: 'string', pattern: '^[a-z0-9-]{1,63}$' },
  example: 'gpu-a100',
};

function queryParameters(schema: z.ZodObject) {
  const properties = (input(schema).properties ?? {}) as Record<string, unknown>;
  return Object.entries(properties).map(([name, property]) => ({ name, in: 'query', required: false, schema: property }));
}

/** Every /api/ route with AUTH_MODE=jwt (docs/security.md): 401 without valid credentials, 403 without the right. */
const AUTH = [ERRORS.unauthorized, ERRORS.forbidden] as const;

/** The lease routes with RATE_LIMIT_PER_MINUTE, the admin routes with ADMIN_RATE_LIMIT_PER_MINUTE. */
const LIMITED = [ERRORS.rate_limited] as const;

/** What any route that reads a JSON body may answer besides its own errors. */
const BAD_INPUT = [
  ERRORS.invalid_json,
  ERRORS.bad_request,
  ERRORS.payload_too_large,
  ERRORS.unsupported_media_type,
  ERRORS.validation_failed,
  ERRORS.unavailable,
] as const;

const admin = [{ adminKey: [] }];

/**
 * The document's tags, in the order the reference page (/docs) shows them, and which operations
 * each takes: an operation's path is matched against each in turn, the first match wins.
 */
const TAGS: ReadonlyArray<{ name: string; description: string; paths: RegExp }> = [
  {
    name: 'Leases',
    description: 'Take a token, end, renew and check a lease; look one up or revoke it',
    paths: /^\/api\/(tokens\/(activate|\{id\}\/(release|renew|validate))|pools\/\{pool\}\/tokens\/activate|leases\/|admin\/(leases|users)\/)/,
  },
  { name: 'Tokens', description: 'The pool of tokens, a token and its history', paths: /^\/api\/tokens($|\/\{id\}($|\/history)|\/clear)/ },
  {
    name: 'Token values',
    description: 'Tokens that carry a secret value: add, check, redeem, retire',
    paths: /^\/api\/(tokens\/(check|redeem)|admin\/tokens\/|admin\/pools\/\{pool\}\/tokens\/)/,
  },
  { name: 'Pools', description: 'Named pools and their settings', paths: /^\/api\/(admin\/)?pools/ },
  { name: 'Events', description: 'The event log of every lease change, and its live stream', paths: /^\/api\/events/ },
  { name: 'Webhooks', description: 'Signed deliveries of the events to your endpoints (admin)', paths: /^\/api\/admin\/webhooks/ },
  { name: 'API clients', description: 'Keys for the callers of AUTH_MODE=api_key (admin)', paths: /^\/api\/admin\/clients/ },
  { name: 'Stats', description: "A pool's activity over time", paths: /^\/api\/stats/ },
  { name: 'Operations', description: 'Health, readiness, metrics and this document', paths: /^\/(healthz|readyz|metrics|openapi\.json)$/ },
];

/** Each operation's operationId, the name a generated client gives it, by method and path. */
const OPERATION_IDS: Readonly<Record<string, string>> = {
  'POST /api/tokens/activate': 'activate',
  'GET /api/tokens': 'listTokens',
  'GET /api/tokens/{id}': 'getToken',
  'GET /api/tokens/{id}/history': 'getTokenHistory',
  'POST /api/tokens/{id}/release': 'release',
  'POST /api/tokens/{id}/renew': 'renew',
  'POST /api/tokens/{id}/validate': 'validate',
  'POST /api/tokens/clear': 'clearLeases',
  'POST /api/tokens/check': 'checkValue',
  'POST /api/tokens/redeem': 'redeemValue',
  'POST /api/admin/tokens/{id}/retire': 'retireToken',
  'POST /api/admin/pools/{pool}/tokens/generate': 'generateTokens',
  'POST /api/admin/pools/{pool}/tokens/import': 'importTokens',
  'GET /api/leases/{lease_id}': 'getLease',
  'POST /api/admin/leases/{lease_id}/revoke': 'revokeLease',
  'POST /api/admin/users/{user_id}/revoke': 'revokeUserLeases',
  'POST /api/admin/clients': 'createClient',
  'GET /api/admin/clients': 'listClients',
  'DELETE /api/admin/clients/{id}': 'revokeClient',
  'POST /api/admin/webhooks': 'createWebhook',
  'GET /api/admin/webhooks': 'listWebhooks',
  'DELETE /api/admin/webhooks/{id}': 'deleteWebhook',
  'POST /api/admin/webhooks/{id}/rotate': 'rotateWebhookSecret',
  'GET /api/admin/webhooks/{id}/deliveries': 'listWebhookDeliveries',
  'POST /api/admin/webhooks/{id}/deliveries/{delivery_id}/replay': 'replayWebhookDelivery',
  'POST /api/admin/pools': 'createPool',
  'GET /api/admin/pools': 'listPoolsAdmin',
  'PATCH /api/admin/pools/{pool}': 'updatePool',
  'GET /api/pools': 'listPools',
  'GET /api/pools/{pool}': 'getPool',
  'GET /api/pools/{pool}/tokens': 'listPoolTokens',
  'POST /api/pools/{pool}/tokens/activate': 'activateInPool',
  'POST /api/pools/{pool}/tokens/clear': 'clearPoolLeases',
  'GET /api/stats': 'getStats',
  'GET /api/events': 'listEvents',
  'GET /api/events/stream': 'streamEvents',
  'GET /healthz': 'health',
  'GET /readyz': 'ready',
  'GET /openapi.json': 'getOpenApiDocument',
  'GET /metrics': 'metrics',
};

/**
 * `paths` with each operation filed: its tag from TAGS, its OPERATION_IDS name, and the 500 any
 * operation may answer. An operation missing from TAGS or OPERATION_IDS is a mistake here, found
 * at start.
 */
function filed<P extends Record<string, Record<string, object>>>(paths: P): P {
  const unnamed = new Set(Object.keys(OPERATION_IDS));
  const result = Object.fromEntries(
    Object.entries(paths).map(([path, operations]) => {
      const tag = TAGS.find((t) => t.paths.test(path));
      if (tag === undefined) throw new Error(`no OpenAPI tag takes ${path}`);
      const named = Object.entries(operations).map(([method, op]) => {
        const key = `${method.toUpperCase()} ${path}`;
        const operationId = OPERATION_IDS[key];
        if (operationId === undefined) throw new Error(`no operationId for ${key}`);
        unnamed.delete(key);
        // Any operation may fail unexpectedly: 500 internal, with the same error body and no details.
        const { responses } = op as { responses?: Record<string, unknown> };
        return [method, { operationId, tags: [tag.name], ...op, responses: { ...responses, '500': { $ref: '#/components/responses/Internal' } } }];
      });
      return [path, Object.fromEntries(named)];
    }),
  ) as P;
  if (unnamed.size > 0) throw new Error(`operationIds of no operation: ${[...unnamed].join(', ')}`);
  return result;
}

/** The OpenAPI 3.1 description of the token API. */
export function openApiDocument(version: string) {
  return {
    openapi: '3.1.0',
    info: {
      title: 'token-lease',
      version,
      description:
        'Leases tokens from a finite pool, one per user, for a fixed time. Errors answer {"error":{"code","message","details"}}.',
    },
    components: {
      securitySchemes: {
        adminKey: { type: 'http', scheme: 'bearer', description: 'ADMIN_API_KEY, or a credential with the admin scope' },
      },
      schemas: componentSchemas(),
      responses: Object.fromEntries(Object.entries(COMMON_ERRORS).map(([name, list]) => [name, errorResponse(list)])),
      headers: { RetryAfter: retryAfterHeader },
    },
    tags: TAGS.map(({ name, description }) => ({ name, description })),
    paths: filed({
      '/api/tokens/activate': {
        post: {
          summary: 'Lease a token (or get the lease the user holds)',
          parameters: queryParameters(activateQuery.in),
          requestBody: body(userBody, { user_id: ids.user }),
          responses: {
            '200': answer('The unexpired lease the user already holds', 'Lease', answers.lease),
            '201': answer('A new lease', 'Lease', answers.lease),
            ...failures(ERRORS.pool_exhausted, ...BAD_INPUT, ...AUTH, ...LIMITED, ERRORS.too_many_waiters, ERRORS.client_closed_request),
          },
        },
      },
      '/api/tokens': {
        get: {
          summary: 'The whole pool, in a stable order',
          responses: { '200': answerList('Every token', 'Token', answers.tokens), ...failures(...AUTH, ERRORS.unavailable) },
        },
      },
      '/api/tokens/{id}': {
        get: {
          summary: 'One token and its active lease',
          parameters: [tokenIdParameter],
          responses: {
            '200': answer('The token', 'TokenDetails', answers.tokenDetails),
            ...failures(ERRORS.not_found, ...AUTH, ERRORS.unavailable),
          },
        },
      },
      '/api/tokens/{id}/history': {
        get: {
          summary: "A page of the token's usages, newest first",
          parameters: [tokenIdParameter, ...queryParameters(historyQuery)],
          responses: {
            '200': answer('A page of usages', 'History', answers.history),
            ...failures(ERRORS.not_found, ERRORS.validation_failed, ...AUTH, ERRORS.unavailable),
          },
        },
      },
      '/api/tokens/{id}/release': {
        post: {
          summary: 'End the named lease now',
          parameters: [tokenIdParameter],
          requestBody: body(leaseBody, { user_id: ids.user, lease_id: ids.lease }),
          responses: {
            '200': answer('The ended usage (also for a retried release)', 'Released', answers.released),
            ...failures(ERRORS.not_found, ERRORS.lease_expired, ERRORS.lease_ended, ERRORS.not_holder, ...BAD_INPUT, ...AUTH, ...LIMITED),
          },
        },
      },
      '/api/tokens/{id}/renew': {
        post: {
          summary: 'Extend the named lease to LEASE_TTL_MS from now',
          parameters: [tokenIdParameter],
          requestBody: body(leaseBody, { user_id: ids.user, lease_id: ids.lease }),
          responses: {
            '200': answer('The renewed lease', 'Lease', answers.lease),
            ...failures(
              ERRORS.not_found,
              ERRORS.lease_expired,
              ERRORS.lease_ended,
              ERRORS.not_holder,
              ERRORS.max_lease_reached,
              ...BAD_INPUT,
              ...AUTH,
              ...LIMITED,
            ),
          },
        },
      },
      '/api/tokens/{id}/validate': {
        post: {
          summary: 'Whether (user_id, fence) is still the active lease of the token',
          parameters: [tokenIdParameter],
          requestBody: body(validateBody, { user_id: ids.user, fence: 1 }),
          responses: {
            '200': answer('Valid with the expiry, or not with the reason', 'Validation', answers.validation),
            ...failures(ERRORS.not_found, ...BAD_INPUT, ...AUTH, ...LIMITED),
          },
        },
      },
      '/api/tokens/clear': {
        post: {
          summary: 'End every active lease (admin)',
          security: admin,
          responses: {
            '200': answer('How many active leases were ended', 'Cleared', answers.cleared),
            ...failures(ERRORS.unauthorized, ERRORS.forbidden, ...LIMITED, ERRORS.unavailable),
          },
        },
      },
      '/api/tokens/check': {
        post: {
          summary: 'Whether the token with this value is held now, until when and under which fence',
          requestBody: body(checkBody, { value: 'LK-2026-0001' }),
          responses: {
            '200': answer('The token and whether it is held; an unknown value is not held', 'Check', answers.check),
            ...failures(...BAD_INPUT, ...AUTH, ...LIMITED),
          },
        },
      },
      '/api/tokens/redeem': {
        post: {
          summary: 'The holder uses the token with this value up: the lease ends as redeemed, the token is retired',
          requestBody: body(redeemBody, { user_id: ids.user, value: 'LK-2026-0001' }),
          responses: {
            '200': answer('The ended usage', 'Released', answers.redeemed),
            ...failures(
              ERRORS.not_found,
              ERRORS.already_redeemed,
              ERRORS.lease_expired,
              ERRORS.lease_ended,
              ERRORS.not_holder,
              ...BAD_INPUT,
              ...AUTH,
              ...LIMITED,
            ),
          },
        },
      },
      '/api/admin/tokens/{id}/retire': {
        post: {
          summary: 'Take a token out of its pool (admin): a free one now, a held one when its lease ends or, with now, at once',
          security: admin,
          parameters: [tokenIdParameter],
          requestBody: body(retireBody, { now: true }, false),
          responses: {
            '200': answer('The token retired, or retiring once its lease ends; again, the same', 'Retired', answers.retired),
            ...failures(ERRORS.not_found, ...BAD_INPUT, ...AUTH, ...LIMITED),
          },
        },
      },
      '/api/admin/pools/{pool}/tokens/generate': {
        post: {
          summary: 'Add tokens with random values to the pool (admin)',
          security: admin,
          parameters: [poolParameter, idempotencyKeyParameter],
          requestBody: body(generateBody, { count: 2 }),
          responses: {
            '201': answer('The new tokens', 'Generated', answers.generated),
            ...failures(ERRORS.not_found, ERRORS.conflict, ERRORS.idempotency_key_reused, ...BAD_INPUT, ...AUTH, ...LIMITED),
          },
        },
      },
      '/api/admin/pools/{pool}/tokens/import': {
        post: {
          summary: 'Add tokens with these values to the pool, each in its own transaction (admin)',
          security: admin,
          parameters: [poolParameter, idempotencyKeyParameter],
          requestBody: {
            required: true,
            content: {
              'application/json': { schema: input(importJsonBody), example: { values: ['LK-2026-0001', 'LK 2026 0002', 'LK-2026-0001'] } satisfies z.input<typeof importJsonBody> },
              'text/plain': {
                schema: { type: 'string', description: 'One value a line; blank lines are skipped' },
                example: 'LK-2026-0001\n\nLK 2026 0002\nLK-2026-0001\n',
              },
            },
          },
          responses: {
            '200': answer('What became of each value, in input order, and the totals', 'Import', answers.imported),
            ...failures(ERRORS.not_found, ERRORS.conflict, ERRORS.idempotency_key_reused, ...BAD_INPUT, ...AUTH, ...LIMITED),
          },
        },
      },
      '/api/leases/{lease_id}': {
        get: {
          summary: 'One lease, open or ended (its holder, read or admin callers; open in AUTH_MODE=none)',
          parameters: [leaseIdParameter],
          responses: {
            '200': answer('The lease', 'LeaseRecord', answers.openLeaseRecord),
            ...failures(ERRORS.not_found, ...AUTH, ERRORS.unavailable),
          },
        },
      },
      '/api/admin/leases/{lease_id}/revoke': {
        post: {
          summary: 'End the lease now as revoked, whoever holds it; again, the same answer (admin)',
          security: admin,
          parameters: [leaseIdParameter],
          responses: {
            '200': answer('The lease as it is now (a lease that had ended answers as it ended)', 'LeaseRecord', answers.leaseRecord),
            ...failures(ERRORS.not_found, ...AUTH, ...LIMITED, ERRORS.unavailable),
          },
        },
      },
      '/api/admin/users/{user_id}/revoke': {
        post: {
          summary: 'End every open lease of the user, in every pool, as revoked (admin)',
          security: admin,
          parameters: [userIdParameter],
          responses: {
            '200': answer('The leases revoked', 'UserRevoked', answers.userRevoked),
            ...failures(ERRORS.validation_failed, ...AUTH, ...LIMITED, ERRORS.unavailable),
          },
        },
      },
      '/api/admin/clients': {
        post: {
          summary: 'Make an API client (admin); the answer is the only one that carries its key',
          security: admin,
          requestBody: body(clientBody, { name: 'billing', scopes: ['lease', 'read'] }),
          responses: {
            '201': answer('The client, with its key', 'NewClient', answers.newClient),
            ...failures(...BAD_INPUT, ...AUTH, ...LIMITED),
          },
        },
        get: {
          summary: 'The API clients not revoked, oldest first, without keys (admin)',
          security: admin,
          responses: {
            '200': answerList('Every client', 'Client', answers.clients),
            ...failures(...AUTH, ...LIMITED, ERRORS.unavailable),
          },
        },
      },
      '/api/admin/clients/{id}': {
        delete: {
          summary: "Revoke an API client's key, in every API process at once (admin); again, the same answer",
          security: admin,
          parameters: [clientIdParameter],
          responses: {
            '200': answer('The revoked client', 'RevokedClient', answers.revokedClient),
            ...failures(ERRORS.not_found, ...AUTH, ...LIMITED, ERRORS.unavailable),
          },
        },
      },
      '/api/admin/webhooks': {
        post: {
          summary: "Make a webhook for some event types (admin); the answer is the only one, with a rotation's, that carries its secret",
          security: admin,
          requestBody: body(webhookBody, { url: 'https://hooks.example.com/token-lease', events: ['lease.expired', 'lease.revoked'] }),
          responses: {
            '201': answer('The webhook, with its signing secret', 'WebhookWithSecret', answers.webhookWithSecret),
            ...failures(...BAD_INPUT, ...AUTH, ...LIMITED),
          },
        },
        get: {
          summary: 'Every webhook, oldest first, without secrets (admin)',
          security: admin,
          responses: {
            '200': answerList('Every webhook', 'Webhook', answers.webhooks),
            ...failures(...AUTH, ...LIMITED, ERRORS.unavailable),
          },
        },
      },
      '/api/admin/webhooks/{id}': {
        delete: {
          summary: 'Delete a webhook with its delivery log; nothing more is sent to it (admin)',
          security: admin,
          parameters: [webhookIdParameter],
          responses: {
            '200': answer('The deleted webhook', 'Webhook', answers.webhook),
            ...failures(ERRORS.not_found, ...AUTH, ...LIMITED, ERRORS.unavailable),
          },
        },
      },
      '/api/admin/webhooks/{id}/rotate': {
        post: {
          summary: 'A new signing secret; the old one also signs for WEBHOOK_ROTATION_GRACE_MS (admin)',
          security: admin,
          parameters: [webhookIdParameter],
          responses: {
            '200': answer('The webhook, with its new secret', 'WebhookWithSecret', answers.webhookWithSecret),
            ...failures(ERRORS.not_found, ...AUTH, ...LIMITED, ERRORS.unavailable),
          },
        },
      },
      '/api/admin/webhooks/{id}/deliveries': {
        get: {
          summary: "The webhook's deliveries, newest first, each with every attempt (admin)",
          security: admin,
          parameters: [webhookIdParameter, ...queryParameters(deliveriesQuery)],
          responses: {
            '200': answer('A page of deliveries', 'DeliveriesPage', answers.deliveries),
            ...failures(ERRORS.not_found, ERRORS.validation_failed, ...AUTH, ...LIMITED, ERRORS.unavailable),
          },
        },
      },
      '/api/admin/webhooks/{id}/deliveries/{delivery_id}/replay': {
        post: {
          summary: 'Attempt a delivery again now, at the start of the retry schedule, whatever its state (admin)',
          security: admin,
          parameters: [
            webhookIdParameter,
            {
              name: 'delivery_id',
              in: 'path',
              required: true,
              description: 'Delivery id; an unknown or malformed id answers 404',
              schema: { type: 'string', pattern: '^[1-9][0-9]{0,15}$' },
              example: '42',
            },
          ],
          responses: {
            '202': answer('The delivery, due now', 'Delivery', answers.delivery),
            ...failures(ERRORS.not_found, ERRORS.webhook_disabled, ...AUTH, ...LIMITED, ERRORS.unavailable),
          },
        },
      },
      '/api/admin/pools': {
        post: {
          summary: 'Make a named pool with its size and, where given, settings of its own (admin)',
          security: admin,
          requestBody: body(poolBody, { name: 'gpu-a100', size: 8, lease_ttl_ms: 600_000 }),
          responses: {
            '201': answer('The pool', 'Pool', answers.pool),
            ...failures(ERRORS.pool_exists, ...BAD_INPUT, ...AUTH, ...LIMITED),
          },
        },
        get: {
          summary: 'Every pool, by name (admin)',
          security: admin,
          responses: { '200': answerList('Every pool', 'Pool', answers.pools), ...failures(...AUTH, ...LIMITED, ERRORS.unavailable) },
        },
      },
      '/api/admin/pools/{pool}': {
        patch: {
          summary: "Grow a pool, or change its settings for new leases; null puts one back to the service's (admin)",
          security: admin,
          parameters: [poolParameter],
          requestBody: body(poolPatch, { size: 16, max_lease_ms: null }),
          responses: {
            '200': answer('The pool as changed', 'Pool', { ...answers.pool, size: 16, free: 16 }),
            ...failures(ERRORS.not_found, ...BAD_INPUT, ...AUTH, ...LIMITED),
          },
        },
      },
      '/api/pools': {
        get: {
          summary: 'Every pool with its settings and how many tokens are free and held',
          responses: { '200': answerList('Every pool', 'Pool', answers.pools), ...failures(...AUTH, ERRORS.unavailable) },
        },
      },
      '/api/pools/{pool}': {
        get: {
          summary: 'One pool',
          parameters: [poolParameter],
          responses: { '200': answer('The pool', 'Pool', answers.pool), ...failures(ERRORS.not_found, ...AUTH, ERRORS.unavailable) },
        },
      },
      '/api/pools/{pool}/tokens': {
        get: {
          summary: "The pool's tokens, in a stable order",
          parameters: [poolParameter],
          responses: {
            '200': answerList('Every token of the pool', 'Token', answers.tokens),
            ...failures(ERRORS.not_found, ...AUTH, ERRORS.unavailable),
          },
        },
      },
      '/api/pools/{pool}/tokens/activate': {
        post: {
          summary: 'Lease a token of the pool (or get the lease the user holds in it)',
          parameters: [poolParameter, ...queryParameters(activateQuery.in)],
          requestBody: body(userBody, { user_id: ids.user }),
          responses: {
            '200': answer('The unexpired lease the user already holds in this pool', 'Lease', answers.lease),
            '201': answer('A new lease', 'Lease', answers.lease),
            ...failures(
              ERRORS.not_found,
              ERRORS.pool_exhausted,
              ...BAD_INPUT,
              ...AUTH,
              ...LIMITED,
              ERRORS.too_many_waiters,
              ERRORS.client_closed_request,
            ),
          },
        },
      },
      '/api/pools/{pool}/tokens/clear': {
        post: {
          summary: 'End every active lease of the pool (admin)',
          security: admin,
          parameters: [poolParameter],
          responses: {
            '200': answer('How many active leases were ended', 'Cleared', answers.cleared),
            ...failures(ERRORS.not_found, ERRORS.unauthorized, ERRORS.forbidden, ...LIMITED, ERRORS.unavailable),
          },
        },
      },
      '/api/stats': {
        get: {
          summary: "A pool's activity over a time window, bucket by bucket, computed from its history (docs/api.md)",
          parameters: queryParameters(statsQuery.in),
          responses: {
            '200': answer('One entry per bucket, oldest first', 'Stats', answers.stats),
            ...failures(ERRORS.not_found, ERRORS.validation_failed, ...AUTH, ERRORS.unavailable),
          },
        },
      },
      '/api/events': {
        get: {
          summary: 'A page of the event log, oldest first, after an event id (docs/events.md)',
          parameters: queryParameters(eventsQuery),
          responses: {
            '200': answer('Events the caller may read, and where the next page starts', 'EventsPage', answers.events),
            ...failures(ERRORS.validation_failed, ...AUTH, ERRORS.unavailable),
          },
        },
      },
      '/api/events/stream': {
        get: {
          summary:
            'The events as Server-Sent Events: id, event (the type) and data (the event as GET /api/events gives it); resumes after Last-Event-ID or ?after=',
          parameters: [
            ...queryParameters(streamQuery),
            {
              name: 'Last-Event-ID',
              in: 'header',
              required: false,
              description: 'Resume after this event id (sent by EventSource on reconnection); wins over ?after=',
              schema: { type: 'string', pattern: '^[0-9]{1,16}$' },
              example: '1',
            },
          ],
          responses: {
            '200': {
              description: 'text/event-stream: events, a reset event when events were missed, a comment every 15 s',
              content: { 'text/event-stream': { schema: { type: 'string' }, example: eventStream } },
            },
            ...failures(ERRORS.validation_failed, ...AUTH, ERRORS.too_many_streams, ERRORS.unavailable),
          },
        },
      },
      '/healthz': {
        get: {
          summary: 'The process is alive',
          responses: { '200': answer('Alive', 'Health', answers.health) },
        },
      },
      '/readyz': {
        get: {
          summary: 'PostgreSQL answers (Redis is reported, not required)',
          responses: { '200': answer('Ready', 'Ready', answers.ready), ...failures(ERRORS.not_ready) },
        },
      },
      '/openapi.json': {
        get: {
          summary: 'This document',
          responses: {
            '200': {
              description: 'OpenAPI 3.1',
              content: {
                'application/json': {
                  schema: { type: 'object', required: ['openapi', 'info'] },
                  example: { openapi: '3.1.0', info: { title: 'token-lease', version }, paths: {} },
                },
              },
            },
          },
        },
      },
      '/metrics': {
        get: {
          summary: 'Prometheus metrics',
          responses: {
            '200': { description: 'Text exposition format', content: { 'text/plain': { schema: { type: 'string' }, example: metricsText } } },
          },
        },
      },
    }),
  };
}
