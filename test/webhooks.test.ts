import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { Webhook } from 'standardwebhooks';
import { createWebhookPoster } from '../src/domain/webhookPost.js';
import { isPrivateAddress } from '../src/domain/webhookAddresses.js';
import { createTestDatabase, newUserId, spawnService, startTestService, type TestService } from './helpers.js';
import { startReceiver, type Receiver } from './harness/receiver.js';
import { waitFor } from './harness/waitFor.js';
import { startRedisServer } from './redisServer.js';
import { testRedisPrefix } from './redis.js';

// Webhooks (docs/events.md, "Webhooks"): real PostgreSQL and Redis, receivers on 127.0.0.1
// started here, signatures checked by the standardwebhooks package as a receiver would.

const ADMIN_KEY = 'webhooks-test-admin-key-0123456789';
const admin = { Authorization: `Bearer ${ADMIN_KEY}` };
const SCHEDULE = [0, 300, 600];
const env = {
  ROLE: 'all',
  POOL_SIZE: '50',
  LEASE_TTL_MS: '60000',
  ADMIN_API_KEY: ADMIN_KEY,
  WEBHOOK_ALLOW_PRIVATE: 'true',
  WEBHOOK_RETRY_SCHEDULE_MS: SCHEDULE.join(','),
  WEBHOOK_ROTATION_GRACE_MS: '60000',
  SWEEP_INTERVAL_MS: '200',
};

let t: TestService;
const cleanups: Array<() => Promise<void>> = [];

beforeAll(async () => {
  t = await startTestService(env);
});
afterAll(async () => {
  await t.close();
});
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function receiver(): Promise<Receiver> {
  const r = await startReceiver();
  cleanups.push(() => r.close());
  return r;
}

interface Made {
  id: string;
  secret: string;
}

async function makeWebhook(on: TestService, url: string, events = ['lease.activated']): Promise<Made> {
  const res = await on.http.post('/api/admin/webhooks').set(admin).send({ url, events });
  expect(res.status, res.text).toBe(201);
  return res.body.data as Made;
}

async function activate(on: TestService = t): Promise<{ token_id: string; lease_id: string; user_id: string }> {
  const res = await on.http.post('/api/tokens/activate').send({ user_id: newUserId() });
  expect(res.status, res.text).toBe(201);
  return res.body.data as { token_id: string; lease_id: string; user_id: string };
}

interface DeliveryJson {
  id: number;
  event_id: number;
  state: string;
  attempts: Array<{ started_at: string; status: number | null; duration_ms: number; error: string | null }>;
}

async function deliveriesOf(on: TestService, webhookId: string, query = ''): Promise<DeliveryJson[]> {
  const res = await on.http.get(`/api/admin/webhooks/${webhookId}/deliveries${query}`).set(admin);
  expect(res.status, res.text).toBe(200);
  return res.body.data.deliveries as DeliveryJson[];
}

/** Waits until the webhook's newest delivery is no longer pending, and answers it. */
async function settled(on: TestService, webhookId: string, timeoutMs = 10_000): Promise<DeliveryJson> {
  return waitFor(
    async () => {
      const [newest] = await deliveriesOf(on, webhookId, '?limit=1');
      return newest !== undefined && newest.state !== 'pending' ? newest : undefined;
    },
    { timeoutMs, what: 'the delivery to settle' },
  );
}

const verify = (secret: string, body: string, headers: Record<string, string>) => new Webhook(secret).verify(body, headers);

