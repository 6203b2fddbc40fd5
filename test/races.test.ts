import type pg from 'pg';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { addWaiter } from '../src/db/queries.js';
import { createWaitingRoom, ClientGoneError } from '../src/domain/waiting.js';
import { lockWaits, newUserId, openUsages, startTestService, testLogger, type TestService } from './helpers.js';
import { waitFor } from './harness/waitFor.js';
import { checkInvariants, describeViolations } from './invariants.js';

type Answer = Awaited<ReturnType<TestService['http']['get']>>;
interface Activated {
  token_id: string;
  lease_id: string;
  fence: number;
  expires_at: string;
}

// Each race is replayed by holding a lock in a transaction of the test's own while the request
// under test waits for it: the windows are milliseconds wide, too narrow to hit by load alone.

function harness(getService: () => TestService) {
  const t = () => getService();

  async function activate(userId: string): Promise<Activated> {
    const res = await t().http.post('/api/tokens/activate').send({ user_id: userId });
    expect([200, 201], res.text).toContain(res.status);
    return res.body.data as Activated;
  }

  /** Makes a lease run out `ms` from now, by the database clock; returns when that is. */
  async function expireIn(leaseId: string, ms: number): Promise<Date> {
    const { rows } = await t().db.pool.query<{ expires_at: Date }>(
      `WITH u AS (
         UPDATE leases SET expires_at = clock_timestamp() + $2 * interval '1 millisecond' WHERE id = $1
         RETURNING token_id, expires_at
       )
       UPDATE tokens t SET expires_at = u.expires_at FROM u WHERE t.id = u.token_id RETURNING t.expires_at`,
      [leaseId, ms],
    );
    return rows[0]!.expires_at;
  }

  async function untilPast(instant: Date): Promise<void> {
    await waitFor(
      async () => (await t().db.pool.query<{ past: boolean }>('SELECT clock_timestamp() > $1 AS past', [instant])).rows[0]!.past,
      { what: 'the expiry to pass' },
    );
  }

  async function untilWaitingForALock(): Promise<void> {
    await waitFor(async () => (await lockWaits(t().db.pool)) > 0, { what: 'the request to wait for the lock held' });
  }

  /**
   * Runs `hold` in a transaction, then `start` while it is open (it sends the request under test
   * and returns once that waits); then commits, and returns the answer.
   */
  async function whileHeld(
    hold: (tx: pg.PoolClient) => Promise<unknown>,
    start: () => Promise<{ answer: Promise<Answer> }>,
  ): Promise<Answer> {
    const tx = await t().db.pool.connect();
    try {
      await tx.query('BEGIN');
      await hold(tx);
      const { answer } = await start();
      await tx.query('COMMIT');
      return await answer;
    } catch (error) {
      await tx.query('ROLLBACK');
      throw error;
    } finally {
      tx.release();
    }
  }

  /** Sends a request now (supertest sends on then) and keeps its answer for later. */
  function send(request: PromiseLike<Answer>): Promise<Answer> {
    return new Promise((resolve, reject) => {
      request.then(resolve, reject);
    });
  }

  async function expectNoViolations(): Promise<void> {
    const violations = await checkInvariants(t().db.url);
    expect(violations, describeViolations(violations)).toEqual([]);
  }

  return { activate, expireIn, untilPast, untilWaitingForALock, whileHeld, send, expectNoViolations };
}

