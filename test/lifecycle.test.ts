import { Queue } from 'bullmq';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { RELEASE_QUEUE, releaseJobId } from '../src/jobs/queue.js';
import { backdate, newUserId, openUsages, startTestService, usagesOf, type TestService } from './helpers.js';
import { waitFor } from './harness/waitFor.js';
import { testRedisUrl } from './redis.js';

// Release, renew, validate with a fence, and the evict_oldest policy, over real PostgreSQL and
// Redis; each case checks the answers and the rows.

interface LeaseBody {
  token_id: string;
  user_id: string;
  lease_id: string;
  fence: number;
  activated_at: string;
  expires_at: string;
}

const TTL_MS = 60_000;

function client(t: TestService) {
  return {
    activate: async (userId: string) => {
      const res = await t.http.post('/api/tokens/activate').send({ user_id: userId });
      if (res.status !== 201) throw new Error(`activation answered ${res.status}: ${res.text}`);
      return res.body.data as LeaseBody;
    },
    release: (tokenId: string, userId: string, leaseId: string) =>
      t.http.post(`/api/tokens/${tokenId}/release`).send({ user_id: userId, lease_id: leaseId }),
    renew: (tokenId: string, userId: string, leaseId: string) =>
      t.http.post(`/api/tokens/${tokenId}/renew`).send({ user_id: userId, lease_id: leaseId }),
    validate: (tokenId: string, userId: string, fence: number) =>
      t.http.post(`/api/tokens/${tokenId}/validate`).send({ user_id: userId, fence }),
  };
}

