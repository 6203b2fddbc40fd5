import type { TestProject } from 'vitest/node';
import { createMigratedDatabase, dropDatabases, dropStaleRuns, testDatabasePrefix } from './harness/databases.js';
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
  await dropStaleRuns();
  await createMigratedDatabase(template);
  project.provide('templateDatabase', template);
  project.provide('runId', runId);

  return async () => {
    await dropDatabases(testDatabasePrefix(runId));
    await deleteRedisKeys(testRedisUrl, `${runRedisPrefix(runId)}-*`);
  };
}