describe('webhooks', () => {
  it('delivers an event, signed so that the standardwebhooks package verifies it', async () => {
    const r = await receiver();
    const hook = await makeWebhook(t, r.url);
    expect(hook.secret).toMatch(/^whsec_[A-Za-z0-9+/]{43}=$/);
    const lease = await activate();
    const [got] = await waitFor(() => r.received.length >= 1 && r.received, { what: 'the webhook' });
    if (got === undefined) throw new Error('nothing received');
    const payload = verify(hook.secret, got.body, got.headers) as { type: string; timestamp: string; data: Record<string, unknown> };
    expect(payload.type).toBe('lease.activated');
    expect(payload.data).toMatchObject({ token_id: lease.token_id, lease_id: lease.lease_id, user_id: lease.user_id, pool: 'default', fence: 1 });
    expect(Object.keys(payload).sort()).toEqual(['data', 'timestamp', 'type']);
    expect(got.headers['webhook-id']).toMatch(/^msg_[0-9]+$/);
    expect(Number(got.headers['webhook-timestamp'])).toBeCloseTo(Date.now() / 1000, -2);
    expect(got.headers['content-type']).toBe('application/json');
    // A tampered body or another secret does not verify.
    expect(() => verify(hook.secret, got.body.replace('lease.activated', 'lease.released'), got.headers)).toThrow();
    expect(() => verify('whsec_' + Buffer.alloc(32, 1).toString('base64'), got.body, got.headers)).toThrow();
    const delivered = await settled(t, hook.id);
    expect(delivered.state).toBe('succeeded');
    // The event's log entry and the delivery name each other.
    const events = await t.http.get(`/api/events?after=${delivered.event_id - 1}&limit=1`);
    expect(events.body.data.events[0]).toMatchObject({ id: delivered.event_id, type: 'lease.activated', timestamp: payload.timestamp });
    await t.http.delete(`/api/admin/webhooks/${hook.id}`).set(admin).expect(200);
  });

  it('retries a failing receiver on the schedule, with the same webhook-id, until it succeeds; the log shows every attempt', async () => {
    const r = await receiver();
    r.answer = (n) => (n <= 2 ? { status: 500 } : { status: 204 });
    const hook = await makeWebhook(t, r.url);
    await activate();
    const delivery = await settled(t, hook.id);
    expect(delivery.state).toBe('succeeded');
    expect(delivery.attempts.map((a) => a.status)).toEqual([500, 500, 204]);
    expect(delivery.attempts.map((a) => a.error)).toEqual(['answered 500', 'answered 500', null]);
    for (const a of delivery.attempts) expect(a.duration_ms).toBeGreaterThanOrEqual(0);
    expect(new Set(r.received.map((x) => x.headers['webhook-id'])).size).toBe(1);
    // Each retry waited at least its delay in the schedule.
    const times = r.received.map((x) => x.at);
    expect((times[1] ?? 0) - (times[0] ?? 0)).toBeGreaterThanOrEqual((SCHEDULE[1] ?? 0) - 20);
    expect((times[2] ?? 0) - (times[1] ?? 0)).toBeGreaterThanOrEqual((SCHEDULE[2] ?? 0) - 20);
    for (const x of r.received) verify(hook.secret, x.body, x.headers);
    await t.http.delete(`/api/admin/webhooks/${hook.id}`).set(admin).expect(200);
  });

  it('honours Retry-After, and fails a delivery for good once the schedule runs out', async () => {
    const r = await receiver();
    r.answer = (n) => (n === 1 ? { status: 503, headers: { 'Retry-After': '1' } } : { status: 500 });
    const hook = await makeWebhook(t, r.url);
    await activate();
    const delivery = await settled(t, hook.id);
    expect(delivery.state).toBe('failed');
    expect(delivery.attempts.map((a) => a.status)).toEqual([503, 500, 500]);
    const times = r.received.map((x) => x.at);
    expect((times[1] ?? 0) - (times[0] ?? 0)).toBeGreaterThanOrEqual(1_000 - 20);
    await t.http.delete(`/api/admin/webhooks/${hook.id}`).set(admin).expect(200);
  });

  it('disables a webhook whose endpoint answers 410, and makes no more deliveries for it', async () => {
    const r = await receiver();
    r.answer = () => ({ status: 410 });
    const hook = await makeWebhook(t, r.url);
    await activate();
    const delivery = await settled(t, hook.id);
    expect(delivery.state).toBe('failed');
    expect(delivery.attempts).toHaveLength(1);
    expect(delivery.attempts[0]?.status).toBe(410);
    const listed = await t.http.get('/api/admin/webhooks').set(admin);
    const found = (listed.body.data as Array<{ id: string; disabled_at: string | null }>).find((w) => w.id === hook.id);
    expect(found?.disabled_at).toEqual(expect.any(String));
    // A later event is fanned out past without a delivery for it.
    await activate();
    const { rows } = await t.db.pool.query<{ top: string }>('SELECT max(id)::text AS top FROM events');
    await waitFor(
      async () => {
        const cursor = await t.db.pool.query<{ after: string }>('SELECT after::text FROM webhook_fanout');
        return Number(cursor.rows[0]?.after) >= Number(rows[0]?.top);
      },
      { what: 'the fan-out to pass the event' },
    );
    expect(await deliveriesOf(t, hook.id)).toHaveLength(1);
    expect(r.received).toHaveLength(1);
    const replay = await t.http.post(`/api/admin/webhooks/${hook.id}/deliveries/${delivery.id}/replay`).set(admin);
    expect(replay.status).toBe(409);
    expect(replay.body.error.code).toBe('webhook_disabled');
    await t.http.delete(`/api/admin/webhooks/${hook.id}`).set(admin).expect(200);
  });

  it('never follows a redirect: a 3xx is a failed attempt, and its target gets nothing', async () => {
    const target = await receiver();
    const r = await receiver();
    r.answer = () => ({ status: 307, headers: { Location: target.url } });
    const hook = await makeWebhook(t, r.url);
    await activate();
    const delivery = await settled(t, hook.id);
    expect(delivery.state).toBe('failed');
    expect(delivery.attempts.map((a) => a.status)).toEqual([307, 307, 307]);
    expect(delivery.attempts[0]?.error).toContain('redirect');
    expect(target.received).toHaveLength(0);
    await t.http.delete(`/api/admin/webhooks/${hook.id}`).set(admin).expect(200);
  });

  it('replays a delivery with the same webhook-id; the log keeps every attempt', async () => {
    const r = await receiver();
    const hook = await makeWebhook(t, r.url);
    await activate();
    const first = await settled(t, hook.id);
    expect(first.state).toBe('succeeded');
    const replayed = await t.http.post(`/api/admin/webhooks/${hook.id}/deliveries/${first.id}/replay`).set(admin);
    expect(replayed.status, replayed.text).toBe(202);
    expect(replayed.body.data).toMatchObject({ id: first.id, state: 'pending' });
    await waitFor(() => r.received.length >= 2, { what: 'the replay' });
    const [a, b] = r.received;
    expect(b?.headers['webhook-id']).toBe(a?.headers['webhook-id']);
    expect(b?.body).toBe(a?.body);
    const again = await settled(t, hook.id);
    expect(again.attempts.map((x) => x.status)).toEqual([200, 200]);
    // Unknown or malformed ids are 404s.
    expect((await t.http.post(`/api/admin/webhooks/${hook.id}/deliveries/999999/replay`).set(admin)).status).toBe(404);
    expect((await t.http.post(`/api/admin/webhooks/${hook.id}/deliveries/x1/replay`).set(admin)).status).toBe(404);
    await t.http.delete(`/api/admin/webhooks/${hook.id}`).set(admin).expect(200);
  });

  it('signs with both secrets during a rotation, and with the new one alone after the grace period', async () => {
    const r = await receiver();
    const hook = await makeWebhook(t, r.url);
    const rotated = await t.http.post(`/api/admin/webhooks/${hook.id}/rotate`).set(admin);
    expect(rotated.status, rotated.text).toBe(200);
    const secret = rotated.body.data.secret as string;
    expect(secret).not.toBe(hook.secret);
    await activate();
    await waitFor(() => r.received.length >= 1, { what: 'the webhook' });
    const [got] = r.received;
    if (got === undefined) throw new Error('nothing received');
    const signatures = got.headers['webhook-signature']?.split(' ') ?? [];
    expect(signatures).toHaveLength(2);
    for (const s of signatures) expect(s).toMatch(/^v1,[A-Za-z0-9+/]{43}=$/);
    // A receiver that knows either secret verifies it.
    verify(secret, got.body, got.headers);
    verify(hook.secret, got.body, got.headers);
    // Once the grace period is over, the old secret signs no more.
    await t.db.pool.query("UPDATE webhooks SET previous_secret_until = now() - interval '1 second' WHERE id = $1", [hook.id]);
    await activate();
    await waitFor(() => r.received.length >= 2, { what: 'the second webhook' });
    const second = r.received[1];
    if (second === undefined) throw new Error('nothing received');
    expect(second.headers['webhook-signature']?.split(' ')).toHaveLength(1);
    verify(secret, second.body, second.headers);
    expect(() => verify(hook.secret, second.body, second.headers)).toThrow();
    await t.http.delete(`/api/admin/webhooks/${hook.id}`).set(admin).expect(200);
  });

  it('lists webhooks without secrets, pages the delivery log, and deletes', async () => {
    const r = await receiver();
    const hook = await makeWebhook(t, r.url, ['lease.activated', 'lease.released']);
    const lease = await activate();
    await t.http.post(`/api/tokens/${lease.token_id}/release`).send({ user_id: lease.user_id, lease_id: lease.lease_id }).expect(200);
    await waitFor(async () => (await deliveriesOf(t, hook.id)).filter((d) => d.state === 'succeeded').length === 2, { what: 'two deliveries' });
    const listed = await t.http.get('/api/admin/webhooks').set(admin);
    expect(listed.status).toBe(200);
    expect(JSON.stringify(listed.body)).not.toContain(hook.secret);
    expect(listed.body.data).toContainEqual(expect.objectContaining({ id: hook.id, url: r.url, events: ['lease.activated', 'lease.released'], disabled_at: null }));
    const page1 = await t.http.get(`/api/admin/webhooks/${hook.id}/deliveries?limit=1`).set(admin);
    expect(page1.body.data.deliveries).toHaveLength(1);
    const before = page1.body.data.next_before as number;
    const page2 = await t.http.get(`/api/admin/webhooks/${hook.id}/deliveries?limit=1&before=${before}`).set(admin);
    expect(page2.body.data.deliveries[0].id).toBeLessThan(before);
    expect(page2.body.data.deliveries[0].attempts[0]).toEqual({
      started_at: expect.any(String),
      status: 200,
      duration_ms: expect.any(Number),
      error: null,
    });
    expect(r.received.map((x) => (JSON.parse(x.body) as { type: string }).type)).toEqual(['lease.activated', 'lease.released']);
    const deleted = await t.http.delete(`/api/admin/webhooks/${hook.id}`).set(admin);
    expect(deleted.status).toBe(200);
    expect((await t.http.delete(`/api/admin/webhooks/${hook.id}`).set(admin)).status).toBe(404);
    expect((await t.http.get(`/api/admin/webhooks/${hook.id}/deliveries`).set(admin)).status).toBe(404);
  });

  it('refuses bad input with 4xx and the JSON error body, and needs the admin key', async () => {
    const post = (body: unknown) => t.http.post('/api/admin/webhooks').set(admin).send(body as object);
    for (const body of [
      {},
      { url: 'not a url', events: ['lease.activated'] },
      { url: 'ftp://example.com/x', events: ['lease.activated'] },
      { url: 'http://example.com/x', events: [] },
      { url: 'http://example.com/x', events: ['lease.nope'] },
      { url: 'http://user:pw@127.0.0.1/x', events: ['lease.activated'] },
      [1],
    ]) {
      const res = await post(body);
      expect(res.status, JSON.stringify(body)).toBe(422);
      expect(res.body.error.code).toBe('validation_failed');
    }
    expect((await t.http.post('/api/admin/webhooks').set(admin).set('Content-Type', 'application/json').send('{')).status).toBe(400);
    expect((await t.http.post('/api/admin/webhooks').send({ url: 'http://127.0.0.1/', events: ['lease.activated'] })).status).toBe(401);
    expect((await t.http.get('/api/admin/webhooks')).status).toBe(401);
    expect((await t.http.delete('/api/admin/webhooks/nope').set(admin)).status).toBe(404);
    expect((await t.http.post('/api/admin/webhooks/00000000-0000-4000-8000-000000000000/rotate').set(admin)).status).toBe(404);
    const q = await t.http.get('/api/admin/webhooks/00000000-0000-4000-8000-000000000000/deliveries?limit=0').set(admin);
    expect(q.status).toBe(422);
    expect((await t.http.put('/api/admin/webhooks').set(admin)).status).toBe(405);
  });
});

