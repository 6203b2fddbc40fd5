import pg from 'pg';
import type { TestProject } from 'vitest/node';
import { migrate } from '../src/db/migrate.js';
import { createLogger } from '../src/logger.js';
import { adminUrl, dropDatabases, testDatabasePrefix, withDatabase } from './databases.js';
import { deleteRedisKeys, runRedisPrefix, testRedisUrl } from './redis.js';

declare module 'vitest' {
  export interface ProvidedContext {
    /** A migrated database that each test file clones (CREATE DATABASE ... TEMPLATE). */
    templateDatabase: string;
    /** Unique to this run: prefixes every database and Redis key the run creates. */
    runId: string;
  }
}

/** Migrates one template database per run; every test file clones it and drops its clone. */
export default async function setup(project: TestProject) {
  const runId = `${Date.now().toString(36)}${process.pid.toString(36)}`;
  const template = `${testDatabasePrefix(runId)}template`;
  const admin = new pg.Client({ connectionString: adminUrl() });
  await admin.connect();
  try {
    await dropStaleRuns(admin);
    await admin.query(`CREATE DATABASE ${pg.escapeIdentifier(template)}`);
  } finally {
    await admin.end();
  }
  await migrate(withDatabase(template), createLogger({ level: 'warn' }));
  project.provide('templateDatabase', template);
  project.provide('runId', runId);

  return async () => {
    await dropDatabases(testDatabasePrefix(runId));
    await deleteRedisKeys(testRedisUrl, `${runRedisPrefix(runId)}-*`);
  };
}

// Databases of runs that were killed before their teardown, once they are a day old.
async function dropStaleRuns(admin: pg.Client): Promise<void> {
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
}
