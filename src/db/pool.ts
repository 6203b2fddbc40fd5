import pg from 'pg';
import type { Logger } from '../logger.js';
import { fromPgError, isRetryable } from './errors.js';

export type Pool = pg.Pool;
export type PoolClient = pg.PoolClient;
/** Anything a query can run on: the pool (one statement, autocommit) or a transaction's client. */
export type Queryable = Pick<pg.Pool, 'query'> | Pick<pg.PoolClient, 'query'>;

export interface PoolOptions {
  readonly connectionString: string;
  readonly max: number;
  readonly statementTimeoutMs: number;
  readonly connectTimeoutMs: number;
  /** How long a connection may sit idle before it is closed; 0 keeps it open. */
  readonly idleTimeoutMs: number;
  readonly applicationName: string;
}

export function createPool(options: PoolOptions, log: Logger): Pool {
  const pool = new pg.Pool({
    connectionString: options.connectionString,
    max: options.max,
    application_name: options.applicationName,
    connectionTimeoutMillis: options.connectTimeoutMs,
    // The server cancels a statement that runs too long; the client gives up a little later on a
    // connection that stopped answering at all (a network partition), so no request hangs unbounded.
    statement_timeout: options.statementTimeoutMs,
    query_timeout: options.statementTimeoutMs + 1_000,
    keepAlive: true,
    // A new connection is a new server process, which prepares the hot statements and compiles
    // the lease functions again: connections stay open through quiet spells (docs/configuration.md).
    idleTimeoutMillis: options.idleTimeoutMs,
  });
  // Without this listener an idle connection dropped by the server crashes the process.
  pool.on('error', (err) => {
    log.warn({ err }, 'idle database connection failed');
  });
  return pool;
}

/**
 * Runs one statement. Named statements are prepared once per connection, which saves the
 * parse and plan of the hot queries. Errors leave as the service's own (see errors.ts).
 * A statement run on the pool is its own transaction: when PostgreSQL chose it as the victim of
 * a deadlock (or a serialization failure), nothing of it was kept, so it runs again, up to
 * three times, as withTransaction does.
 */
export async function query<R extends pg.QueryResultRow>(
  db: Queryable,
  name: string,
  text: string,
  values: unknown[] = [],
): Promise<R[]> {
  for (let attempt = 1; ; attempt += 1) {
    try {
      const result = await db.query<R>({ name, text, values });
      return result.rows;
    } catch (error) {
      if (db instanceof pg.Pool && attempt < 3 && isRetryable(error)) continue;
      throw fromPgError(error);
    }
  }
}