describe('release, renew and validate', () => {
  let t: TestService;
  let c: ReturnType<typeof client>;

  beforeAll(async () => {
    t = await startTestService({ POOL_SIZE: '20', LEASE_TTL_MS: String(TTL_MS) });
    c = client(t);
  });
  afterAll(async () => {
    await t.close();
  });

  describe('POST /api/tokens/:id/release', () => {
    it('ends the lease now and lets the user activate again', async () => {
      const user = newUserId();
      const lease = await c.activate(user);

      const res = await c.release(lease.token_id, user, lease.lease_id);

      expect(res.status).toBe(200);
      expect(res.body.data).toMatchObject({
        token_id: lease.token_id,
        lease_id: lease.lease_id,
        user_id: user,
        fence: lease.fence,
        end_reason: 'released',
        ended_at: expect.any(String),
      });
      const [row] = await usagesOf(t.db, 'id = $1', [lease.lease_id]);
      expect(row?.end_reason).toBe('released');
      expect((await t.http.get(`/api/tokens/${lease.token_id}`)).body.data.status).toBe('available');
      const again = await c.activate(user);
      expect(again.lease_id).not.toBe(lease.lease_id);
    });

    it('answers a retried release with the same ended usage', async () => {
      const user = newUserId();
      const lease = await c.activate(user);
      const first = await c.release(lease.token_id, user, lease.lease_id);
      const retry = await c.release(lease.token_id, user, lease.lease_id);

      expect(retry.status).toBe(200);
      expect(retry.body).toEqual(first.body);
      expect(await usagesOf(t.db, 'id = $1 AND ended_at IS NOT NULL', [lease.lease_id])).toHaveLength(1);
    });

    it('refuses a user who does not hold the token with 409 not_holder and changes nothing', async () => {
      const holder = newUserId();
      const lease = await c.activate(holder);

      const res = await c.release(lease.token_id, newUserId(), lease.lease_id);

      expect(res.status).toBe(409);
      expect(res.body.error).toMatchObject({ code: 'not_holder', details: { reason: 'not_held' } });
      const [row] = await usagesOf(t.db, 'id = $1', [lease.lease_id]);
      expect(row?.ended_at).toBeNull();
    });

    it('refuses the release of an expired lease with 409 lease_expired, ending it as expired', async () => {
      const user = newUserId();
      const lease = await c.activate(user);
      await backdate(t.db, TTL_MS + 1, lease.lease_id);

      const res = await c.release(lease.token_id, user, lease.lease_id);

      expect(res.status).toBe(409);
      expect(res.body.error).toMatchObject({ code: 'lease_expired', details: { reason: 'expired' } });
      const [row] = await usagesOf(t.db, 'id = $1', [lease.lease_id]);
      expect(row?.end_reason).toBe('expired');
    });

    it('answers 404 for an unknown token and 422 for a bad body', async () => {
      const unknown = await c.release('00000000-0000-4000-8000-000000000000', newUserId(), newUserId());
      expect(unknown.status).toBe(404);
      const list = await t.http.get('/api/tokens');
      const bad = await t.http.post(`/api/tokens/${list.body.data[0].id}/release`).send({ user_id: 'me' });
      expect(bad.status).toBe(422);
      expect(bad.body.error.details.fields[0].field).toBe('user_id');
    });
  });

  describe('POST /api/tokens/:id/renew', () => {
    it('moves the expiry to TTL from now and keeps the lease', async () => {
      const user = newUserId();
      const lease = await c.activate(user);
      await backdate(t.db, 30_000, lease.lease_id);

      const res = await c.renew(lease.token_id, user, lease.lease_id);

      expect(res.status).toBe(200);
      expect(res.body.data).toMatchObject({ lease_id: lease.lease_id, fence: lease.fence });
      const newExpiry = Date.parse(res.body.data.expires_at);
      expect(newExpiry).toBeGreaterThan(Date.parse(lease.expires_at) - 30_000 + 25_000);
      const [row] = await usagesOf(t.db, 'id = $1', [lease.lease_id]);
      expect(row?.expires_at.toISOString()).toBe(res.body.data.expires_at);
    });

    it('refuses an expired lease with 409 lease_expired', async () => {
      const user = newUserId();
      const lease = await c.activate(user);
      await backdate(t.db, TTL_MS + 1, lease.lease_id);

      const res = await c.renew(lease.token_id, user, lease.lease_id);

      expect(res.status).toBe(409);
      expect(res.body.error.code).toBe('lease_expired');
      const [row] = await usagesOf(t.db, 'id = $1', [lease.lease_id]);
      expect(row?.expires_at.getTime()).toBeLessThan(Date.now());
    });

    it('refuses a released lease with 409 lease_ended and a foreign one with 409 not_holder', async () => {
      const user = newUserId();
      const lease = await c.activate(user);
      expect((await c.renew(lease.token_id, newUserId(), lease.lease_id)).body.error.code).toBe('not_holder');
      await c.release(lease.token_id, user, lease.lease_id);
      const res = await c.renew(lease.token_id, user, lease.lease_id);
      expect(res.status).toBe(409);
      expect(res.body.error).toMatchObject({ code: 'lease_ended', details: { reason: 'released' } });
    });
  });

  describe('POST /api/tokens/:id/validate', () => {
    it('accepts the current holder and fence, with the expiry', async () => {
      const user = newUserId();
      const lease = await c.activate(user);
      const res = await c.validate(lease.token_id, user, lease.fence);
      expect(res.status).toBe(200);
      expect(res.body.data).toEqual({ valid: true, lease_id: lease.lease_id, expires_at: lease.expires_at });
    });

    it('refuses after expiry, after release, an old fence, another user and an unknown fence', async () => {
      const user = newUserId();
      const first = await c.activate(user);
      await c.release(first.token_id, user, first.lease_id);
      expect((await c.validate(first.token_id, user, first.fence)).body.data).toEqual({
        valid: false,
        reason: 'released',
      });

      const second = await c.activate(user);
      expect(second.token_id).toBe(first.token_id); // the lowest free token again
      expect(second.fence).toBe(first.fence + 1);
      expect((await c.validate(first.token_id, user, first.fence)).body.data.valid).toBe(false);
      expect((await c.validate(second.token_id, newUserId(), second.fence)).body.data).toEqual({
        valid: false,
        reason: 'not_holder',
      });
      expect((await c.validate(second.token_id, user, second.fence + 5)).body.data).toEqual({
        valid: false,
        reason: 'unknown_lease',
      });

      await backdate(t.db, TTL_MS + 1, second.lease_id);
      expect((await c.validate(second.token_id, user, second.fence)).body.data).toEqual({
        valid: false,
        reason: 'expired',
      });
    });

    it('refuses a fence that is not a positive integer with 422', async () => {
      const list = await t.http.get('/api/tokens');
      for (const fence of [0, -1, 1.5, '1', null]) {
        const res = await t.http
          .post(`/api/tokens/${list.body.data[0].id}/validate`)
          .send({ user_id: newUserId(), fence });
        expect(res.status).toBe(422);
        expect(res.body.error.details.fields[0].field).toBe('fence');
      }
    });
  });
});

