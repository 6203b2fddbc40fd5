import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { renewLease } from '../src/db/queries.js';
import { newUserId, openUsages, startTestService, waitFor, type TestService } from './helpers.js';
import { checkInvariants, describeViolations } from './invariants.js';

// A user activates again just as their lease runs out, while a renewal of that lease is still
// committing. The activation reads the lease as run out (the renewal is not visible to it yet),
// and ends it with an UPDATE that waits for the renewal's row lock and then re-checks the newest
// row: renewed, so it ends nothing. It used to free the token all the same, leaving the renewed
// lease open with no token pointing at it: nothing could end it, and every later activation that
// picked that token failed on usages_one_open_per_token (migrations/0005).

describe('an activation racing a renewal of the same lease', () => {
  let t: TestService;

  beforeAll(async () => {
    t = await startTestService({ POOL_SIZE: '1', LEASE_TTL_MS: '60000' });
  });
  afterAll(async () => {
    await t.close();
  });

  it('answers the renewed lease and leaves its token pointing at it', async () => {
    const user = newUserId();
    const granted = await t.http.post('/api/tokens/activate').send({ user_id: user }).expect(201);
    const { token_id: tokenId, lease_id: leaseId } = granted.body.data as { token_id: string; lease_id: string };

    const renewer = await t.db.pool.connect();
    try {
      // The renewal's transaction begins (and fixes its now()) before the lease runs out...
      await renewer.query('BEGIN');
      await renewer.query('SELECT now()');
      // ...the lease runs out for every transaction that begins from here on...
      await t.db.pool.query('UPDATE usages SET expires_at = clock_timestamp() WHERE id = $1', [leaseId]);
      // ...and the renewal, unexpired by its own now(), extends it and holds the row until COMMIT.
      const renewed = await renewLease(renewer, { tokenId, userId: user, ttlMs: 60_000, maxLeaseMs: null });
      expect(renewed?.id).toBe(leaseId);

      const activation = t.http.post('/api/tokens/activate').send({ user_id: user }).then((res) => res);
      await waitFor(
        async () => {
          const { rows } = await t.db.pool.query<{ waiting: number }>(
            `SELECT count(*)::int AS waiting FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%activate_lease%'`,
          );
          return rows[0]!.waiting > 0;
        },
        { what: 'the activation to wait for the renewal' },
      );
      await renewer.query('COMMIT');

      const res = await activation;
      expect(res.status, res.text).toBe(200);
      expect(res.body.data).toMatchObject({ token_id: tokenId, lease_id: leaseId, user_id: user });
      expect(Date.parse((res.body.data as { expires_at: string }).expires_at)).toBeGreaterThan(Date.now() + 30_000);
    } finally {
      renewer.release();
    }

    const { rows } = await t.db.pool.query<{ usage_id: string | null }>('SELECT usage_id FROM tokens WHERE id = $1', [
      tokenId,
    ]);
    expect(rows[0]?.usage_id).toBe(leaseId);
    expect((await openUsages(t.db)).map((usage) => usage.id)).toEqual([leaseId]);
    const violations = await checkInvariants(t.db.url);
    expect(violations, describeViolations(violations)).toEqual([]);

    // The lease can still be ended, and the token taken again.
    await t.http.post(`/api/tokens/${tokenId}/release`).send({ user_id: user }).expect(200);
    await t.http.post('/api/tokens/activate').send({ user_id: newUserId() }).expect(201);
  });
});
