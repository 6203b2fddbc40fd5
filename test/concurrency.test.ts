import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newUserId, openUsages, startTestService, type TestService } from './helpers.js';

// Many simultaneous requests; the invariants are checked in the database, not only in answers.

describe('concurrent activations', () => {
  let t: TestService;

  beforeAll(async () => {
    t = await startTestService({ POOL_SIZE: '100', DATABASE_POOL_MAX: '10' });
  });
  afterAll(async () => {
    await t.close();
  });

  const activate = (userId: string) =>
    fetch(`${t.url}/api/tokens/activate`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ user_id: userId }),
    }).then(async (res) => ({ status: res.status, body: (await res.json()) as Record<string, any> }));

  it('20 simultaneous activations by one user give exactly one lease', async () => {
    const userId = newUserId();
    const answers = await Promise.all(Array.from({ length: 20 }, () => activate(userId)));

    expect(answers.filter((a) => a.status === 201)).toHaveLength(1);
    expect(answers.filter((a) => a.status === 200)).toHaveLength(19);
    const leaseIds = new Set(answers.map((a) => a.body.data.lease_id));
    expect(leaseIds.size).toBe(1);

    const open = await openUsages(t.db);
    expect(open.filter((u) => u.user_id === userId)).toHaveLength(1);
    expect(open[0]?.id).toBe([...leaseIds][0]);
    await fetch(`${t.url}/api/tokens/clear`, { method: 'POST' });
  });

  it('100 simultaneous users on a pool of 100 get 100 distinct tokens; the 101st gets 409', async () => {
    const users = Array.from({ length: 100 }, () => newUserId());
    const answers = await Promise.all(users.map(activate));

    expect(answers.map((a) => a.status)).toEqual(users.map(() => 201));
    const tokens = new Set(answers.map((a) => a.body.data.token_id));
    expect(tokens.size).toBe(100);

    const late = await activate(newUserId());
    expect(late.status).toBe(409);
    expect(late.body.error.code).toBe('pool_exhausted');

    const open = await openUsages(t.db);
    expect(open).toHaveLength(100);
    expect(new Set(open.map((u) => u.token_id)).size).toBe(100);
    expect(new Set(open.map((u) => u.user_id))).toEqual(new Set(users));
    const { rows } = await t.db.pool.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM tokens t JOIN all_usages u ON u.id = t.lease_id
       WHERE u.ended_at IS NULL`,
    );
    expect(rows[0]?.n).toBe(100);
  });

  it('a rush of mixed users, repeats and clears never opens two leases for a token or a user', async () => {
    await fetch(`${t.url}/api/tokens/clear`, { method: 'POST' });
    const users = Array.from({ length: 60 }, () => newUserId());
    const requests = Array.from({ length: 300 }, (_, i) => {
      if (i % 50 === 49) return fetch(`${t.url}/api/tokens/clear`, { method: 'POST' });
      return activate(users[i % users.length] ?? '');
    });
    await Promise.all(requests);

    const { rows } = await t.db.pool.query<{ tokens: number; users: number; open: number }>(
      `SELECT count(DISTINCT token_id)::int AS tokens, count(DISTINCT user_id)::int AS users,
              count(*)::int AS open
       FROM all_usages WHERE ended_at IS NULL`,
    );
    expect(rows[0]?.tokens).toBe(rows[0]?.open);
    expect(rows[0]?.users).toBe(rows[0]?.open);
  });
});
