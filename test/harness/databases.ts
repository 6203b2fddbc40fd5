import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { migrate } from '../../src/db/migrate.js';
import { createLogger } from '../../src/logger.js';

// Every database the tests, the stress run and the bench make: on the server TEST_DATABASE_URL
// names (any database on it), or the one a caller passes. Needs nothing from vitest.

const testServerUrl = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

export function withDatabase(name: string, serverUrl = testServerUrl): string {
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

export const adminUrl = (serverUrl = testServerUrl) => withDatabase('postgres', serverUrl);

/** Every database of test run `runId` starts with this; stale ones are dropped by it. */
export const testDatabasePrefix = (runId: string) => `tl_test_${runId}_`;

export function uniqueName(): string {
  return randomBytes(5).toString('hex');
}

async function withAdmin<T>(serverUrl: string, work: (admin: pg.Client) => Promise<T>): Promise<T> {
  const admin = new pg.Client({ connectionString: adminUrl(serverUrl) });
  await admin.connect();
  try {
    return await work(admin);
  } finally {
    await admin.end();
  }
}

/** Clones a migrated template into a new database (a test file's); returns its URL. */
export async function cloneTemplate(template: string, name: string, serverUrl = testServerUrl): Promise<string> {
  return withAdmin(serverUrl, async (admin) => {
    // Two clones of one template at the same instant can collide; a retry settles it.
    for (let attempt = 1; ; attempt += 1) {
      try {
        await admin.query(
          `CREATE DATABASE ${pg.escapeIdentifier(name)} TEMPLATE ${pg.escapeIdentifier(template)}`,
        );
        return withDatabase(name, serverUrl);
      } catch (error) {
        if (attempt >= 10) throw error;
        await new Promise((resolve) => setTimeout(resolve, 100 * attempt));
      }
    }
  });
}

/**
 * Creates a database and migrates it (the run's template, a stress run's, a bench target's), so
 * service processes starting together on it find nothing to do. Returns its URL.
 */
export async function createMigratedDatabase(name: string, serverUrl = testServerUrl): Promise<string> {
  await withAdmin(serverUrl, (admin) => admin.query(`CREATE DATABASE ${pg.escapeIdentifier(name)}`));
  const url = withDatabase(name, serverUrl);
  await migrate(url, createLogger({ level: 'warn' }));
  return url;
}

export async function dropDatabase(name: string, serverUrl = testServerUrl): Promise<void> {
  await withAdmin(serverUrl, (admin) =>
    admin.query(`DROP DATABASE IF EXISTS ${pg.escapeIdentifier(name)} WITH (FORCE)`),
  );
}

export async function dropDatabases(prefix: string, serverUrl = testServerUrl): Promise<void> {
  await withAdmin(serverUrl, async (admin) => {
    const { rows } = await admin.query<{ datname: string }>(
      'SELECT datname FROM pg_database WHERE starts_with(datname, $1)',
      [prefix],
    );
    for (const { datname } of rows) {
      await admin.query(`DROP DATABASE IF EXISTS ${pg.escapeIdentifier(datname)} WITH (FORCE)`);
    }
  });
}

/**
 * Databases of test runs, stress runs and bench runs that were killed before their teardown,
 * once they are a day old: their names start with `tl_test_` and the run's start time in base 36.
 */
export async function dropStaleRuns(serverUrl = testServerUrl): Promise<void> {
  await withAdmin(serverUrl, async (admin) => {
    const { rows } = await admin.query<{ datname: string }>(
      "SELECT datname FROM pg_database WHERE datname LIKE 'tl\\_test\\_%'",
    );
    const dayAgo = Date.now() - 24 * 3600 * 1000;
    for (const { datname } of rows) {
      const stamp = /^tl_test_([0-9a-z]{8})/.exec(datname)?.[1];
      if (stamp !== undefined && parseInt(stamp, 36) < dayAgo) {
        await admin.query(`DROP DATABASE IF EXISTS ${pg.escapeIdentifier(datname)} WITH (FORCE)`);
      }
    }
  });
}