describe('secrets with TOKEN_VALUE_KEY', () => {
  it('are stored sealed, still sign every attempt, and a start with another key or none is refused', async () => {
    const key = randomBytes(32).toString('base64');
    const sealed = await startTestService({ ...env, TOKEN_VALUE_KEY: key });
    try {
      const r = await receiver();
      const hook = await makeWebhook(sealed, r.url);
      const rotated = await sealed.http.post(`/api/admin/webhooks/${hook.id}/rotate`).set(admin).expect(200);
      const secret = rotated.body.data.secret as string;

      const { rows } = await sealed.db.pool.query<{ secret: string; previous_secret: string }>(
        'SELECT secret, previous_secret FROM webhooks WHERE id = $1',
        [hook.id],
      );
      const stored = [rows[0]?.secret ?? '', rows[0]?.previous_secret ?? ''];
      for (const column of stored) expect(column).toMatch(/^sealed:[A-Za-z0-9+/]+=*$/);
      const bare = (s: string) => s.slice('whsec_'.length);
      for (const column of stored) {
        for (const given of [hook.secret, secret]) {
          expect(column).not.toContain(bare(given));
          expect(Buffer.from(column.slice('sealed:'.length), 'base64').includes(Buffer.from(bare(given), 'base64'))).toBe(false);
        }
      }

      await activate(sealed);
      const [got] = await waitFor(() => r.received.length >= 1 && r.received, { what: 'the webhook' });
      if (got === undefined) throw new Error('nothing received');
      verify(secret, got.body, got.headers);
      verify(hook.secret, got.body, got.headers);

      await expect(startTestService({ ...env, TOKEN_VALUE_KEY: randomBytes(32).toString('base64') }, { db: sealed.db })).rejects.toThrow(
        /webhook secrets are sealed with another TOKEN_VALUE_KEY/,
      );
      await expect(startTestService(env, { db: sealed.db })).rejects.toThrow(/webhook secrets are sealed with a TOKEN_VALUE_KEY, which is not set/);
    } finally {
      await sealed.close();
    }
  });
});

