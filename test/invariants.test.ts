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
        const released = await t.http.post(`/api/tokens/${lease.token_id}/release`).send({ user_id: userId, lease_id: lease.lease_id });
        observations.push({ op: 'release', userId, tokenId: lease.token_id, status: released.status, leaseId: lease.lease_id });
      }
      if (res.status < 300 && lease !== undefined) observations.push(await validate(userId, lease));
    }
  });

  async function validate(userId: string, lease: { token_id: string; fence: number }): Promise<Observation> {
    const sentAt = Date.now();
    const res = await t.http.post(`/api/tokens/${lease.token_id}/validate`).send({ user_id: userId, fence: lease.fence });
    return {
      op: 'validate',
      userId,
      tokenId: lease.token_id,
      fence: lease.fence,
      sentAt,
      receivedAt: Date.now(),
      status: res.status,
      valid: res.body.data.valid,
      leaseId: res.body.data.lease_id,
      reason: res.body.data.reason,
    };
  }
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

  it('passes validations that agree with the usages, answered valid and invalid', async () => {
    const validations = observations.filter((o): o is Extract<Observation, { op: 'validate' }> => o.op === 'validate');
    expect(validations.map((o) => o.reason ?? 'valid')).toEqual([
      'released',
      'valid',
      'valid',
      'valid',
    ]);
    expect(await check()).toEqual([]);
  });

  it('catches validations that disagree with the usage they name', async () => {
    const [released, held] = observations.filter((o) => o.op === 'validate');
    if (released?.op !== 'validate' || held?.op !== 'validate') throw new Error('no validations');
    const wrong: Observation[] = [
      // A released lease reported valid, and with the wrong reason.
      { ...released, valid: true, reason: undefined },
      { ...released, reason: 'superseded' },
      // A lease the client had been granted before asking, reported unknown.
      { ...held, sentAt: held.sentAt + 5, valid: false, leaseId: undefined, reason: 'unknown_lease' },
      // An active lease reported expired.
      { ...held, valid: false, leaseId: undefined, reason: 'expired' },
    ];

    const violations = await check({ observations: [...observations, ...wrong] });

    expect(violations).toHaveLength(1);
    expect(violations[0]?.message).toBe('validations whose answer disagrees with the usage they name');
    expect(violations[0]?.rows.map((r: any) => r.seen)).toEqual(wrong);
  });

  it('catches two open usages, overlap, a wrong status and a leak', async () => {
    // Take the schema's guarantees away in this database only, then break them.
    await t.db.pool.query(`
      ALTER TABLE usages DROP CONSTRAINT usages_no_overlap;
      ALTER TABLE leases DROP CONSTRAINT leases_one_per_user;
      ALTER TABLE leases DROP CONSTRAINT leases_token_id_key;
      ALTER TABLE usages DROP CONSTRAINT usages_token_fence_key;
      ALTER TABLE tokens DROP CONSTRAINT tokens_lease_whole;
    `);
    const { rows } = await t.db.pool.query<{ id: string; token_id: string; user_id: string; fence: string }>(
      'SELECT id, token_id, user_id, fence FROM all_usages WHERE ended_at IS NULL ORDER BY fence LIMIT 1',
    );
    const open = rows[0];
    if (open === undefined) throw new Error('no open usage');
    await t.db.pool.query(
      `INSERT INTO leases (id, pool_id, token_id, user_id, fence, started_at, expires_at)
       VALUES (gen_random_uuid(), 1, $1, $2, $3, now() - interval '1 hour', now() - interval '50 minutes')`,
      [open.token_id, open.user_id, Number(open.fence) + 1],
    );

    // And a token that forgot its holder: reported free while its lease is active.
    await t.db.pool.query(
      `UPDATE tokens SET lease_id = NULL, user_id = NULL, started_at = NULL, expires_at = NULL
       WHERE id = (SELECT token_id FROM all_usages WHERE ended_at IS NULL AND token_id <> $1 LIMIT 1)`,
      [open.token_id],
    );

    const violations = await check({ observations: undefined });
    expect(new Set(violations.map((v) => v.invariant))).toEqual(
      new Set(['at-most-one', 'no-overlap', 'no-leak', 'status']),
    );
  });
});
