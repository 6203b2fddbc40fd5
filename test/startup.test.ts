import pg from 'pg';
import { inject, afterAll, describe, expect, it } from 'vitest';
import { dropDatabase, testDatabasePrefix, uniqueName, withDatabase } from './harness/databases.js';
import { lockWaits, newUserId, spawnService } from './helpers.js';
import { waitFor } from './harness/waitFor.js';
import type { ServiceProcess } from './harness/processes.js';

// Start-up and shutdown of the real process: a missing database is created, migrations run once
// even when processes race, the pool is topped up and never shrinks, SIGTERM exits 0.

const databases: string[] = [];
const running: ServiceProcess[] = [];

function freshDatabaseName(): string {
  const name = `${testDatabasePrefix(inject('runId'))}${uniqueName()}`;
  databases.push(name);
  return name;
}

function start(env: Record<string, string>): ServiceProcess {
  const proc = spawnService({ ROLE: 'api', ...env });
  running.push(proc);
  return proc;
}

async function countTokens(name: string): Promise<number> {
  const client = new pg.Client({ connectionString: withDatabase(name) });
  await client.connect();
  try {
    const { rows } = await client.query<{ n: number }>('SELECT count(*)::int AS n FROM tokens');
    return rows[0]?.n ?? -1;
  } finally {
    await client.end();
  }
}

afterAll(async () => {
  for (const proc of running) proc.kill('SIGKILL');
  await Promise.all(running.map((p) => p.exited()));
  for (const name of databases) await dropDatabase(name);
});

describe('start-up', () => {
  it('creates a missing database, migrates it, seeds the pool and serves it', async () => {
    const name = freshDatabaseName();
    const proc = start({ DATABASE_URL: withDatabase(name), POOL_SIZE: '7' });
    const port = await proc.port();

    const res = await fetch(`http://127.0.0.1:${port}/api/tokens`);
    const body = (await res.json()) as { data: unknown[] };
    expect(res.status).toBe(200);
    expect(body.data).toHaveLength(7);

    proc.kill('SIGTERM');
    expect(await proc.exited()).toEqual({ code: 0, signal: null });
  });

  it('lets several processes start at once on a new database', async () => {
    const name = freshDatabaseName();
    const procs = [1, 2, 3].map(() => start({ DATABASE_URL: withDatabase(name), POOL_SIZE: '20' }));
    await Promise.all(procs.map((p) => p.port()));

    expect(await countTokens(name)).toBe(20);
    for (const p of procs) p.kill('SIGTERM');
    for (const p of procs) expect((await p.exited()).code).toBe(0);
  });

  it('tops the pool up to a larger POOL_SIZE and never deletes tokens', async () => {
    const name = freshDatabaseName();
    for (const [size, expected] of [
      ['5', 5],
      ['8', 8],
      ['3', 8],
    ] as const) {
      const proc = start({ DATABASE_URL: withDatabase(name), POOL_SIZE: size });
      await proc.port();
      expect(await countTokens(name)).toBe(expected);
      proc.kill('SIGTERM');
      expect((await proc.exited()).code).toBe(0);
    }
  });

  it('refuses to start with a bad variable and names it', async () => {
    const proc = start({ POOL_SIZE: 'lots', LEASE_TTL_MS: '-1' });
    const { code } = await proc.exited();
    expect(code).toBe(1);
    expect(proc.stderr()).toContain('POOL_SIZE');
    expect(proc.stderr()).toContain('LEASE_TTL_MS');
  });

  it('refuses to start in production without an admin key', async () => {
    const proc = start({ NODE_ENV: 'production' });
    const { code } = await proc.exited();
    expect(code).toBe(1);
    expect(proc.stderr()).toContain('ADMIN_API_KEY');
  });

  it('warns loudly at start when admin routes are open', async () => {
    const name = freshDatabaseName();
    const proc = start({ DATABASE_URL: withDatabase(name), POOL_SIZE: '1' });
    await proc.port();
    const warning = proc.logs.find((l) => String(l.msg).includes('ADMIN_API_KEY is not set'));
    expect(warning?.level).toBe('warn');
    proc.kill('SIGTERM');
    await proc.exited();
  });
});

describe('shutdown', () => {
  it('finishes an in-flight request on SIGTERM, then exits 0', async () => {
    const name = freshDatabaseName();
    const proc = start({ DATABASE_URL: withDatabase(name), POOL_SIZE: '2' });
    const held = await holdActivation(name, await proc.port());

    proc.kill('SIGTERM');
    await proc.logged('shutting down');
    await held.letGo();

    const res = await held.answer;
    expect(res?.status).toBe(201);
    expect(await proc.exited()).toEqual({ code: 0, signal: null });
  });

  it('ends at once, with status 1, on a second signal', async () => {
    const name = freshDatabaseName();
    const proc = start({ DATABASE_URL: withDatabase(name), POOL_SIZE: '2', SHUTDOWN_TIMEOUT_MS: '60000' });
    const held = await holdActivation(name, await proc.port());
    try {
      proc.kill('SIGTERM');
      await proc.logged('shutting down');
      proc.kill('SIGTERM');
      expect(await proc.exited()).toEqual({ code: 1, signal: null });
    } finally {
      await held.letGo();
    }
  });
});

/**
 * Sends an activation and holds it in flight: its per-user lock is taken from outside first, so
 * the request waits on it in the database until letGo().
 */
async function holdActivation(database: string, port: number) {
  const userId = newUserId();
  const blocker = new pg.Client({ connectionString: withDatabase(database) });
  await blocker.connect();
  await blocker.query('BEGIN');
  await blocker.query("SELECT pg_advisory_xact_lock(1, hashtext('1/' || $1))", [userId]);
  const answer = fetch(`http://127.0.0.1:${port}/api/tokens/activate`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ user_id: userId }),
  }).catch(() => undefined);
  await waitFor(async () => (await lockWaits(blocker)) > 0, {
    timeoutMs: 10_000,
    what: 'the request to wait on the lock',
  });
  return {
    answer,
    async letGo() {
      await blocker.query('COMMIT').catch(() => undefined);
      await blocker.end();
    },
  };
}
