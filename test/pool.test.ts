import { afterAll, describe, expect, it } from 'vitest';
import { createPool, type Pool } from '../src/db/pool.js';
import { createLogger } from '../src/logger.js';
import { loadConfig } from '../src/config.js';
import { createTestDatabase, type TestDatabase } from './helpers.js';
import { waitFor } from './harness/waitFor.js';

// The service's PostgreSQL pool keeps its connections through a quiet spell: a new connection is
// a new server process, which prepares the hot statements and compiles the lease functions again.

describe('the database pool', () => {
  const pools: Pool[] = [];
  let db: TestDatabase | undefined;
  afterAll(async () => {
    await Promise.all(pools.map((p) => p.end()));
    await db?.drop();
  });

  const poolFor = (url: string, idleTimeoutMs: number) => {
    const pool = createPool(
      { connectionString: url, max: 2, statementTimeoutMs: 5_000, connectTimeoutMs: 5_000, idleTimeoutMs, applicationName: 'pool-test' },
      createLogger({ level: 'silent' }),
    );
    pools.push(pool);
    return pool;
  };

  it('keeps idle connections for DATABASE_IDLE_TIMEOUT_MS (10 minutes by default), then closes them', async () => {
    db = await createTestDatabase();
    const defaults = loadConfig({});
    expect(defaults.databaseIdleTimeoutMs).toBe(600_000);
    const kept = poolFor(db.url, defaults.databaseIdleTimeoutMs);
    const short = poolFor(db.url, 200);
    await Promise.all([kept.query('SELECT 1'), short.query('SELECT 1')]);
    expect([kept.idleCount, short.idleCount]).toEqual([1, 1]);
    // pg-pool's own default closed them after 10 s; the short one shows that the setting is used.
    await waitFor(() => short.totalCount === 0, { what: "the short pool's connection closed" });
    expect(kept.idleCount).toBe(1);
  });
});
