import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { runner } from 'node-pg-migrate';
import type { Logger } from '../logger.js';
import { sqlState } from './errors.js';

/** migrations/ at the repository root, from src/db (tsx, tests) and from dist/db (npm start). */
export const migrationsDir = fileURLToPath(new URL('../../migrations', import.meta.url));
/** sql/ at the repository root: one file per SQL function, in its current form. */
export const functionsDir = fileURLToPath(new URL('../../sql', import.meta.url));

/** The database holds a schema this version does not know: made by an earlier 0.x, say. */
export class UnknownSchemaError extends Error {
  constructor(readonly unknown: readonly string[]) {
    super(
      `the database was made by another version of token-lease (unknown migrations: ${unknown.join(', ')}); ` +
        'versions before 0.2 cannot be upgraded: recreate the database (drop it, or point DATABASE_URL at a new one)',
    );
    this.name = 'UnknownSchemaError';
  }
}

/** The names of the migrations in migrations/, in order, as node-pg-migrate records them. */
export async function migrationNames(): Promise<string[]> {
  const files = await readdir(migrationsDir);
  return files.filter((f) => f.endsWith('.sql')).sort().map((f) => f.replace(/\.sql$/, ''));
}

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
  await refuseUnknownSchema(databaseUrl);
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
  await applyFunctions(databaseUrl);
}

async function refuseUnknownSchema(databaseUrl: string): Promise<void> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    const { rows } = await client.query<{ name: string }>(
      'SELECT name FROM pgmigrations',
    ).catch((error: unknown) => {
      if (sqlState(error) === '42P01') return { rows: [] }; // no pgmigrations yet: a new database
      throw error;
    });
    const known = new Set(await migrationNames());
    const unknown = rows.map((r) => r.name).filter((name) => !known.has(name));
    if (unknown.length > 0) throw new UnknownSchemaError(unknown);
  } finally {
    await client.end();
  }
}

/**
 * (Re)creates every function in sql/ with CREATE OR REPLACE, after the migrations: each function
 * is defined in one file, in its current form. Advisory lock class 4 keeps two processes starting
 * at once from replacing the same function together (which PostgreSQL refuses).
 */
async function applyFunctions(databaseUrl: string): Promise<void> {
  const files = (await readdir(functionsDir)).filter((f) => f.endsWith('.sql')).sort();
  const texts = await Promise.all(files.map((f) => readFile(path.join(functionsDir, f), 'utf8')));
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    await client.query('BEGIN');
    await client.query('SELECT pg_advisory_xact_lock(4, 0)');
    for (const text of texts) await client.query(text);
    await client.query('COMMIT');
  } catch (error) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw error;
  } finally {
    await client.end();
  }
}