describe('operations name their lease', () => {
  let t: TestService;
  const h = harness(() => t);

  beforeAll(async () => {
    t = await startTestService({ POOL_SIZE: '2', LEASE_TTL_MS: '60000' });
  });
  beforeEach(async () => {
    await t.http.post('/api/tokens/clear').expect(200);
  });
  afterAll(async () => {
    await t.close();
  });

  it("a retried release answers the same ended usage and leaves the caller's newer lease of the token alone", async () => {
    const user = newUserId();
    const first = await h.activate(user);
    const released = await t.http.post(`/api/tokens/${first.token_id}/release`).send({ user_id: user, lease_id: first.lease_id });
    expect(released.status, released.text).toBe(200);
    const second = await h.activate(user);
    expect(second.token_id).toBe(first.token_id); // the lowest free token again
    expect(second.lease_id).not.toBe(first.lease_id);

    const retried = await t.http.post(`/api/tokens/${first.token_id}/release`).send({ user_id: user, lease_id: first.lease_id });

    expect(retried.status, retried.text).toBe(200);
    expect(retried.body.data).toEqual(released.body.data);
    expect((await openUsages(t.db)).map((u) => u.id)).toEqual([second.lease_id]);
    await h.expectNoViolations();
  });

  it('a stale renewal answers 409 lease_ended and does not extend the newer lease', async () => {
    const user = newUserId();
    const first = await h.activate(user);
    await t.http.post(`/api/tokens/${first.token_id}/release`).send({ user_id: user, lease_id: first.lease_id }).expect(200);
    const second = await h.activate(user);

    const renewed = await t.http.post(`/api/tokens/${first.token_id}/renew`).send({ user_id: user, lease_id: first.lease_id });

    expect(renewed.status, renewed.text).toBe(409);
    expect(renewed.body.error).toMatchObject({ code: 'lease_ended', details: { reason: 'released' } });
    const [open] = await openUsages(t.db);
    expect(open?.id).toBe(second.lease_id);
    expect(open?.expires_at.toISOString()).toBe(second.expires_at);
  });

  it('a release of a lease that ended otherwise answers 409 with the reason', async () => {
    const user = newUserId();
    const lease = await h.activate(user);
    await t.http.post('/api/tokens/clear').expect(200);

    const res = await t.http.post(`/api/tokens/${lease.token_id}/release`).send({ user_id: user, lease_id: lease.lease_id });

    expect(res.status, res.text).toBe(409);
    expect(res.body.error).toMatchObject({ code: 'lease_ended', details: { reason: 'cleared' } });
  });

  it("a lease named by another user, or of another token, is not the caller's: 409 not_holder", async () => {
    const [holder, other] = [newUserId(), newUserId()];
    const lease = await h.activate(holder);
    const theirs = await h.activate(other);

    const byOther = await t.http.post(`/api/tokens/${lease.token_id}/release`).send({ user_id: other, lease_id: lease.lease_id });
    const wrongToken = await t.http.post(`/api/tokens/${theirs.token_id}/renew`).send({ user_id: holder, lease_id: lease.lease_id });

    expect([byOther.status, wrongToken.status]).toEqual([409, 409]);
    expect([byOther.body.error.code, wrongToken.body.error.code]).toEqual(['not_holder', 'not_holder']);
    expect(await openUsages(t.db)).toHaveLength(2);
  });

  it('refuses a release or renewal without a lease_id with 422 naming the field', async () => {
    const user = newUserId();
    const lease = await h.activate(user);
    for (const action of ['release', 'renew']) {
      const res = await t.http.post(`/api/tokens/${lease.token_id}/${action}`).send({ user_id: user });
      expect(res.status, res.text).toBe(422);
      expect(res.body.error.details.fields).toEqual([expect.objectContaining({ field: 'lease_id' })]);
    }
  });
});

