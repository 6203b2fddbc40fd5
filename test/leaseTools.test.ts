import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { count, drainAndCheck, undocumentedAnswers } from './faultChecks.js';
import { startLoad } from './harness/load.js';
import { waitFor } from './harness/waitFor.js';
import { newUserId, startTestService, usagesOf, type TestService } from './helpers.js';

// The operator's lease tools: one lease looked up by its id, one lease revoked, every lease of
// one user revoked; by example, then while clients keep the pool busy.

const ADMIN_KEY = 'lease-tools-admin-key-0123456789';
const admin = { Authorization: `Bearer ${ADMIN_KEY}` };

async function metric(t: TestService, line: string): Promise<number> {
  const text = (await t.http.get('/metrics')).text;
  const found = text.split('\n').find((l) => l.startsWith(line));
  return found === undefined ? 0 : Number(found.split(' ').at(-1));
}

describe('lease tools', () => {
  let t: TestService;

  beforeAll(async () => {
    t = await startTestService({ POOL_SIZE: '2', ADMIN_API_KEY: ADMIN_KEY, LEASE_TTL_MS: '60000' });
    await t.http.post('/api/admin/pools').set(admin).send({ name: 'gpu', size: 2 }).expect(201);
  });
  afterAll(async () => {
    await t.close();
  });

  const activate = async (user: string, pool = 'default') => {
    const path = pool === 'default' ? '/api/tokens/activate' : `/api/pools/${pool}/tokens/activate`;
    const res = await t.http.post(path).send({ user_id: user });
    expect(res.status, res.text).toBe(201);
    return res.body.data as { token_id: string; lease_id: string; fence: number; user_id: string };
  };
  const revokeLease = (leaseId: string) => t.http.post(`/api/admin/leases/${leaseId}/revoke`).set(admin);

  describe('GET /api/leases/:lease_id', () => {
    it('answers an open lease, then the same lease ended, with its pool and end reason', async () => {
      const user = newUserId();
      const lease = await activate(user, 'gpu');

      const open = await t.http.get(`/api/leases/${lease.lease_id}`);
      expect(open.status).toBe(200);
      expect(open.body.data).toMatchObject({
        lease_id: lease.lease_id,
        pool: 'gpu',
        token_id: lease.token_id,
        user_id: user,
        fence: lease.fence,
        ended_at: null,
        end_reason: null,
        active: true,
      });

      await t.http.post(`/api/tokens/${lease.token_id}/release`).send({ user_id: user, lease_id: lease.lease_id }).expect(200);
      const ended = await t.http.get(`/api/leases/${lease.lease_id.toUpperCase()}`);
      expect(ended.body.data).toMatchObject({ lease_id: lease.lease_id, end_reason: 'released', active: false });
      expect(ended.body.data.ended_at).toEqual(expect.any(String));
    });

    it('answers 404 for an unknown or malformed id', async () => {
      for (const id of [newUserId(), 'nope', '1']) {
        const res = await t.http.get(`/api/leases/${id}`);
        expect(res.status, id).toBe(404);
        expect(res.body.error.code).toBe('not_found');
      }
    });
  });

  describe('POST /api/admin/leases/:lease_id/revoke', () => {
    it('ends the lease now as revoked, frees its token at once and answers the same again', async () => {
      const user = newUserId();
      const lease = await activate(user);
      const endedBefore = await metric(t, 'token_lease_leases_ended_total{reason="revoked",by="revoke"}');

      const res = await revokeLease(lease.lease_id);

      expect(res.status, res.text).toBe(200);
      expect(res.body.data).toMatchObject({ lease_id: lease.lease_id, user_id: user, end_reason: 'revoked', active: false });
      const [row] = await usagesOf(t.db, 'id = $1', [lease.lease_id]);
      expect(row).toMatchObject({ end_reason: 'revoked', token_id: lease.token_id });
      expect(row?.ended_at).not.toBeNull();
      expect((await t.http.get(`/api/tokens/${lease.token_id}`)).body.data).toMatchObject({ status: 'available', active_usage: null });
      expect(await metric(t, 'token_lease_leases_ended_total{reason="revoked",by="revoke"}')).toBe(endedBefore + 1);

      const again = await revokeLease(lease.lease_id);
      expect(again.status).toBe(200);
      expect(again.body.data).toEqual(res.body.data);
      expect(await usagesOf(t.db, 'id = $1', [lease.lease_id])).toEqual([row]);
    });

    it("makes the holder's validate, release, renew and history say revoked", async () => {
      const user = newUserId();
      const lease = await activate(user);
      await revokeLease(lease.lease_id).expect(200);
      const ref = { user_id: user, lease_id: lease.lease_id };

      const validate = await t.http.post(`/api/tokens/${lease.token_id}/validate`).send({ user_id: user, fence: lease.fence });
      expect(validate.body.data).toEqual({ valid: false, reason: 'revoked' });
      const release = await t.http.post(`/api/tokens/${lease.token_id}/release`).send(ref);
      expect(release.status).toBe(409);
      expect(release.body.error).toMatchObject({ code: 'lease_ended', details: { reason: 'revoked' } });
      const renew = await t.http.post(`/api/tokens/${lease.token_id}/renew`).send(ref);
      expect(renew.status).toBe(409);
      expect(renew.body.error).toMatchObject({ code: 'lease_ended', details: { reason: 'revoked' } });
      const history = await t.http.get(`/api/tokens/${lease.token_id}/history`);
      expect(history.body.data.usages[0]).toMatchObject({ lease_id: lease.lease_id, end_reason: 'revoked' });
    });

    it('gives the token to the next activation at once', async () => {
      const first = await activate(newUserId());
      const second = await activate(newUserId());
      expect((await t.http.post('/api/tokens/activate').send({ user_id: newUserId() })).status).toBe(409);

      await revokeLease(first.lease_id).expect(200);

      const next = await activate(newUserId());
      expect(next.token_id).toBe(first.token_id);
      await revokeLease(second.lease_id).expect(200);
      await revokeLease(next.lease_id).expect(200);
    });

    it('answers 404 for an unknown or malformed lease, and 401 without the admin key', async () => {
      expect((await revokeLease(newUserId())).status).toBe(404);
      expect((await revokeLease('not-a-lease')).status).toBe(404);
      const lease = await activate(newUserId());
      const refused = await t.http.post(`/api/admin/leases/${lease.lease_id}/revoke`);
      expect(refused.status).toBe(401);
      expect(refused.headers['www-authenticate']).toMatch(/^Bearer/);
      expect((await usagesOf(t.db, 'id = $1', [lease.lease_id]))[0]?.ended_at).toBeNull();
      await revokeLease(lease.lease_id).expect(200);
    });
  });

  describe('POST /api/admin/users/:user_id/revoke', () => {
    it("ends every open lease of the user in every pool, and no one else's", async () => {
      const user = newUserId();
      const other = newUserId();
      const mine = [await activate(user), await activate(user, 'gpu')];
      const theirs = await activate(other, 'gpu');

      const res = await t.http.post(`/api/admin/users/${user}/revoke`).set(admin);

      expect(res.status, res.text).toBe(200);
      expect(res.body.data.user_id).toBe(user);
      expect(res.body.data.revoked).toBe(2);
      expect(res.body.data.leases.map((l: { lease_id: string }) => l.lease_id).sort()).toEqual(mine.map((l) => l.lease_id).sort());
      const rows = await usagesOf(t.db, 'user_id = $1', [user]);
      expect(rows.map((r) => r.end_reason)).toEqual(['revoked', 'revoked']);
      expect((await usagesOf(t.db, 'id = $1', [theirs.lease_id]))[0]?.ended_at).toBeNull();

      const again = await t.http.post(`/api/admin/users/${user}/revoke`).set(admin);
      expect(again.body.data).toEqual({ user_id: user, revoked: 0, leases: [] });
      await revokeLease(theirs.lease_id).expect(200);
    });

    it('answers 422 for a malformed user id, and 401 without the admin key', async () => {
      const bad = await t.http.post('/api/admin/users/alice/revoke').set(admin);
      expect(bad.status).toBe(422);
      expect(bad.body.error.code).toBe('validation_failed');
      expect((await t.http.post(`/api/admin/users/${newUserId()}/revoke`)).status).toBe(401);
    });
  });
});

