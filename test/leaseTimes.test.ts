import type pg from 'pg';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { releaseLease } from '../src/db/queries.js';
import { newUserId, resetPool, startTestService, usagesOf, type TestService } from './helpers.js';
import { checkInvariants, describeViolations } from './invariants.js';

// A lease's start and end are stamped when its token is taken or given back, not when the
// transaction doing it began: a transaction can begin (and take now()) before a concurrent one
// frees or grants the token it then works on, for instance while it waits for the user's lock.
// Found by the stress run (a lease recorded as starting before the previous lease of its token
// ended); each case here replays that interleaving with a transaction begun early on purpose.

describe('lease times follow the order in which tokens really changed hands', () => {
  let t: TestService;
  let early: pg.PoolClient;

  beforeAll(async () => {
    t = await startTestService({ POOL_SIZE: '1', LEASE_TTL_MS: '60000' });
  });
  beforeEach(async () => {
    await resetPool(t.db);
  });
  afterAll(async () => {
    await t.close();
  });

  const activate = async (userId: string) => {
    const res = await t.http.post('/api/tokens/activate').send({ user_id: userId });
    expect(res.status).toBe(201);
    return res.body.data as { token_id: string; lease_id: string };
  };

  /** Runs `work` in a transaction that began (and fixed now()) before `meanwhile` ran. */
  async function inTransactionBegunBefore<T>(meanwhile: () => Promise<unknown>, work: (tx: pg.PoolClient) => Promise<T>) {
    early = await t.db.pool.connect();
    try {
      await early.query('BEGIN');
      await early.query('SELECT now()');
      await meanwhile();
      const result = await work(early);
      await early.query('COMMIT');
      return result;
    } catch (error) {
      await early.query('ROLLBACK');
      throw error;
    } finally {
      early.release();
    }
  }

  async function expectNoViolations(): Promise<void> {
    const violations = await checkInvariants(t.db.url);
    expect(violations, describeViolations(violations)).toEqual([]);
  }

  it('a lease taken on a token freed after its transaction began starts after the previous lease ended', async () => {
    const first = newUserId();
    const row = await inTransactionBegunBefore(
      async () => {
        const lease = await activate(first);
        await t.http.post(`/api/tokens/${lease.token_id}/release`).send({ user_id: first, lease_id: lease.lease_id }).expect(200);
      },
      async (tx) => (await tx.query('SELECT * FROM activate_lease(1, $1, 60000, false)', [newUserId()])).rows[0],
    );

    expect(row.outcome).toBe('created');
    const [previous] = await usagesOf(t.db, 'fence = 1');
    const [next] = await usagesOf(t.db, 'fence = 2');
    expect(next!.started_at.getTime()).toBeGreaterThanOrEqual(previous!.ended_at!.getTime());
    await expectNoViolations();
  });

  it('evicting a lease granted after its transaction began ends it after it started', async () => {
    const row = await inTransactionBegunBefore(
      () => activate(newUserId()),
      async (tx) => (await tx.query('SELECT * FROM activate_lease(1, $1, 60000, true)', [newUserId()])).rows[0],
    );

    expect(row.outcome).toBe('created');
    expect(row.evicted_lease_id).not.toBeNull();
    await expectNoViolations();
  });

  it('a release whose transaction began before the lease was granted ends it after it started', async () => {
    const user = newUserId();
    let lease = { token_id: '', lease_id: '' };
    const ended = await inTransactionBegunBefore(
      async () => {
        lease = await activate(user);
      },
      (tx) => releaseLease(tx, { tokenId: lease.token_id, userId: user, leaseId: lease.lease_id }),
    );

    expect(ended.end_reason).toBe('released');
    await expectNoViolations();
  });
});