describe('addresses inside the network', () => {
  it('are refused at registration without WEBHOOK_ALLOW_PRIVATE', async () => {
    const strict = await startTestService({ ADMIN_API_KEY: ADMIN_KEY }, { db: t.db });
    cleanups.push(() => strict.close());
    for (const url of [
      'http://127.0.0.1:9/x',
      'http://localhost:9/x',
      'http://10.1.2.3/x',
      'http://169.254.169.254/latest/meta-data',
      'http://[::1]/x',
      'http://[::ffff:127.0.0.1]/x',
      'http://[fd00::1]/x',
      'http://0.0.0.0/x',
    ]) {
      const res = await strict.http.post('/api/admin/webhooks').set(admin).send({ url, events: ['lease.activated'] });
      expect(res.status, url).toBe(422);
      expect(res.body.error.details.fields[0].field).toBe('url');
    }
  });

  it('are refused at connection time, whatever the name resolves to then', async () => {
    const r = await receiver();
    const poster = createWebhookPoster({ allowPrivate: false });
    try {
      const port = new URL(r.url).port;
      const byName = await poster.post(`http://localhost:${port}/hook`, {}, '{}');
      expect(byName.status).toBeNull();
      expect(byName.error).toMatch(/inside the network/);
      const byAddress = await poster.post(`http://127.0.0.1:${port}/hook`, {}, '{}');
      expect(byAddress.error).toMatch(/inside the network/);
      expect(r.received).toHaveLength(0);
    } finally {
      poster.close();
    }
    const open = createWebhookPoster({ allowPrivate: true });
    try {
      expect((await open.post(r.url, {}, '{}')).status).toBe(200);
    } finally {
      open.close();
    }
  });

  it('cover private, loopback, link-local, unique-local and IPv4-mapped ranges', () => {
    for (const a of ['10.0.0.1', '172.16.5.4', '192.168.1.1', '127.0.0.1', '169.254.1.1', '100.64.0.1', '::1', 'fe80::1', 'fd12::1', '::ffff:10.0.0.1', '::ffff:8.8.8.8', '0.0.0.0']) {
      expect(isPrivateAddress(a), a).toBe(true);
    }
    for (const a of ['8.8.8.8', '1.1.1.1', '2606:4700:4700::1111']) expect(isPrivateAddress(a), a).toBe(false);
  });
});

