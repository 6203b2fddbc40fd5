import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { functionsDir, migrate, migrationsDir, UnknownSchemaError } from '../src/db/migrate.js';
import { createTestDatabase, newUserId, testLogger, type TestDatabase } from './helpers.js';

const git = (...args: string[]) => execFileSync('git', args, { cwd: migrationsDir, encoding: 'utf8' });
const sqlFiles = (dir: string) => readdirSync(dir).filter((f) => f.endsWith('.sql')).sort();

describe('the schema a newcomer reads', () => {
  it('never changes a committed migration: each file is as the commit that added it', () => {
    for (const file of sqlFiles(migrationsDir)) {
      const relative = path.relative(git('rev-parse', '--show-toplevel').trim(), path.join(migrationsDir, file));
      const added = git('log', '--diff-filter=A', '--format=%H', '--', relative).trim().split('\n').at(-1);
      if (added === undefined || added === '') continue; // not committed yet: nothing to compare with
      expect(readFileSync(path.join(migrationsDir, file), 'utf8'), `${file} was edited after ${added}`).toBe(
        git('show', `${added}:${relative}`),
      );
    }
  });

  it('defines each SQL function once, in sql/<name>.sql, and nowhere in the migrations', () => {
    const defined = (text: string) => [...text.matchAll(/CREATE (?:OR REPLACE )?FUNCTION\s+([a-z_0-9]+)/gi)].map((m) => m[1]);
    for (const file of sqlFiles(functionsDir)) {
      expect(defined(readFileSync(path.join(functionsDir, file), 'utf8')), file).toEqual([file.replace(/\.sql$/, '')]);
    }
    for (const file of sqlFiles(migrationsDir)) {
      expect(defined(readFileSync(path.join(migrationsDir, file), 'utf8')), file).toEqual([]);
    }
  });
});

describe('the schema in the database', () => {
  let db: TestDatabase;

  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    await db.drop();
  });

  it('holds every function in sql/', async () => {
    const { rows } = await db.pool.query<{ proname: string }>(
      `SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace`,
    );
    const present = new Set(rows.map((r) => r.proname));
    for (const file of sqlFiles(functionsDir)) expect(present, file).toContain(file.replace(/\.sql$/, ''));
  });

  it('refuses two usages of one token that overlap in time', async () => {
    const { rows } = await db.pool.query<{ id: string }>('INSERT INTO tokens (pool_id) VALUES (1) RETURNING id');
    const tokenId = rows[0]?.id;
    await db.pool.query(
      `INSERT INTO usages (id, pool_id, token_id, user_id, fence, started_at, expires_at, ended_at, end_reason)
       VALUES (gen_random_uuid(), 1, $1, $2, 1001, now() - interval '10 minutes', now(), now() - interval '5 minutes', 'released')`,
      [tokenId, newUserId()],
    );
    const overlapping = db.pool.query(
      `INSERT INTO usages (id, pool_id, token_id, user_id, fence, started_at, expires_at, ended_at, end_reason)
       VALUES (gen_random_uuid(), 1, $1, $2, 1002, now() - interval '6 minutes', now(), now() - interval '1 minute', 'released')`,
      [tokenId, newUserId()],
    );
    await expect(overlapping).rejects.toMatchObject({ code: '23P01', constraint: 'usages_no_overlap' });
    // Back to back is not an overlap.
    await db.pool.query(
      `INSERT INTO usages (id, pool_id, token_id, user_id, fence, started_at, expires_at, ended_at, end_reason)
       VALUES (gen_random_uuid(), 1, $1, $2, 1003, now() - interval '5 minutes', now(), now() - interval '4 minutes', 'released')`,
      [tokenId, newUserId()],
    );
  });

  it('migrates an up-to-date database again without change', async () => {
    await migrate(db.url, testLogger());
    const { rows } = await db.pool.query<{ name: string }>('SELECT name FROM pgmigrations ORDER BY id');
    expect(rows.map((r) => r.name)).toEqual(sqlFiles(migrationsDir).map((f) => f.replace(/\.sql$/, '')));
  });

  it('refuses, with a message that says to recreate it, a database made by an earlier version', async () => {
    const old = await createTestDatabase();
    try {
      await old.pool.query(`INSERT INTO pgmigrations (name, run_on) VALUES ('0002_lifecycle_and_waiters', now())`);
      const refused = migrate(old.url, testLogger());
      await expect(refused).rejects.toBeInstanceOf(UnknownSchemaError);
      await expect(refused).rejects.toThrow(/recreate the database/);
    } finally {
      await old.drop();
    }
  });
});
