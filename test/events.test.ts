import { SignJWT } from 'jose';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { maintain } from '../src/domain/maintenance.js';
import type { ServiceProcess } from './harness/processes.js';
import { openStream, type SseStream } from './harness/sse.js';
import { waitFor } from './harness/waitFor.js';
import {
  backdate,
  createTestDatabase,
  newUserId,
  spawnService,
  startTestService,
  testLogger,
  type TestDatabase,
  type TestService,
} from './helpers.js';

// The event log (docs/events.md): every change to a lease writes its event in its own
// transaction; GET /api/events pages through the log and GET /api/events/stream sends it live,
// in id order, from every API process, resuming after Last-Event-ID.

type EventJson = { id: number; type: string; timestamp: string; data: Record<string, unknown> };

const streams: SseStream[] = [];
afterEach(() => {
  for (const stream of streams.splice(0)) stream.close();
});

async function stream(url: string, headers: Record<string, string> = {}, query = ''): Promise<SseStream> {
  const opened = await openStream(`${url}/api/events/stream${query}`, headers);
  streams.push(opened);
  // Its first line comes once its starting point is set: what commits after it is sent.
  if (opened.status === 200) await opened.until((s) => s.comments.includes('token-lease events'), 'the stream to start');
  return opened;
}

const json = { 'content-type': 'application/json' };

