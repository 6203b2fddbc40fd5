import { randomUUID } from 'node:crypto';
import pg from 'pg';
import supertest from 'supertest';
import { inject } from 'vitest';
import { loadConfig } from '../src/config.js';
import type { UsageRow } from '../src/db/queries.js';
import { createLogger, type Logger } from '../src/logger.js';
import { startService, type Service } from '../src/main/service.js';
import { cloneTemplate, dropDatabase, testDatabasePrefix, uniqueName } from './harness/databases.js';
import { spawnServiceProcess, type ServiceProcess } from './harness/processes.js';
import { deleteRedisKeys, testRedisPrefix, testRedisUrl } from './redis.js';

// Test helpers: a database per test file cloned from the run's migrated template, the service
// started in-process on port 0 or as a separate process (test/harness/processes.ts).

const open = new Set<string>();

/** What a test file left open; test/setup.ts fails the file if it is not empty. */
export const openResources = () => [...open];

export function testLogger(): Logger {
  return createLogger({ level: process.env.TEST_LOG_LEVEL ?? 'silent' });
}

export interface TestDatabase {
  readonly name: string;
  readonly url: string;
  /** For reading state back and arranging it (backdating); not used by the service. */
  readonly pool: pg.Pool;
  drop(): Promise<void>;
}

export async function createTestDatabase(): Promise<TestDatabase> {
  const name = `${testDatabasePrefix(inject('runId'))}${uniqueName()}`;
  const url = await cloneTemplate(inject('templateDatabase'), name);
  const pool = new pg.Pool({ connectionString: url, max: 4 });
  // pool.end() resolves before its connections have closed, so the DROP ... WITH (FORCE) that
  // follows can terminate one (57P01); the pool re-emits that as an error, which without a
  // listener fails the whole test file. Nothing uses the pool by then.
  pool.on('error', () => undefined);
  const label = `database ${name}`;
  open.add(label);
  return {
    name,
    url,
    pool,
    async drop() {
      await pool.end();
      await dropDatabase(name);
      open.delete(label);
    },
  };
}

export interface TestService {
  readonly db: TestDatabase;
  readonly service: Service;
  readonly url: string;
  readonly http: ReturnType<typeof supertest>;
  readonly redisPrefix: string;
  /** Stops the service and drops its database. */
  close(): Promise<void>;
}

/** Starts the service in this process, on port 0, against a fresh database. */
export async function startTestService(
  env: Record<string, string> = {},
  options: { db?: TestDatabase; log?: Logger } = {},
): Promise<TestService> {
  const db = options.db ?? (await createTestDatabase());
  const redisPrefix = testRedisPrefix(inject('runId'));
  const config = loadConfig({
    DATABASE_URL: db.url,
    REDIS_URL: testRedisUrl,
    REDIS_PREFIX: redisPrefix,
    HOST: '127.0.0.1',
    PORT: '0',
    LOG_LEVEL: 'silent',
    ROLE: 'api',
    ...env,
  });
  const service = await startService(config, options.log ?? testLogger());
  const url = `http://127.0.0.1:${service.port}`;
  const label = `service on ${url}`;
  open.add(label);
  return {
    db,
    service,
    url,
    http: supertest(url),
    redisPrefix: config.redisPrefix,
    async close() {
      await service.stop('test finished');
      open.delete(label);
      // A test may have stopped its private Redis; the run's teardown sweeps the shared one too.
      await deleteRedisKeys(config.redisUrl, `${config.redisPrefix}:*`).catch(() => undefined);
      if (options.db === undefined) await db.drop();
    },
  };
}

/**
 * The service as a separate OS process (test/harness/processes.ts) on the run's Redis, under a
 * prefix of its own, picking its own port.
 */
export function spawnService(env: Record<string, string>): ServiceProcess {
  return spawnServiceProcess({
    env: { REDIS_URL: testRedisUrl, REDIS_PREFIX: testRedisPrefix(inject('runId')), ...env },
  });
}

/**
 * Moves leases back in time by `ms` instead of sleeping their TTL out: every comparison the
 * service makes is between now() and stored times, so this is the same as the clock moving on.
 */
export async function backdate(db: TestDatabase, ms: number, leaseId?: string): Promise<void> {
  // The whole history of each token moves, earliest first, so that no two of its usages ever
  // overlap on the way (usages_no_overlap is checked row by row); its open lease, and the
  // token's copy of it, move with it.
  const client = await db.pool.connect();
  try {
    await client.query('BEGIN');
    const { rows } = await client.query<{ id: string }>(
      `SELECT u.id FROM usages u
       WHERE $1::uuid IS NULL OR u.token_id = (SELECT token_id FROM all_usages WHERE id = $1::uuid)
       ORDER BY u.started_at, u.fence`,
      [leaseId ?? null],
    );
    for (const row of rows) {
      await client.query(
        `UPDATE usages SET started_at = started_at - $1 * interval '1 millisecond',
                           expires_at = expires_at - $1 * interval '1 millisecond',
                           ended_at = ended_at - $1 * interval '1 millisecond'
         WHERE id = $2`,
        [ms, row.id],
      );
    }
    const { rows: moved } = await client.query<{ id: string }>(
      `UPDATE leases SET started_at = started_at - $1 * interval '1 millisecond',
                         expires_at = expires_at - $1 * interval '1 millisecond'
       WHERE $2::uuid IS NULL OR token_id = (SELECT token_id FROM all_usages WHERE id = $2::uuid)
       RETURNING id`,
      [ms, leaseId ?? null],
    );
    await client.query(
      `UPDATE tokens t SET started_at = l.started_at, expires_at = l.expires_at
       FROM leases l WHERE l.id = t.lease_id AND l.id = ANY($1::uuid[])`,
      [moved.map((row) => row.id)],
    );
    await client.query('COMMIT');
  } catch (error) {
    await client.query('ROLLBACK');
    throw error;
  } finally {
    client.release();
  }
}

/** A lease as the database holds it, open (in leases) or ended (in usages). */
export type UsageRecord = UsageRow;

/** Every lease, open or ended (the all_usages view), that matches `where`. */
export async function usagesOf(db: TestDatabase, where = 'true', values: unknown[] = []): Promise<UsageRecord[]> {
  const { rows } = await db.pool.query<UsageRecord>(
    `SELECT * FROM all_usages WHERE ${where} ORDER BY started_at, fence`,
    values,
  );
  return rows;
}

export async function openUsages(db: TestDatabase): Promise<UsageRecord[]> {
  return usagesOf(db, 'ended_at IS NULL');
}

/**
 * How many statements on the database `db` is connected to wait for a lock (requests held up on
 * purpose).
 */
export async function lockWaits(db: Pick<pg.Pool, 'query'> | Pick<pg.Client, 'query'>): Promise<number> {
  const { rows } = await db.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM pg_stat_activity
     WHERE datname = current_database() AND wait_event_type = 'Lock'`,
  );
  return rows[0]?.n ?? 0;
}

/** A fresh, valid user id. */
export const newUserId = (): string => randomUUID();

/** Empties the pool: every token free with no history, as after seeding. */
export async function resetPool(db: TestDatabase): Promise<void> {
  await db.pool.query(
    'UPDATE tokens SET lease_id = NULL, user_id = NULL, started_at = NULL, expires_at = NULL, last_fence = 0',
  );
  await db.pool.query('DELETE FROM leases');
  await db.pool.query('DELETE FROM usages');
}
