import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { runner } from 'node-pg-migrate';
import type { Logger } from '../logger.js';
import { sqlState } from './errors.js';

/** migrations/ at the repository root, from src/db (tsx, tests) and from dist/db (npm start). */
export const migrationsDir = fileURLToPath(new URL('../../migrations', import.meta.url));

/**
 * Creates the database named in the URL if it does not exist yet, through the server's
 * `postgres` maintenance database. Safe when several processes start at once.
 */
export async function ensureDatabase(databaseUrl: string, log: Logger): Promise<void> {
  const target = new URL(databaseUrl);
  const name = decodeURIComponent(target.pathname.slice(1));
  if (name === '') throw new Error('DATABASE_URL names no database');

  const probe = new pg.Client({ connectionString: databaseUrl });
  try {
    await probe.connect();
    return;
  } catch (error) {
    if (sqlState(error) !== '3D000') throw error; // anything but "database does not exist"
  } finally {
    await probe.end().catch(() => undefined);
  }

  const maintenance = new URL(databaseUrl);
  maintenance.pathname = '/postgres';
  const admin = new pg.Client({ connectionString: maintenance.toString() });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${pg.escapeIdentifier(name)}`);
    log.info({ database: name }, 'database created');
  } catch (error) {
    // 42P04: created meanwhile by another process; 23505: the same race seen in pg_database.
    const code = sqlState(error);
    if (code !== '42P04' && code !== '23505') throw error;
  } finally {
    await admin.end();
  }
}

/**
 * Applies every pending migration in migrations/. node-pg-migrate holds an advisory lock while it
 * runs; with `wait`, a second process starting at the same time waits for the first to finish.
 */
export async function migrate(databaseUrl: string, log: Logger): Promise<void> {
  const applied = await runner({
    databaseUrl,
    dir: migrationsDir,
    direction: 'up',
    migrationsTable: 'pgmigrations',
    checkOrder: true,
    advisoryLockMode: 'wait',
    logger: {
      debug: (msg: string) => log.debug(msg),
      info: (msg: string) => log.debug(msg),
      warn: (msg: string) => log.warn(msg),
      error: (msg: string) => log.error(msg),
    },
  });
  if (applied.length > 0) {
    log.info({ migrations: applied.map((m) => m.name) }, 'migrations applied');
  }
}
