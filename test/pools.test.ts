import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newUserId, startTestService, usagesOf, type TestService } from './helpers.js';
import { waitFor } from './harness/waitFor.js';

const ADMIN_KEY = 'test-admin-key-0123456789';

// Named pools: made and changed by an admin, each with its own tokens, lease time and policy,
// isolated from the others and from the default pool.

describe('named pools', () => {
  let t: TestService;

  beforeAll(async () => {
    t = await startTestService({ POOL_SIZE: '3', ADMIN_API_KEY: ADMIN_KEY, LEASE_TTL_MS: '60000' });
  });
  afterAll(async () => {
    await t.close();
  });

  const admin = {
    create: (body: object) => t.http.post('/api/admin/pools').set('Authorization', `Bearer ${ADMIN_KEY}`).send(body),
    patch: (name: string, body: object) =>
      t.http.patch(`/api/admin/pools/${name}`).set('Authorization', `Bearer ${ADMIN_KEY}`).send(body),
    clear: (name: string) => t.http.post(`/api/pools/${name}/tokens/clear`).set('Authorization', `Bearer ${ADMIN_KEY}`),
  };
  const activate = (pool: string, userId: string) => t.http.post(`/api/pools/${pool}/tokens/activate`).send({ user_id: userId });

  it('makes a pool with its tokens and settings, and lists it with its counts', async () => {
    const res = await admin.create({ name: 'gpu-a100', size: 2, lease_ttl_ms: 5000, full_policy: 'reject' });

    expect(res.status).toBe(201);
    expect(res.headers.location).toBe('/api/pools/gpu-a100');
    expect(res.body.data).toEqual({
      name: 'gpu-a100',
      size: 2,
      lease_ttl_ms: 5000,
      max_lease_ms: null,
      full_policy: 'reject',
      max_waiters: 1000,
      free: 2,
      held: 0,
      retired: 0,
    });
    const one = await t.http.get('/api/pools/gpu-a100');
    expect(one.body.data).toEqual(res.body.data);
    const all = await t.http.get('/api/pools');
    expect(all.body.data.map((p: { name: string }) => p.name)).toEqual(['default', 'gpu-a100']);
    const tokens = await t.http.get('/api/pools/gpu-a100/tokens');
    expect(tokens.body.data).toHaveLength(2);
  });

  it("leases with the pool's own lease time; the token routes serve its tokens", async () => {
    await admin.create({ name: 'short', size: 1, lease_ttl_ms: 2000 });
    const user = newUserId();

    const res = await activate('short', user);

    expect(res.status).toBe(201);
    const lease = res.body.data;
    expect(Date.parse(lease.expires_at) - Date.parse(lease.activated_at)).toBe(2000);
    const renewed = await t.http.post(`/api/tokens/${lease.token_id}/renew`).send({ user_id: user, lease_id: lease.lease_id });
    expect(renewed.status).toBe(200);
    expect(Date.parse(renewed.body.data.expires_at) - Date.parse(lease.activated_at)).toBeLessThan(10_000);
    const details = await t.http.get(`/api/tokens/${lease.token_id}`);
    expect(details.body.data.status).toBe('active');
    const released = await t.http.post(`/api/tokens/${lease.token_id}/release`).send({ user_id: user, lease_id: lease.lease_id });
    expect(released.status).toBe(200);
  });

  it('keeps pools apart: a full pool leaves the others free, a user holds one lease in each, a clear clears one', async () => {
    await admin.create({ name: 'solo', size: 1 });
    const user = newUserId();
    const inSolo = await activate('solo', user);
    const inDefault = await t.http.post('/api/tokens/activate').send({ user_id: user });
    expect(inSolo.status).toBe(201);
    expect(inDefault.status).toBe(201);
    // The same user again in the same pool: the lease they hold.
    expect((await activate('solo', user)).body.data.lease_id).toBe(inSolo.body.data.lease_id);

    // solo is full for anyone else; the default pool is not.
    const refused = await activate('solo', newUserId());
    expect(refused.status).toBe(409);
    expect(refused.body.error.code).toBe('pool_exhausted');
    expect((await t.http.post('/api/tokens/activate').send({ user_id: newUserId() })).status).toBe(201);

    const cleared = await admin.clear('solo');
    expect(cleared.body).toEqual({ data: { cleared_tokens: 1 } });
    const [soloUsage] = await usagesOf(t.db, 'id = $1', [inSolo.body.data.lease_id]);
    expect(soloUsage?.end_reason).toBe('cleared');
    const [defaultUsage] = await usagesOf(t.db, 'id = $1', [inDefault.body.data.lease_id]);
    expect(defaultUsage?.ended_at).toBeNull();
  });

  it('gives concurrent newcomers distinct tokens of the pool, never one of another pool', async () => {
    await admin.create({ name: 'rush', size: 5 });
    const answers = await Promise.all(Array.from({ length: 20 }, () => activate('rush', newUserId())));

    const granted = answers.filter((res) => res.status === 201).map((res) => res.body.data.token_id as string);
    expect(granted).toHaveLength(5);
    expect(new Set(granted).size).toBe(5);
    const { rows } = await t.db.pool.query<{ name: string }>(
      `SELECT DISTINCT p.name FROM tokens t JOIN pools p ON p.id = t.pool_id WHERE t.id = ANY($1)`,
      [granted],
    );
    expect(rows).toEqual([{ name: 'rush' }]);
    expect(answers.filter((res) => res.status === 409)).toHaveLength(15);
    const metrics = (await t.http.get('/metrics')).text;
    expect(metrics).toMatch(/^token_lease_activations_total\{pool="rush",outcome="created"\} 5$/m);
    expect(metrics).toMatch(/^token_lease_activations_total\{pool="rush",outcome="exhausted"\} 15$/m);
  });

  it("evicts within the pool when its policy says so, whatever the service's", async () => {
    await admin.create({ name: 'evicting', size: 1, full_policy: 'evict_oldest' });
    const first = await activate('evicting', newUserId());
    const second = await activate('evicting', newUserId());

    expect(second.status).toBe(201);
    expect(second.body.data.token_id).toBe(first.body.data.token_id);
    const [evicted] = await usagesOf(t.db, 'id = $1', [first.body.data.lease_id]);
    expect(evicted?.end_reason).toBe('evicted');
  });

  it('grows a pool and changes its settings for new leases; null goes back to the service', async () => {
    await admin.create({ name: 'growing', size: 1, lease_ttl_ms: 3000 });

    const grown = await admin.patch('growing', { size: 4, lease_ttl_ms: null, max_waiters: 2 });

    expect(grown.status).toBe(200);
    expect(grown.body.data).toMatchObject({ size: 4, free: 4, lease_ttl_ms: 60000, max_waiters: 2 });
    const lease = (await activate('growing', newUserId())).body.data;
    expect(Date.parse(lease.expires_at) - Date.parse(lease.activated_at)).toBe(60000);
  });

  it("lets no more clients wait for the pool on this process than its max_waiters", async () => {
    await admin.create({ name: 'queue', size: 1, max_waiters: 1 });
    await activate('queue', newUserId());
    // Sent now (a supertest request goes out once it is awaited or then-ed).
    const waiting = t.http
      .post('/api/pools/queue/tokens/activate?wait=2')
      .send({ user_id: newUserId() })
      .then((res) => res);
    // The first waiter is in the queue once its row is; then a second is one too many.
    await waitFor(async () => (await t.db.pool.query('SELECT 1 FROM waiters')).rowCount === 1, { what: 'the first waiter' });

    const second = await t.http.post('/api/pools/queue/tokens/activate?wait=2').send({ user_id: newUserId() });

    expect(second.status).toBe(503);
    expect(second.body.error).toMatchObject({ code: 'too_many_waiters', details: { max_waiters: 1 } });
    expect((await waiting).status).toBe(409);
  });

  it('refuses bad names, a name taken, a pool that shrinks, and settings that contradict each other', async () => {
    for (const name of ['Upper', 'with space', 'a'.repeat(64), '', 'under_score']) {
      const res = await admin.create({ name, size: 1 });
      expect(res.status, name).toBe(422);
      expect(res.body.error.details.fields[0].field).toBe('name');
    }
    await admin.create({ name: 'taken', size: 2 });
    const again = await admin.create({ name: 'taken', size: 2 });
    expect(again.status).toBe(409);
    expect(again.body.error).toMatchObject({ code: 'pool_exists', details: { pool: 'taken' } });

    const shrink = await admin.patch('taken', { size: 1 });
    expect(shrink.status).toBe(422);
    expect(shrink.body.error.details.fields[0].field).toBe('size');

    const contradiction = await admin.create({ name: 'contradiction', size: 1, lease_ttl_ms: 5000, max_lease_ms: 1000 });
    expect(contradiction.status).toBe(422);
    expect(contradiction.body.error.details.fields[0].field).toBe('max_lease_ms');
    expect((await t.http.get('/api/pools/contradiction')).status).toBe(404);

    for (const body of [{ size: -1 }, { size: 1.5 }, { full_policy: 'random' }, { lease_ttl_ms: 10 }]) {
      expect((await admin.patch('taken', body)).status, JSON.stringify(body)).toBe(422);
    }
  });

  it('answers 404 for a pool that does not exist, on every route that names one', async () => {
    for (const res of [
      await t.http.get('/api/pools/nope'),
      await t.http.get('/api/pools/nope/tokens'),
      await activate('nope', newUserId()),
      await admin.clear('nope'),
      await admin.patch('nope', { size: 3 }),
      await t.http.get('/api/pools/NOT_A_NAME'),
    ]) {
      expect(res.status).toBe(404);
      expect(res.body.error.code).toBe('not_found');
    }
  });

  it('keeps the admin routes for admins', async () => {
    expect((await t.http.post('/api/admin/pools').send({ name: 'sneaky', size: 1 })).status).toBe(401);
    expect((await t.http.get('/api/admin/pools')).status).toBe(401);
    expect((await t.http.patch('/api/admin/pools/default').send({ size: 100 })).status).toBe(401);
    expect((await t.http.post('/api/pools/default/tokens/clear')).status).toBe(401);
    const listed = await t.http.get('/api/admin/pools').set('Authorization', `Bearer ${ADMIN_KEY}`);
    expect(listed.status).toBe(200);
  });
});

describe('the tokens of each pool, in the metrics', () => {
  it('counts free and held tokens by pool, in a process that runs the worker role', async () => {
    const t = await startTestService({ ROLE: 'all', POOL_SIZE: '2', ADMIN_API_KEY: ADMIN_KEY });
    try {
      await t.http.post('/api/admin/pools').set('Authorization', `Bearer ${ADMIN_KEY}`).send({ name: 'counted', size: 3 });
      await t.http.post('/api/pools/counted/tokens/activate').send({ user_id: newUserId() });

      const metrics = (await t.http.get('/metrics')).text;

      expect(metrics).toMatch(/^token_lease_tokens\{pool="counted",state="free"\} 2$/m);
      expect(metrics).toMatch(/^token_lease_tokens\{pool="counted",state="held"\} 1$/m);
      expect(metrics).toMatch(/^token_lease_tokens\{pool="default",state="free"\} 2$/m);
    } finally {
      await t.close();
    }
  });
});
