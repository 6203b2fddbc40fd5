import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newUserId, startTestService, type TestService } from './helpers.js';
import { waitFor } from './harness/waitFor.js';

const ADMIN_KEY = 'test-admin-key-0123456789';

// GET /api/stats: a pool's activity per bucket, checked against figures worked out by hand
// from history rows written by the test, and refusals and waits counted by the API process.

describe('GET /api/stats', () => {
  let t: TestService;

  beforeAll(async () => {
    t = await startTestService({ POOL_SIZE: '1', ADMIN_API_KEY: ADMIN_KEY, STATS_FLUSH_MS: '50', MAX_WAITERS: '10' });
  });
  afterAll(async () => {
    await t.close();
  });

  const makePool = async (name: string, size: number) => {
    const res = await t.http.post('/api/admin/pools').set('Authorization', `Bearer ${ADMIN_KEY}`).send({ name, size });
    expect(res.status).toBe(201);
    const { rows } = await t.db.pool.query<{ id: string; pool_id: number }>(
      'SELECT t.id, t.pool_id FROM tokens t JOIN pools p ON p.id = t.pool_id WHERE p.name = $1 ORDER BY t.position',
      [name],
    );
    return rows;
  };

  it('sums held time, activations, expiries and the activity counters per bucket, as worked out by hand', async () => {
    const [a, b] = await makePool('stats-hand', 2);
    const poolId = a!.pool_id;
    const at = (time: string) => (time.includes('T') ? time : `2026-01-01T${time}Z`);
    const usage = async (token: string, fence: number, started: string, expires: string, ended: string, reason: string) => {
      await t.db.pool.query(
        `INSERT INTO usages (id, pool_id, token_id, user_id, fence, started_at, expires_at, ended_at, end_reason)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
        [randomUUID(), poolId, token, newUserId(), fence, at(started), at(expires), at(ended), reason],
      );
    };
    // Window 00:00-00:03 in buckets of a minute; 2 tokens, so 120 token-seconds a bucket.
    await usage(b!.id, 1, '2025-12-31T23:59:00Z', '00:05:00', '00:00:20', 'released');
    await usage(a!.id, 1, '00:00:30', '00:05:00', '00:01:30', 'released');
    await usage(b!.id, 2, '00:01:00', '00:02:00', '00:02:10', 'expired');
    await usage(a!.id, 2, '00:02:15', '00:04:00', '00:02:45', 'cleared');
    // After the window: not counted.
    await usage(a!.id, 3, '00:03:00', '00:04:00', '00:03:30', 'released');
    await t.db.pool.query(
      `INSERT INTO pool_activity (pool_id, minute, refusals, waits) VALUES
         ($1, '2026-01-01T00:01:00Z', 4, 2), ($1, '2026-01-01T00:02:00Z', 1, 0), ($1, '2026-01-01T00:03:00Z', 9, 9)`,
      [poolId],
    );

    const res = await t.http.get('/api/stats').query({ pool: 'stats-hand', from: at('00:00:00'), to: at('00:03:00'), bucket: '60' });

    expect(res.status).toBe(200);
    expect(res.body.data).toMatchObject({ pool: 'stats-hand', from: at('00:00:00.000'), to: at('00:03:00.000'), bucket_seconds: 60, tokens: 2 });
    const buckets = res.body.data.buckets;
    expect(buckets.map((x: { start: string }) => x.start)).toEqual([at('00:00:00.000'), at('00:01:00.000'), at('00:02:00.000')]);
    // 00:00: 20 s (b, from before the window) + 30 s (a); 00:01: 30 s (a) + 60 s (b, until it
    // ran out at 00:02 though ended at 00:02:10); 00:02: 30 s (a).
    expect(buckets.map((x: { held_share: number }) => x.held_share)).toEqual([50 / 120, 90 / 120, 30 / 120]);
    expect(buckets.map((x: { activations: number }) => x.activations)).toEqual([1, 1, 1]);
    expect(buckets.map((x: { expiries: number }) => x.expiries)).toEqual([0, 0, 1]);
    expect(buckets.map((x: { refusals: number }) => x.refusals)).toEqual([0, 4, 1]);
    expect(buckets.map((x: { waits: number }) => x.waits)).toEqual([0, 2, 0]);

    // One bucket of three minutes: the sums of the above.
    const whole = await t.http.get('/api/stats').query({ pool: 'stats-hand', from: at('00:00:00'), to: at('00:03:00'), bucket: '180' });
    expect(whole.body.data.buckets).toEqual([
      { start: at('00:00:00.000'), held_share: 170 / 360, activations: 3, expiries: 1, refusals: 5, waits: 2 },
    ]);
  });

  it('counts open leases as held until now, and refusals and waits from what the API process flushed', async () => {
    await makePool('stats-live', 1);
    const activate = (user: string, wait?: string) =>
      t.http.post(`/api/pools/stats-live/tokens/activate${wait === undefined ? '' : `?wait=${wait}`}`).send({ user_id: user });
    expect((await activate(newUserId())).status).toBe(201);
    for (let i = 0; i < 3; i += 1) expect((await activate(newUserId())).status).toBe(409);
    // Waits 50 ms in the queue, then is refused too.
    expect((await activate(newUserId(), '0.05')).status).toBe(409);

    // A single bucket around now, so that a minute turning during the test changes nothing.
    const from = new Date(Date.now() - 30 * 60_000).toISOString();
    const to = new Date(Date.now() + 30 * 60_000).toISOString();
    const read = async () => (await t.http.get('/api/stats').query({ pool: 'stats-live', from, to, bucket: '3600' })).body.data;
    await waitFor(async () => {
      const [bucket] = (await read()).buckets;
      return bucket.refusals === 4 && bucket.waits === 1;
    }, { timeoutMs: 5_000, what: 'the activity counts to be flushed' });
    const [bucket] = (await read()).buckets;
    expect(bucket).toMatchObject({ activations: 1, expiries: 0, refusals: 4, waits: 1 });
    expect(bucket.held_share).toBeGreaterThan(0);
    expect(bucket.held_share).toBeLessThan(1);
  });

  it('refuses bad windows and buckets with 422, and an unknown pool with 404', async () => {
    const bad = async (query: Record<string, string>, field: string) => {
      const res = await t.http.get('/api/stats').query(query);
      expect(res.status).toBe(422);
      expect(res.body.error.code).toBe('validation_failed');
      expect(JSON.stringify(res.body.error.details)).toContain(field);
    };
    await bad({ from: 'yesterday' }, 'from');
    await bad({ to: '2026-01-01T00:00:00' }, 'to');
    await bad({ bucket: '90' }, 'bucket');
    await bad({ bucket: '30' }, 'bucket');
    await bad({ bucket: '1e3' }, 'bucket');
    await bad({ from: '2026-01-02T00:00:00Z', to: '2026-01-01T00:00:00Z' }, 'to');
    await bad({ from: '2025-01-01T00:00:00Z', to: '2026-01-01T00:00:00Z', bucket: '60' }, 'bucket');
    await bad({ pool: 'Not A Pool' }, 'pool');
    const unknown = await t.http.get('/api/stats').query({ pool: 'nope' });
    expect(unknown.status).toBe(404);
    expect(unknown.body.error.code).toBe('not_found');
    const post = await t.http.post('/api/stats');
    expect(post.status).toBe(405);
  });
});