describe('renewal and release jobs', () => {
  const queues: Queue[] = [];
  afterEach(async () => {
    for (const q of queues.splice(0)) await q.close();
  });

  it('renewing past the original expiry keeps the lease; the old job does not end it', async () => {
    const t = await startTestService({ ROLE: 'all', LEASE_TTL_MS: '1500', SWEEP_INTERVAL_MS: '600000' });
    try {
      const c = client(t);
      const user = newUserId();
      const lease = await c.activate(user);
      const queue = new Queue(RELEASE_QUEUE, { connection: { url: testRedisUrl }, prefix: t.redisPrefix });
      queues.push(queue);
      const oldJobId = releaseJobId({ leaseId: lease.lease_id, expiresAt: new Date(lease.expires_at) });
      await waitFor(() => queue.getJob(oldJobId), { what: 'the first release job' });

      // Renewed 700 ms into the lease, the new expiry lies past the old one.
      await waitFor(() => Date.now() > Date.parse(lease.expires_at) - 1_500 + 700, { what: '700 ms into the lease' });
      const renewed = (await c.renew(lease.token_id, user, lease.lease_id)).body.data as LeaseBody;
      expect(Date.parse(renewed.expires_at)).toBeGreaterThan(Date.parse(lease.expires_at));

      // The old job fires at the original expiry and leaves the lease alone.
      await waitFor(async () => (await queue.getJob(oldJobId)) === undefined, {
        what: 'the old job to run',
      });
      await waitFor(() => Date.now() > Date.parse(lease.expires_at) + 100, { what: 'the old expiry' });
      expect((await c.validate(lease.token_id, user, lease.fence)).body.data.valid).toBe(true);
      const [open] = await usagesOf(t.db, 'id = $1', [lease.lease_id]);
      expect(open?.ended_at).toBeNull();

      // The renewal's own job ends it at the new expiry.
      const row = await waitFor(
        async () => (await usagesOf(t.db, 'id = $1 AND ended_at IS NOT NULL', [lease.lease_id]))[0],
        { what: 'the renewed lease to end' },
      );
      expect(row.end_reason).toBe('expired');
      expect(row.expires_at.toISOString()).toBe(renewed.expires_at);
      expect((row.ended_at?.getTime() ?? 0) - row.expires_at.getTime()).toBeLessThan(1_000);
    } finally {
      await t.close();
    }
  });

  it('MAX_LEASE_MS caps a lease across renewals', async () => {
    const t = await startTestService({ LEASE_TTL_MS: '60000', MAX_LEASE_MS: '90000' });
    try {
      const c = client(t);
      const user = newUserId();
      const lease = await c.activate(user);
      await backdate(t.db, 45_000, lease.lease_id);

      const capped = await c.renew(lease.token_id, user, lease.lease_id);
      expect(capped.status).toBe(200);
      expect(Date.parse(capped.body.data.expires_at) - (Date.parse(lease.activated_at) - 45_000)).toBe(90_000);

      const again = await c.renew(lease.token_id, user, lease.lease_id);
      expect(again.status).toBe(409);
      expect(again.body.error.code).toBe('max_lease_reached');
    } finally {
      await t.close();
    }
  });
});

describe('POOL_FULL_POLICY=evict_oldest', () => {
  let t: TestService;

  beforeAll(async () => {
    t = await startTestService({ POOL_SIZE: '60', LEASE_TTL_MS: String(TTL_MS), POOL_FULL_POLICY: 'evict_oldest' });
  });
  afterAll(async () => {
    await t.close();
  });

  it('gives 50 concurrent newcomers distinct tokens, evicting exactly the 50 oldest leases once each', async () => {
    const c = client(t);
    const incumbents: LeaseBody[] = [];
    for (let i = 0; i < 60; i += 1) incumbents.push(await c.activate(newUserId()));

    const newcomers = Array.from({ length: 50 }, () => newUserId());
    const answers = await Promise.all(
      newcomers.map((user_id) => t.http.post('/api/tokens/activate').send({ user_id })),
    );

    expect(answers.map((a) => a.status)).toEqual(newcomers.map(() => 201));
    expect(new Set(answers.map((a) => a.body.data.token_id)).size).toBe(50);
    const evicted = await usagesOf(t.db, "end_reason = 'evicted'");
    expect(evicted).toHaveLength(50);
    expect(new Set(evicted.map((u) => u.id))).toEqual(new Set(incumbents.slice(0, 50).map((l) => l.lease_id)));
    const open = await openUsages(t.db);
    expect(open).toHaveLength(60);
    expect(new Set(open.map((u) => u.token_id)).size).toBe(60);
    expect(new Set(open.map((u) => u.user_id))).toEqual(
      new Set([...incumbents.slice(50).map((l) => l.user_id), ...newcomers]),
    );
  });

  it('tells an evicted holder its lease was superseded', async () => {
    const c = client(t);
    const [victim] = await openUsages(t.db); // oldest first

    const newcomer = await c.activate(newUserId());

    expect(newcomer.token_id).toBe(victim?.token_id);
    expect(newcomer.fence).toBe(Number(victim?.fence) + 1);
    const res = await c.validate(victim?.token_id ?? '', victim?.user_id ?? '', Number(victim?.fence));
    expect(res.body.data).toEqual({ valid: false, reason: 'superseded' });
    const released = await c.release(victim?.token_id ?? '', victim?.user_id ?? '', victim?.id ?? '');
    expect(released.body.error).toMatchObject({ code: 'lease_ended', details: { reason: 'evicted' } });
  });
});