describe('GET /api/leases/:lease_id with AUTH_MODE=api_key', () => {
  it('shows a lease to read and admin callers only, and answers 404 to anyone else', async () => {
    const t = await startTestService({ POOL_SIZE: '2', ADMIN_API_KEY: ADMIN_KEY, AUTH_MODE: 'api_key' });
    try {
      const key = async (scopes: string[]) =>
        (await t.http.post('/api/admin/clients').set(admin).send({ name: scopes.join(' '), scopes })).body.data.key as string;
      const leaser = { Authorization: `Bearer ${await key(['lease'])}` };
      const reader = { Authorization: `Bearer ${await key(['read'])}` };
      const lease = (await t.http.post('/api/tokens/activate').set(leaser).send({ user_id: newUserId() })).body.data;

      expect((await t.http.get(`/api/leases/${lease.lease_id}`).set(reader)).body.data.user_id).toBe(lease.user_id);
      expect((await t.http.get(`/api/leases/${lease.lease_id}`).set(admin)).status).toBe(200);
      expect((await t.http.get(`/api/leases/${lease.lease_id}`).set(leaser)).status).toBe(404);
      expect((await t.http.get(`/api/leases/${lease.lease_id}`)).status).toBe(401);
    } finally {
      await t.close();
    }
  });
});