async function post(url: string, path: string, body: unknown, headers: Record<string, string> = {}) {
  const res = await fetch(`${url}${path}`, { method: 'POST', headers: { ...json, ...headers }, body: JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as { data: Record<string, any> } };
}

async function events(url: string, after: number, headers: Record<string, string> = {}): Promise<EventJson[]> {
  const res = await fetch(`${url}/api/events?after=${after}&limit=1000`, { headers });
  expect(res.status).toBe(200);
  return ((await res.json()) as { data: { events: EventJson[] } }).data.events;
}

const typesOf = (list: EventJson[]) => list.map((e) => `${e.type} ${String(e.data.lease_id)}`);

describe('the event log', () => {
  let t: TestService;
  const top = async () =>
    Number((await t.db.pool.query<{ id: string }>('SELECT coalesce(max(id), 0) AS id FROM events')).rows[0]?.id);

  beforeAll(async () => {
    t = await startTestService({ POOL_SIZE: '3', LEASE_TTL_MS: '60000' });
  });
  afterAll(async () => {
    await t.close();
  });

  it('writes each change to a lease as one event, in order, with the lease in its data', async () => {
    const start = await top();
    const [a, b, c, d, e] = [newUserId(), newUserId(), newUserId(), newUserId(), newUserId()];
    const l1 = (await post(t.url, '/api/tokens/activate', { user_id: a })).body.data;
    await post(t.url, `/api/tokens/${l1.token_id}/renew`, { user_id: a, lease_id: l1.lease_id });
    await post(t.url, `/api/tokens/${l1.token_id}/release`, { user_id: a, lease_id: l1.lease_id });
    const l2 = (await post(t.url, '/api/tokens/activate', { user_id: b })).body.data;
    await backdate(t.db, 61_000, l2.lease_id);
    expect(await t.service.leases.sweep()).toBe(1);
    const l3 = (await post(t.url, '/api/tokens/activate', { user_id: c })).body.data;
    expect((await post(t.url, '/api/tokens/clear', {})).status).toBe(200);
    expect((await post(t.url, '/api/admin/pools', { name: 'evicting', size: 1, full_policy: 'evict_oldest' })).status).toBe(201);
    const l4 = (await post(t.url, '/api/pools/evicting/tokens/activate', { user_id: d })).body.data;
    const l5 = (await post(t.url, '/api/pools/evicting/tokens/activate', { user_id: e })).body.data;

    const logged = await waitFor(async () => {
      const list = await events(t.url, start);
      return list.length >= 10 && list;
    }, { what: 'the ten events' });
    expect(typesOf(logged)).toEqual([
      `lease.activated ${l1.lease_id}`,
      `lease.renewed ${l1.lease_id}`,
      `lease.released ${l1.lease_id}`,
      `lease.activated ${l2.lease_id}`,
      `lease.expired ${l2.lease_id}`,
      `lease.activated ${l3.lease_id}`,
      `lease.cleared ${l3.lease_id}`,
      `lease.activated ${l4.lease_id}`,
      `lease.evicted ${l4.lease_id}`,
      `lease.activated ${l5.lease_id}`,
    ]);
    expect(logged.map((ev) => ev.id)).toEqual([...logged.map((ev) => ev.id)].sort((x, y) => x - y));
    expect(logged[0]).toMatchObject({
      type: 'lease.activated',
      timestamp: l1.activated_at,
      data: {
        pool: 'default',
        token_id: l1.token_id,
        lease_id: l1.lease_id,
        user_id: a,
        fence: l1.fence,
        started_at: l1.activated_at,
        expires_at: l1.expires_at,
        ended_at: null,
      },
    });
    const expired = logged[4];
    expect(expired?.data.ended_at).toBe(expired?.timestamp);
    expect(Date.parse(String(expired?.data.ended_at))).toBeGreaterThanOrEqual(Date.parse(String(expired?.data.expires_at)));
    expect(logged[8]?.data).toMatchObject({ pool: 'evicting', user_id: d });
    expect(JSON.stringify(logged)).not.toContain('client_id');

    // A retry that changes nothing writes nothing.
    await post(t.url, `/api/tokens/${l1.token_id}/release`, { user_id: a, lease_id: l1.lease_id });
    await post(t.url, '/api/pools/evicting/tokens/activate', { user_id: e });
    const { rows } = await t.db.pool.query('SELECT type, lease_id FROM events WHERE id > $1 GROUP BY 1, 2 HAVING count(*) > 1', [start]);
    expect(rows).toEqual([]);
    expect(await top()).toBe(logged.at(-1)?.id);
  });

  it('writes the events of a redeemed and a retired token, never its value', async () => {
    const start = await top();
    expect((await post(t.url, '/api/admin/pools', { name: 'valued', size: 0 })).status).toBe(201);
    const values = ['event-test-value-1', 'event-test-value-2'];
    expect((await post(t.url, '/api/admin/pools/valued/tokens/import', { values })).status).toBe(200);
    const holder = newUserId();
    const held = (await post(t.url, '/api/pools/valued/tokens/activate', { user_id: holder })).body.data;
    expect((await post(t.url, '/api/tokens/redeem', { user_id: holder, value: held.value })).status).toBe(200);
    const other = (await post(t.url, '/api/pools/valued/tokens/activate', { user_id: newUserId() })).body.data;
    expect((await post(t.url, `/api/admin/tokens/${other.token_id}/retire`, { now: true })).status).toBe(200);

    const logged = await waitFor(async () => {
      const list = await events(t.url, start);
      return list.length >= 6 && list;
    }, { what: 'the six events' });
    expect(logged.map((e) => e.type)).toEqual([
      'lease.activated',
      'lease.redeemed',
      'token.retired',
      'lease.activated',
      'token.retired',
      'lease.retired',
    ]);
    expect(logged[2]?.data).toMatchObject({ pool: 'valued', token_id: held.token_id, lease_id: null, user_id: null, fence: null });
    expect(logged[5]?.data).toMatchObject({ token_id: other.token_id, lease_id: other.lease_id });
    for (const value of values) expect(JSON.stringify(logged)).not.toContain(value);
  });

  it('writes no event for a change that rolls back', async () => {
    const user = newUserId();
    const client = await t.db.pool.connect();
    try {
      await client.query('BEGIN');
      const { rows } = await client.query<{ outcome: string }>('SELECT outcome FROM activate_lease(1, $1, 60000, false)', [user]);
      expect(rows[0]?.outcome).toBe('created');
      const { rows: inside } = await client.query('SELECT 1 FROM events WHERE user_id = $1', [user]);
      expect(inside).toHaveLength(1);
      await client.query('ROLLBACK');
    } finally {
      client.release();
    }
    const { rows: after } = await t.db.pool.query('SELECT 1 FROM events WHERE user_id = $1', [user]);
    expect(after).toEqual([]);
  });

  it('shows ids in commit order: a later commit waits for an earlier id still in flight', async () => {
    await post(t.url, '/api/tokens/clear', {});
    const start = await top();
    const subscriber = await stream(t.url);
    const [first, second] = [newUserId(), newUserId()];
    const slow = await t.db.pool.connect();
    try {
      // The first change takes its id, then stays uncommitted while a second one commits.
      await slow.query('BEGIN');
      await slow.query('SELECT * FROM activate_lease(1, $1, 60000, false)', [first]);
      const later = await post(t.url, '/api/tokens/activate', { user_id: second });
      expect(later.status).toBe(201);
      const { rows } = await t.db.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM events WHERE user_id = $1', [second]);
      expect(rows[0]?.n).toBe(1);
      // Committed, but behind an id that is not: neither the log nor the stream may show it yet.
      expect(await events(t.url, start)).toEqual([]);
      expect(subscriber.logEvents().filter((e) => e.id > start)).toEqual([]);
      await slow.query('COMMIT');
    } finally {
      slow.release();
    }
    const fresh = () => subscriber.logEvents().filter((e) => e.id > start);
    await subscriber.until(() => fresh().length >= 2, 'both events on the stream');
    const seen = fresh();
    expect(seen.map((e) => e.data.user_id)).toEqual([first, second]);
    expect(seen[0]!.id).toBeLessThan(seen[1]!.id);
    expect(seen.map((e) => e.id)).toEqual((await events(t.url, start)).map((e) => e.id));
    const ids = subscriber.logEvents().map((e) => e.id);
    expect(ids.every((id, i) => i === 0 || id > ids[i - 1]!)).toBe(true);
  });

  it('resumes after Last-Event-ID (or ?after=) with what the client missed, then goes on live', async () => {
    const user = newUserId();
    const first = await stream(t.url);
    const lease = (await post(t.url, '/api/tokens/activate', { user_id: user })).body.data;
    await first.until((s) => s.logEvents().some((e) => e.data.lease_id === lease.lease_id), 'the activation on the stream');
    const seen = first.events.at(-1);
    expect(seen?.event).toBe('lease.activated');
    first.close();

    await post(t.url, `/api/tokens/${lease.token_id}/release`, { user_id: user, lease_id: lease.lease_id });
    const resumed = await stream(t.url, { 'Last-Event-ID': String(seen?.id) });
    const byQuery = await stream(t.url, {}, `?after=${String(seen?.id)}`);
    for (const s of [resumed, byQuery]) {
      await s.until((x) => x.logEvents().length >= 1, 'the missed release');
      expect(s.logEvents().map((e) => `${e.type} ${String(e.data.lease_id)}`)).toEqual([`lease.released ${lease.lease_id}`]);
      expect(s.events[0]?.id).toBe(String(s.logEvents()[0]?.id));
    }
    const again = (await post(t.url, '/api/tokens/activate', { user_id: user })).body.data;
    await resumed.until((s) => s.logEvents().some((e) => e.data.lease_id === again.lease_id), 'a new event after the missed one');
    expect(resumed.logEvents().map((e) => e.type)).toEqual(['lease.released', 'lease.activated']);
    expect(resumed.comments).toContain('token-lease events');
    expect(resumed.headers.get('content-type')).toMatch(/^text\/event-stream/);
  });

  it('answers a bad after or Last-Event-ID with 422, not a stream', async () => {
    for (const bad of ['?after=-1', '?after=1e3', '?after=abc']) {
      const res = await t.http.get(`/api/events/stream${bad}`);
      expect(res.status, bad).toBe(422);
      expect(res.body.error.code).toBe('validation_failed');
      expect((await t.http.get(`/api/events${bad}`)).status).toBe(422);
    }
    const res = await t.http.get('/api/events/stream').set('Last-Event-ID', 'x');
    expect(res.status).toBe(422);
    expect(res.body.error.details.fields[0].field).toBe('Last-Event-ID');
    expect((await t.http.get('/api/events?limit=0')).status).toBe(422);
    expect((await t.http.post('/api/events')).status).toBe(405);
  });

  it('sends a reset event first to a client resuming before what retention kept', async () => {
    await post(t.url, '/api/tokens/clear', {});
    expect((await post(t.url, '/api/tokens/activate', { user_id: newUserId() })).status).toBe(201);
    await t.db.pool.query("UPDATE events SET at = at - interval '2 days'");
    const report = await maintain({ pool: t.db.pool, log: testLogger(), vacuumDeadRows: 1_000_000_000, historyRetentionDays: 1 });
    expect(report?.eventsRemoved).toBeGreaterThan(0);
    const removedThrough = Number((await t.db.pool.query<{ r: string }>('SELECT removed_through AS r FROM events_retention')).rows[0]?.r);

    const resumed = await stream(t.url, { 'Last-Event-ID': '0' });
    const activated = await post(t.url, '/api/tokens/activate', { user_id: newUserId() });
    expect(activated.status).toBe(201);
    const lease = activated.body.data;
    await resumed.until((s) => s.logEvents().some((e) => e.data.lease_id === lease.lease_id), 'the new event after the reset');
    expect(resumed.events[0]).toMatchObject({ event: 'reset', id: undefined });
    expect(JSON.parse(resumed.events[0]?.data ?? '{}')).toEqual({ after: 0, removed_through: removedThrough });
    expect(resumed.logEvents().every((e) => e.id > removedThrough)).toBe(true);
  });
});

describe('MAX_STREAMS', () => {
  it('caps the streams of one process: 503 too_many_streams beyond, room again once one ends', async () => {
    const t = await startTestService({ POOL_SIZE: '1', MAX_STREAMS: '2' });
    try {
      const one = await stream(t.url);
      await stream(t.url);
      const refused = await t.http.get('/api/events/stream');
      expect(refused.status).toBe(503);
      expect(refused.body.error.code).toBe('too_many_streams');
      expect(refused.headers['retry-after']).toBe('1');
      one.close();
      await waitFor(
        async () => {
          const next = await openStream(`${t.url}/api/events/stream`);
          if (next.status === 200) streams.push(next);
          else next.close();
          return next.status === 200;
        },
        { what: 'a stream to be accepted again' },
      );
    } finally {
      for (const s of streams.splice(0)) s.close();
      await t.close();
    }
  });
});

describe('streams across API processes, and shutdown', () => {
  let db: TestDatabase;
  const running: ServiceProcess[] = [];

  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    for (const proc of running) proc.kill('SIGKILL');
    await Promise.all(running.map((p) => p.exited()));
    await db.drop();
  });

  const start = async (env: Record<string, string> = {}) => {
    const proc = spawnService({ DATABASE_URL: db.url, ROLE: 'api', POOL_SIZE: '4', LEASE_TTL_MS: '60000', ...env });
    running.push(proc);
    return proc.ready();
  };

  it('sends every subscriber of every API process every event, in id order', async () => {
    const [a, b] = await Promise.all([start(), start()]);
    const onA = await stream(a);
    const onB = await stream(b);
    const user = newUserId();
    const lease = (await post(a, '/api/tokens/activate', { user_id: user })).body.data;
    await post(b, `/api/tokens/${lease.token_id}/release`, { user_id: user, lease_id: lease.lease_id });
    const other = (await post(b, '/api/tokens/activate', { user_id: newUserId() })).body.data;
    for (const s of [onA, onB]) {
      await s.until((x) => x.logEvents().length >= 3, 'three events on each process', 30_000);
      expect(s.logEvents().map((e) => `${e.type} ${String(e.data.lease_id)}`)).toEqual([
        `lease.activated ${lease.lease_id}`,
        `lease.released ${lease.lease_id}`,
        `lease.activated ${other.lease_id}`,
      ]);
    }
    expect(onA.logEvents().map((e) => e.id)).toEqual(onB.logEvents().map((e) => e.id));
  }, 90_000);

  it('ends its open streams at once on SIGTERM, and exits cleanly within SHUTDOWN_TIMEOUT_MS', async () => {
    const url = await start({ SHUTDOWN_TIMEOUT_MS: '5000' });
    const proc = running.at(-1)!;
    const open = await Promise.all([stream(url), stream(url), stream(url)]);
    const exit = await proc.stop(30_000);
    expect(exit).toEqual({ code: 0, signal: null });
    await Promise.all(open.map((s) => s.ended));
    expect(open.every((s) => s.hasEnded())).toBe(true);
  }, 90_000);
});

