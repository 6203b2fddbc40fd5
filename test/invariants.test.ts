import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newUserId, startTestService, type TestService } from './helpers.js';
import { checkInvariants, type Observation } from './invariants.js';

// The checker must pass a healthy history and catch each kind of corruption, or the stress,
// property, fault and fuzz runs that rely on it prove nothing.

describe('the invariant checker', () => {
  let t: TestService;
  const observations: Observation[] = [];

  beforeAll(async () => {
    t = await startTestService({ POOL_SIZE: '3', LEASE_TTL_MS: '60000' });
    for (let i = 0; i < 4; i += 1) {
      const userId = newUserId();
      const sentAt = Date.now();
      const res = await t.http.post('/api/tokens/activate').send({ user_id: userId });
      const lease = res.body.data as { lease_id: string; token_id: string; fence: number } | undefined;
      observations.push({
        op: 'activate',
        userId,
        sentAt,
        receivedAt: Date.now(),
        status: res.status,
        lease: res.status < 300 && lease !== undefined
          ? { leaseId: lease.lease_id, tokenId: lease.token_id, fence: lease.fence }
          : undefined,
      });
      if (i === 0 && lease !== undefined) {
        const released = await t.http.post(`/api/tokens/${lease.token_id}/release`).send({ user_id: userId });
        observations.push({ op: 'release', userId, tokenId: lease.token_id, status: released.status, leaseId: lease.lease_id });
      }
    }
  });
  afterAll(async () => {
    await t.close();
  });

  const check = (extra: Partial<Parameters<typeof checkInvariants>[1]> = {}) =>
    checkInvariants(t.db.url, {
      drained: { sweepIntervalMs: 1_000, marginMs: 1_000 },
      observations,
      everyAnswerSeen: true,
      ...extra,
    });

  it('passes a healthy history', async () => {
    expect(await check()).toEqual([]);
  });

  it('catches a usage no client was granted, and a granted lease the database lacks', async () => {
    const phantom: Observation = {
      op: 'activate',
      userId: newUserId(),
      sentAt: Date.now(),
      receivedAt: Date.now(),
      status: 201,
      lease: { leaseId: '00000000-0000-4000-8000-000000000001', tokenId: 'x', fence: 1 },
    };
    const names = (await check({ observations: [...observations.slice(1), phantom] })).map((v) => v.message);
    expect(names).toEqual(
      expect.arrayContaining([
        'leases clients were granted that the database does not hold as granted',
        'usages no client was granted',
      ]),
    );
  });

  it('catches two open usages, overlap, a wrong status and a leak', async () => {
    // Take the schema's guarantees away in this database only, then break them.
    await t.db.pool.query(`
      DROP INDEX usages_one_open_per_token;
      DROP INDEX usages_one_open_per_user;
      ALTER TABLE usages DROP CONSTRAINT usages_token_fence_key;
    `);
    const { rows } = await t.db.pool.query<{ id: string; token_id: string; user_id: string; fence: string }>(
      'SELECT id, token_id, user_id, fence FROM usages WHERE ended_at IS NULL ORDER BY fence LIMIT 1',
    );
    const open = rows[0];
    if (open === undefined) throw new Error('no open usage');
    await t.db.pool.query(
      `INSERT INTO usages (token_id, user_id, fence, started_at, expires_at)
       VALUES ($1, $2, $3, now() - interval '1 hour', now() - interval '50 minutes')`,
      [open.token_id, open.user_id, Number(open.fence) + 1],
    );

    // And a token that forgot its holder: reported free while its lease is active.
    await t.db.pool.query(
      `UPDATE tokens SET usage_id = NULL
       WHERE id = (SELECT token_id FROM usages WHERE ended_at IS NULL AND token_id <> $1 LIMIT 1)`,
      [open.token_id],
    );

    const violations = await check({ observations: undefined });
    expect(new Set(violations.map((v) => v.invariant))).toEqual(
      new Set(['at-most-one', 'no-overlap', 'no-leak', 'status']),
    );
  });
});
