import { randomUUID } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { createTestDatabase, spawnService, type TestDatabase } from './helpers.js';
import { waitFor } from './harness/waitFor.js';
import type { ServiceProcess } from './harness/processes.js';

// API_PROCESSES: one supervisor, that many copies of the service behind one port.

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe('API_PROCESSES=2', () => {
  let db: TestDatabase | undefined;
  let svc: ServiceProcess | undefined;

  afterEach(async () => {
    svc?.kill('SIGKILL');
    await svc?.exited();
    await db?.drop();
  });

  async function start(): Promise<{ port: number; copies: number[] }> {
    db = await createTestDatabase();
    svc = spawnService({ DATABASE_URL: db.url, API_PROCESSES: '2', POOL_SIZE: '20', LEASE_TTL_MS: '60000' });
    const port = await svc.port();
    const listening = () => svc?.logs.filter((line) => line.msg === 'listening') ?? [];
    await waitFor(() => listening().length === 2, { timeoutMs: 20_000, what: 'both copies to listen' });
    return { port, copies: listening().map((line) => Number(line.pid)) };
  }

  it('serves from two processes on one port, each with its own database connections', async () => {
    const { port, copies } = await start();

    expect(new Set(copies).size).toBe(2);
    expect(copies).not.toContain(svc?.child.pid);
    const answers = await Promise.all(
      Array.from({ length: 20 }, () =>
        fetch(`http://127.0.0.1:${port}/api/tokens/activate`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ user_id: randomUUID() }),
        }),
      ),
    );
    expect(answers.map((res) => res.status)).toEqual(Array.from({ length: 20 }, () => 201));
    // Each copy keeps its own LISTEN connection: two of them.
    const listeners = async () =>
      (
        await db!.pool.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM pg_stat_activity
           WHERE datname = current_database() AND application_name = 'token-lease-listener'`,
        )
      ).rows[0]?.n;
    await waitFor(async () => (await listeners()) === 2, { what: 'a LISTEN connection per copy' });
  });

  it('stops every copy on SIGTERM and exits 0 once all have', async () => {
    const { copies } = await start();

    svc?.kill('SIGTERM');

    expect(await svc?.exited()).toEqual({ code: 0, signal: null });
    expect(copies.filter(alive)).toEqual([]);
  });

  it('takes the other copy down, and exits 1, when one copy dies', async () => {
    const { copies } = await start();

    process.kill(copies[0]!, 'SIGKILL');

    expect(await svc?.exited()).toEqual({ code: 1, signal: null });
    await waitFor(() => copies.filter(alive).length === 0, { what: 'the other copy to stop' });
  });
});