describe('who may read which events', () => {
  const SECRET = 'the-shared-secret-of-the-events-test-0123';
  const ADMIN_KEY = 'events-test-admin-key-0123456789';
  const jwt = (sub: string, scope?: string) =>
    new SignJWT({ sub, ...(scope === undefined ? {} : { scope }) })
      .setProtectedHeader({ alg: 'HS256' })
      .setExpirationTime(Math.floor(Date.now() / 1000) + 300)
      .sign(new TextEncoder().encode(SECRET));

  it('AUTH_MODE=jwt: a user sees the events of their own leases, a reader every event', async () => {
    const t = await startTestService({ AUTH_MODE: 'jwt', JWT_SECRET: SECRET, ADMIN_API_KEY: ADMIN_KEY, POOL_SIZE: '3' });
    try {
      const [alice, bob] = [newUserId(), newUserId()];
      const as = async (sub: string, scope?: string) => ({ Authorization: `Bearer ${await jwt(sub, scope)}` });
      const aliceStream = await stream(t.url, await as(alice));
      const readerStream = await stream(t.url, await as(newUserId(), 'read'));
      const mine = (await post(t.url, '/api/tokens/activate', {}, await as(alice))).body.data;
      const theirs = (await post(t.url, '/api/tokens/activate', {}, await as(bob))).body.data;

      await readerStream.until((s) => s.logEvents().length >= 2, 'both activations for the reader');
      expect(readerStream.logEvents().map((e) => e.data.lease_id)).toEqual([mine.lease_id, theirs.lease_id]);
      expect((await events(t.url, 0, await as(newUserId(), 'read'))).map((e) => e.data.lease_id)).toEqual([mine.lease_id, theirs.lease_id]);
      expect((await events(t.url, 0, { Authorization: `Bearer ${ADMIN_KEY}` })).length).toBe(2);
      expect((await events(t.url, 0, await as(alice))).map((e) => e.data.lease_id)).toEqual([mine.lease_id]);
      expect(await events(t.url, 0, await as(newUserId()))).toEqual([]);
      // The stream that saw bob's event would show it by now: the reader's did.
      await aliceStream.until((s) => s.logEvents().length >= 1, "alice's activation");
      expect(aliceStream.logEvents().map((e) => e.data.lease_id)).toEqual([mine.lease_id]);
      expect((await t.http.get('/api/events')).status).toBe(401);
      expect((await t.http.get('/api/events/stream')).status).toBe(401);
    } finally {
      for (const s of streams.splice(0)) s.close();
      await t.close();
    }
  });

  it('AUTH_MODE=api_key: a client sees the events of the leases it made, read and admin every event', async () => {
    const t = await startTestService({ AUTH_MODE: 'api_key', ADMIN_API_KEY: ADMIN_KEY, POOL_SIZE: '3' });
    try {
      const admin = { Authorization: `Bearer ${ADMIN_KEY}` };
      const client = async (scopes: string[]) => {
        const made = await post(t.url, '/api/admin/clients', { name: scopes.join('-'), scopes }, admin);
        return { Authorization: `Bearer ${made.body.data.key}` };
      };
      const [one, two, reader] = [await client(['lease']), await client(['lease']), await client(['read'])];
      const first = (await post(t.url, '/api/tokens/activate', { user_id: newUserId() }, one)).body.data;
      const second = (await post(t.url, '/api/tokens/activate', { user_id: newUserId() }, two)).body.data;

      const both = [first.lease_id, second.lease_id];
      expect((await events(t.url, 0, reader)).map((e) => e.data.lease_id)).toEqual(both);
      expect((await events(t.url, 0, admin)).map((e) => e.data.lease_id)).toEqual(both);
      expect((await events(t.url, 0, one)).map((e) => e.data.lease_id)).toEqual([first.lease_id]);
      expect((await events(t.url, 0, two)).map((e) => e.data.lease_id)).toEqual([second.lease_id]);
      const oneStream = await stream(t.url, { ...one, 'Last-Event-ID': '0' });
      await oneStream.until((s) => s.logEvents().length >= 1, "the client's own activation");
      const ended = await post(t.url, `/api/tokens/${second.token_id}/release`, { user_id: second.user_id, lease_id: second.lease_id }, two);
      expect(ended.status).toBe(200);
      const later = (await post(t.url, '/api/tokens/activate', { user_id: newUserId() }, one)).body.data;
      await oneStream.until((s) => s.logEvents().length >= 2, "the client's next activation");
      expect(oneStream.logEvents().map((e) => e.data.lease_id)).toEqual([first.lease_id, later.lease_id]);
      expect((await t.http.get('/api/events')).status).toBe(401);
    } finally {
      for (const s of streams.splice(0)) s.close();
      await t.close();
    }
  });
});