describe('one lock, one clock', () => {
  let t: TestService;
  const h = harness(() => t);

  beforeAll(async () => {
    t = await startTestService({ POOL_SIZE: '2', LEASE_TTL_MS: '60000' });
  });
  beforeEach(async () => {
    await t.http.post('/api/tokens/clear').expect(200);
  });
  afterAll(async () => {
    await t.close();
  });

  it('an activation that waited for its user lock while the lease ran out gives a new lease, not the expired one', async () => {
    const user = newUserId();
    const old = await h.activate(user);
    const expiry = await h.expireIn(old.lease_id, 300);

    const res = await h.whileHeld(
      // The per-user lock activate_lease takes first: held as another activation of the user would.
      (tx) => tx.query(`SELECT pg_advisory_xact_lock(1, hashtext('1/' || $1::text))`, [user]),
      async () => {
        const answer = h.send(t.http.post('/api/tokens/activate').send({ user_id: user }));
        await h.untilWaitingForALock();
        await h.untilPast(expiry);
        return { answer };
      },
    );

    expect(res.status, res.text).toBe(201);
    expect(res.body.data.lease_id).not.toBe(old.lease_id);
    expect(Date.parse(res.body.data.expires_at)).toBeGreaterThan(Date.now());
    const [ended] = await t.db.pool.query('SELECT end_reason FROM all_usages WHERE id = $1', [old.lease_id]).then((r) => r.rows);
    expect(ended).toEqual({ end_reason: 'expired' });
    await h.expectNoViolations();
  });

  it('validate is monotonic: a renewal that decided before the expiry and commits after it is never preceded by "expired"', async () => {
    const user = newUserId();
    const lease = await h.activate(user);
    const expiry = await h.expireIn(lease.lease_id, 400);
    const validate = () =>
      t.http.post(`/api/tokens/${lease.token_id}/validate`).send({ user_id: user, fence: lease.fence });

    const first = await h.whileHeld(
      // The renewal decides now, before the expiry, and holds its commit past it.
      async (tx) => {
        const { rows } = await tx.query<{ outcome: string }>('SELECT outcome FROM renew_lease($1, $2, $3, 60000, NULL)', [
          lease.token_id,
          user,
          lease.lease_id,
        ]);
        expect(rows[0]?.outcome).toBe('renewed');
        await h.untilPast(expiry);
      },
      async () => {
        const answer = h.send(validate());
        // Either validate waits for the renewal's lock, or it has answered already.
        await waitFor(async () => (await lockWaits(t.db.pool)) > 0 || isSettled(answer), { what: 'validate to wait or answer' });
        return { answer };
      },
    );

    const answers = [first.body.data, (await validate()).body.data];
    expect(answers.map((a: { valid: boolean }) => a.valid)).toEqual([true, true]);
  });

  it('once validate has answered expired, a renewal can never bring the lease back', async () => {
    const user = newUserId();
    const lease = await h.activate(user);
    const expiry = await h.expireIn(lease.lease_id, 200);
    await h.untilPast(expiry);
    const validate = () =>
      t.http.post(`/api/tokens/${lease.token_id}/validate`).send({ user_id: user, fence: lease.fence });

    expect((await validate()).body.data).toMatchObject({ valid: false, reason: 'expired' });
    const renewal = await t.http.post(`/api/tokens/${lease.token_id}/renew`).send({ user_id: user, lease_id: lease.lease_id });
    expect(renewal.status).toBe(409);
    expect(renewal.body.error.code).toBe('lease_expired');
    expect((await validate()).body.data).toMatchObject({ valid: false, reason: 'expired' });
  });

  it('a renewal locks the token: one ending the lease at its expiry waits for it, then finds it renewed', async () => {
    const user = newUserId();
    const lease = await h.activate(user);
    const expiry = await h.expireIn(lease.lease_id, 300);

    const renewal = await h.whileHeld(
      (tx) => tx.query('SELECT 1 FROM tokens WHERE id = $1 FOR UPDATE', [lease.token_id]),
      async () => {
        const answer = h.send(t.http.post(`/api/tokens/${lease.token_id}/renew`).send({ user_id: user, lease_id: lease.lease_id }));
        await h.untilWaitingForALock();
        return { answer };
      },
    );
    expect(renewal.status, renewal.text).toBe(200);
    await h.untilPast(expiry);
    const ending = await t.db.pool.query<{ outcome: string }>('SELECT outcome FROM end_lease_if_due($1)', [lease.lease_id]);
    expect(ending.rows[0]?.outcome).toBe('not_due');
  });
});

describe('evict_oldest under a rush', () => {
  let t: TestService;
  const h = harness(() => t);

  beforeAll(async () => {
    t = await startTestService({ POOL_SIZE: '5', LEASE_TTL_MS: '60000', POOL_FULL_POLICY: 'evict_oldest' });
  });
  afterAll(async () => {
    await t.close();
  });

  it('serves every newcomer of 4 rushes of 30 on a full pool of 5, recording each eviction once', async () => {
    for (let i = 0; i < 5; i += 1) await h.activate(newUserId());
    for (let rush = 0; rush < 4; rush += 1) {
      const answers = await Promise.all(
        Array.from({ length: 30 }, () => t.http.post('/api/tokens/activate').send({ user_id: newUserId() })),
      );
      expect(answers.map((res) => res.status)).toEqual(Array.from({ length: 30 }, () => 201));
    }
    const { rows } = await t.db.pool.query<{ open: number; evicted: number; total: number }>(
      `SELECT count(*) FILTER (WHERE ended_at IS NULL)::int AS open,
              count(*) FILTER (WHERE end_reason = 'evicted')::int AS evicted,
              count(*)::int AS total
       FROM all_usages`,
    );
    expect(rows[0]).toEqual({ open: 5, evicted: 120, total: 125 });
    await h.expectNoViolations();
  });
});

