import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deadRows } from '../src/db/queries.js';
import { maintain, type MaintenanceDeps } from '../src/domain/maintenance.js';
import { createTestDatabase, newUserId, testLogger, type TestDatabase } from './helpers.js';
import { waitFor } from './harness/waitFor.js';

describe('database upkeep', () => {
  let db: TestDatabase;
  const deps = (more: Partial<MaintenanceDeps> = {}): MaintenanceDeps => ({
    pool: db.pool,
    log: testLogger(),
    vacuumDeadRows: 1_000_000_000,
    historyRetentionDays: 0,
    ...more,
  });
  const deadIn = async (table: string) => (await deadRows(db.pool)).find((row) => row.table === table)?.dead ?? 0;

  beforeAll(async () => {
    db = await createTestDatabase();
    await db.pool.query('INSERT INTO tokens (pool_id) SELECT 1 FROM generate_series(1, 10)');
  });
  afterAll(async () => {
    await db.drop();
  });

  it('has the per-table settings a PostgreSQL with autovacuum on honours', async () => {
    const { rows } = await db.pool.query<{ relname: string; reloptions: string[] }>(
      `SELECT relname, reloptions FROM pg_class WHERE relname IN ('tokens', 'leases', 'waiters', 'usages') ORDER BY relname`,
    );
    const options = Object.fromEntries(rows.map((r) => [r.relname, r.reloptions]));
    expect(options.tokens).toEqual(
      expect.arrayContaining(['fillfactor=50', 'autovacuum_vacuum_scale_factor=0', 'autovacuum_vacuum_threshold=1000']),
    );
    expect(options.leases).toEqual(expect.arrayContaining(['autovacuum_vacuum_scale_factor=0', 'autovacuum_vacuum_threshold=1000']));
    expect(options.waiters).toEqual(expect.arrayContaining(['autovacuum_vacuum_threshold=1000']));
    expect(options.usages).toEqual(expect.arrayContaining(['autovacuum_vacuum_scale_factor=0.02']));
  });

  it('runs in one worker at a time: another holding the lock makes it skip', async () => {
    const other = await db.pool.connect();
    try {
      await other.query('SELECT pg_advisory_lock(5, 0)');
      expect(await maintain(deps())).toBeNull();
      await other.query('SELECT pg_advisory_unlock(5, 0)');
      expect(await maintain(deps())).toEqual({ vacuumed: [], usagesRemoved: 0, eventsRemoved: 0, deliveriesRemoved: 0, activityRemoved: 0 });
    } finally {
      other.release();
    }
  });

  it('vacuums a hot table once its dead rows pass the threshold, and not before', async () => {
    // An open snapshot keeps the dead row versions from being pruned away as they are made.
    const reader = await db.pool.connect();
    try {
      await reader.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
      await reader.query('SELECT count(*) FROM tokens');
      for (let i = 0; i < 30; i += 1) await db.pool.query('UPDATE tokens SET created_at = created_at');
      await waitFor(async () => (await deadIn('tokens')) >= 200, { what: 'the dead rows to be counted' });
    } finally {
      await reader.query('COMMIT');
      reader.release();
    }

    expect((await maintain(deps({ vacuumDeadRows: 1_000_000 })))?.vacuumed).toEqual([]);
    const report = await maintain(deps({ vacuumDeadRows: 100 }));

    expect(report?.vacuumed).toContainEqual({ table: 'tokens', dead: expect.any(Number) });
    const { rows } = await db.pool.query<{ n: number }>(
      `SELECT vacuum_count::int AS n FROM pg_stat_user_tables WHERE relname = 'tokens'`,
    );
    expect(rows[0]?.n).toBeGreaterThan(0);
    await waitFor(async () => (await deadIn('tokens')) < 200, { what: 'the vacuum to be counted' });
  });

  it('removes ended usages older than the retention, in batches, and never an open lease', async () => {
    const { rows: tokens } = await db.pool.query<{ id: string }>('SELECT id FROM tokens ORDER BY position LIMIT 3');
    const usage = (token: number, fence: number, startedDaysAgo: number, endedDaysAgo: number | null) =>
      endedDaysAgo === null
        ? db.pool.query(
            `INSERT INTO leases (id, pool_id, token_id, user_id, fence, started_at, expires_at)
             SELECT uuid_v7(s), 1, $1, $2, $3, s, s + interval '1 hour'
             FROM (SELECT now() - $4 * interval '1 day' AS s) t`,
            [tokens[token]?.id, newUserId(), fence, startedDaysAgo],
          )
        : db.pool.query(
            `INSERT INTO usages (id, pool_id, token_id, user_id, fence, started_at, expires_at, ended_at, end_reason)
             SELECT uuid_v7(s), 1, $1, $2, $3, s, s + interval '1 hour', e, 'released'
             FROM (SELECT now() - $4 * interval '1 day' AS s,
                          now() - $5 * interval '1 day' AS e) t`,
            [tokens[token]?.id, newUserId(), fence, startedDaysAgo, endedDaysAgo],
          );
    for (let fence = 1; fence <= 5; fence += 1) await usage(0, fence, 100 - fence, 100 - fence - 0.5); // old, ended
    await usage(1, 1, 95, null); // old, still open
    await usage(2, 1, 31, 29); // started before the limit, ended after it
    await usage(2, 2, 10, 9); // recent

    const report = await maintain(deps({ historyRetentionDays: 30, retentionBatch: 2 }));

    expect(report?.usagesRemoved).toBe(5);
    const { rows } = await db.pool.query<{ token_id: string; fence: string; ended: boolean }>(
      'SELECT token_id, fence, ended_at IS NOT NULL AS ended FROM all_usages ORDER BY token_id, fence',
    );
    expect(rows.map((r) => [tokens.findIndex((t) => t.id === r.token_id), Number(r.fence), r.ended])).toEqual(
      expect.arrayContaining([
        [1, 1, false],
        [2, 1, true],
        [2, 2, true],
      ]),
    );
    expect(rows).toHaveLength(3);
    expect((await maintain(deps({ historyRetentionDays: 30 })))?.usagesRemoved).toBe(0);
  });

  it('removes events older than the retention from the low end of the log, in batches, and records how far', async () => {
    await db.pool.query('DELETE FROM events');
    const { rows: tokens } = await db.pool.query<{ id: string }>('SELECT id FROM tokens ORDER BY position LIMIT 1');
    const event = (daysAgo: number) =>
      db.pool.query<{ id: string }>(
        `INSERT INTO events (type, at, pool_id, token_id) VALUES ('token.retired', now() - $1 * interval '1 day', 1, $2) RETURNING id`,
        [daysAgo, tokens[0]?.id],
      );
    const ids: number[] = [];
    for (const daysAgo of [40, 39, 38, 31, 10, 5]) ids.push(Number((await event(daysAgo)).rows[0]?.id));

    const report = await maintain(deps({ historyRetentionDays: 30, retentionBatch: 3 }));

    expect(report?.eventsRemoved).toBe(4);
    const { rows } = await db.pool.query<{ id: string }>('SELECT id FROM events ORDER BY id');
    expect(rows.map((r) => Number(r.id))).toEqual(ids.slice(4));
    const { rows: retention } = await db.pool.query<{ through: string }>('SELECT removed_through AS through FROM events_retention');
    expect(Number(retention[0]?.through)).toBe(ids[3]);
    expect((await maintain(deps({ historyRetentionDays: 30 })))?.eventsRemoved).toBe(0);
  });

  it('removes per-minute activity counts older than the retention, in batches', async () => {
    await db.pool.query('DELETE FROM pool_activity');
    const minutesAgo = [60 * 24 * 40, 60 * 24 * 35, 60 * 24 * 31, 60 * 24 * 29, 5];
    for (const ago of minutesAgo) {
      await db.pool.query(
        `INSERT INTO pool_activity (pool_id, minute, refusals, waits) VALUES (1, date_trunc('minute', now() - $1 * interval '1 minute'), 1, 0)`,
        [ago],
      );
    }

    const report = await maintain(deps({ historyRetentionDays: 30, retentionBatch: 2 }));

    expect(report?.activityRemoved).toBe(3);
    const { rows } = await db.pool.query<{ days: number }>(
      'SELECT round(extract(epoch FROM now() - minute) / 86400)::int AS days FROM pool_activity ORDER BY minute',
    );
    expect(rows.map((r) => r.days)).toEqual([29, 0]);
    expect((await maintain(deps({ historyRetentionDays: 30 })))?.activityRemoved).toBe(0);
    expect((await maintain(deps({ historyRetentionDays: 0 })))?.activityRemoved).toBe(0);
  });
});