describe('no delivery lost', () => {
  it('when the worker is killed between the change and the delivery', { timeout: 150_000 }, async () => {
    const db = await createTestDatabase();
    cleanups.push(() => db.drop());
    const shared = {
      DATABASE_URL: db.url,
      REDIS_PREFIX: testRedisPrefix(inject('runId')),
      WEBHOOK_ALLOW_PRIVATE: 'true',
      // The first attempt waits long enough for the test to kill the worker that made the delivery.
      WEBHOOK_RETRY_SCHEDULE_MS: '5000,300',
      SWEEP_INTERVAL_MS: '200',
      ADMIN_API_KEY: ADMIN_KEY,
    };
    const api = await startTestService({ ...shared, ROLE: 'api' }, { db });
    cleanups.push(() => api.close());
    const r = await receiver();
    const hook = await makeWebhook(api, r.url);
    const start = () => {
      const worker = spawnService({ ...shared, ROLE: 'worker' });
      cleanups.push(async () => {
        worker.kill('SIGKILL');
        await worker.exited();
      });
      return worker;
    };
    const first = start();
    // Generous: a process started through tsx on a busy machine takes a while to listen.
    await first.logged('listening', 60_000);
    await first.ready(60_000);
    // One change made into a delivery (its job waiting in Redis) before the worker dies, one
    // committed while no worker runs.
    await activate(api);
    await waitFor(async () => (await deliveriesOf(api, hook.id)).length === 1, { what: 'the delivery to be made' });
    first.kill('SIGKILL');
    await first.exited();
    expect(r.received).toHaveLength(0);
    await activate(api);
    start();
    const deliveries = await waitFor(
      async () => {
        const all = await deliveriesOf(api, hook.id);
        return all.length === 2 && all.every((d) => d.state === 'succeeded') && all;
      },
      { timeoutMs: 60_000, intervalMs: 100, what: 'both deliveries to succeed' },
    );
    expect(deliveries.map((d) => d.attempts.length)).toEqual([1, 1]);
    expect(r.received).toHaveLength(2);
    expect(new Set(r.received.map((x) => x.headers['webhook-id'])).size).toBe(2);
  });

  it('when Redis is flushed while a retry waits there', async () => {
    const redis = await startRedisServer();
    cleanups.push(() => redis.stop());
    const svc = await startTestService({ ...env, REDIS_URL: redis.url, WEBHOOK_RETRY_SCHEDULE_MS: '0,1500' });
    cleanups.push(() => svc.close());
    const r = await receiver();
    r.answer = (n) => ({ status: n === 1 ? 500 : 200 });
    const hook = await makeWebhook(svc, r.url);
    await activate(svc);
    await waitFor(() => r.received.length >= 1, { what: 'the first attempt' });
    await waitFor(
      async () => (await deliveriesOf(svc, hook.id))[0]?.attempts.length === 1,
      { what: 'the failure to be recorded' },
    );
    await redis.command('FLUSHALL');
    const delivery = await settled(svc, hook.id);
    expect(delivery.state).toBe('succeeded');
    expect(delivery.attempts.map((a) => a.status)).toEqual([500, 200]);
    expect(r.received).toHaveLength(2);
  });
});