describe('waiting without blocking anyone', () => {
  let t: TestService;
  const h = harness(() => t);

  beforeAll(async () => {
    t = await startTestService({ POOL_SIZE: '2', LEASE_TTL_MS: '60000' });
  });
  beforeEach(async () => {
    await t.http.post('/api/tokens/clear').expect(200);
    await t.db.pool.query('DELETE FROM waiters');
  });
  afterAll(async () => {
    await t.close();
  });

  it('a waiter joins while a token write is in flight, without waiting for it or holding anyone up', async () => {
    const writer = await t.db.pool.connect();
    try {
      await writer.query('BEGIN');
      await writer.query('UPDATE tokens SET last_fence = last_fence WHERE position = (SELECT min(position) FROM tokens)');
      const waiterId = await addWaiter(t.db.pool, { poolId: 1, userId: newUserId(), timeoutMs: 60_000 });
      expect(waiterId).toMatch(/^\d+$/);
      expect(await lockWaits(t.db.pool)).toBe(0);
      await writer.query('COMMIT');
    } finally {
      await writer.query('ROLLBACK').catch(() => undefined);
      writer.release();
    }
  });

  it('notifies waiters only when a token was freed and somebody waits', async () => {
    const listener = await t.db.pool.connect();
    const heard: string[] = [];
    listener.on('notification', (n) => heard.push(n.payload ?? ''));
    try {
      await listener.query('LISTEN token_lease_waiters');
      const user = newUserId();
      const lease = await h.activate(user);
      await t.http.post(`/api/tokens/${lease.token_id}/release`).send({ user_id: user, lease_id: lease.lease_id }).expect(200);
      await h.activate(newUserId());
      // Nobody waited: nothing was sent. A waiter joins; activations free nothing: still nothing.
      await addWaiter(t.db.pool, { poolId: 1, userId: newUserId(), timeoutMs: 60_000 });
      await t.db.pool.query('SELECT * FROM activate_lease(1, $1, 60000, false)', [newUserId()]);
      await t.db.pool.query('SELECT * FROM activate_lease(1, $1, 60000, false)', [newUserId()]);
      const marker = newUserId();
      await t.db.pool.query('SELECT pg_notify($1, $2)', ['token_lease_waiters', marker]);
      await waitFor(() => heard.includes(marker), { what: 'the marker notification' });
      expect(heard).toEqual([marker]);
      // Now a clear frees a token while somebody waits: the pool is named.
      await t.http.post('/api/tokens/clear').expect(200);
      await waitFor(() => heard.length === 2, { what: 'the wake-up' });
      expect(heard[1]).toBe('1');
    } finally {
      await listener.query('UNLISTEN *').catch(() => undefined);
      listener.release();
    }
  });

  it('a client that leaves just before its waiter sleeps leaves the queue at once', async () => {
    const room = createWaitingRoom({
      pool: t.db.pool,
      wakeUps: { subscribe: () => () => undefined },
      maxWaiters: 10,
      log: testLogger(),
      recheckMs: 60_000,
    });
    const gone = new AbortController();
    let attempts = 0;
    const waited = room.wait({
      poolId: 1,
      userId: newUserId(),
      timeoutMs: 60_000,
      signal: gone.signal,
      attempt: () => {
        attempts += 1;
        gone.abort(); // the client leaves while the attempt runs
        return Promise.resolve({
          outcome: 'queued',
          lease_id: null,
          token_id: null,
          user_id: null,
          fence: null,
          started_at: null,
          expires_at: null,
          wait_ms: '60000',
          evicted_lease_id: null,
          expired_lease_ids: [],
          value_sealed: null,
        });
      },
    });
    await expect(waited).rejects.toBeInstanceOf(ClientGoneError);
    expect(attempts).toBe(1);
    expect(room.size()).toBe(0);
    const { rows } = await t.db.pool.query('SELECT count(*)::int AS n FROM waiters');
    expect(rows[0]).toEqual({ n: 0 });
    await room.close();
  });
});

/** Whether a promise has settled, without waiting for it. */
async function isSettled(promise: Promise<unknown>): Promise<boolean> {
  const pending = Symbol('pending');
  const first = await Promise.race([promise.then(() => true, () => true), Promise.resolve(pending)]);
  return first !== pending;
}