describe('revoke while the pool is under load', () => {
  it('revokes single leases and whole users while clients lease, and every invariant holds', async () => {
    const LEASE_TTL_MS = 1_000;
    const SWEEP_INTERVAL_MS = 1_000;
    const t = await startTestService({
      ROLE: 'all',
      POOL_SIZE: '6',
      ADMIN_API_KEY: ADMIN_KEY,
      LEASE_TTL_MS: String(LEASE_TTL_MS),
      SWEEP_INTERVAL_MS: String(SWEEP_INTERVAL_MS),
    });
    const load = startLoad({ baseUrls: [t.url], clients: 4, usersPerClient: 4, waitSeconds: 1, deadlineMs: 5_000 });
    try {
      const revokedLeases = new Set<string>();
      const revokedUsers = new Set<string>();
      // Revoke whatever is open, one lease at a time and a whole user at a time, until both have
      // ended a lease a client still held.
      await waitFor(
        async () => {
          const { rows } = await t.db.pool.query<{ id: string; user_id: string }>('SELECT id, user_id FROM leases ORDER BY random() LIMIT 2');
          const [one, user] = rows;
          if (one !== undefined) {
            const res = await t.http.post(`/api/admin/leases/${one.id}/revoke`).set(admin);
            expect(res.status, res.text).toBe(200);
            if (res.body.data.end_reason === 'revoked') revokedLeases.add(one.id);
          }
          if (user !== undefined) {
            const res = await t.http.post(`/api/admin/users/${user.user_id}/revoke`).set(admin);
            expect(res.status, res.text).toBe(200);
            for (const lease of res.body.data.leases as Array<{ lease_id: string }>) revokedLeases.add(lease.lease_id);
            if (res.body.data.revoked > 0) revokedUsers.add(user.user_id);
          }
          return revokedLeases.size >= 10 && revokedUsers.size >= 3;
        },
        { timeoutMs: 20_000, intervalMs: 50, what: 'leases revoked while the load runs' },
      );

      // Every answer the clients got was a documented one, revoked leases among them.
      await drainAndCheck(t.db, load, { leaseTtlMs: LEASE_TTL_MS, sweepIntervalMs: SWEEP_INTERVAL_MS });
      expect(undocumentedAnswers(load.answers, false)).toEqual([]);
      expect(load.counts.created).toBeGreaterThan(0);
      const ended = await count(t.db, "SELECT count(*) AS n FROM usages WHERE id = ANY($1) AND end_reason = 'revoked'", [[...revokedLeases]]);
      expect(ended).toBe(revokedLeases.size);
    } finally {
      await load.stop();
      await t.close();
    }
  });
});
