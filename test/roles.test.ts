import { Queue } from 'bullmq';
import pg from 'pg';
import { afterAll, afterEach, describe, expect, inject, it } from 'vitest';
import { RELEASE_QUEUE } from '../src/jobs/queue.js';
import { dropDatabase, testDatabasePrefix, uniqueName, withDatabase } from './harness/databases.js';
import { newUserId, spawnService } from './helpers.js';
import { waitFor } from './harness/waitFor.js';
import type { ServiceProcess } from './harness/processes.js';
import { testRedisPrefix, testRedisUrl } from './redis.js';

// ROLE=api and ROLE=worker as separate OS processes on one database and one Redis: the split
// deployment, a worker killed with SIGKILL, and a worker stopped with SIGTERM mid-job.

const running: ServiceProcess[] = [];
const databases: string[] = [];
const clients: pg.Client[] = [];

afterEach(async () => {
  for (const proc of running) proc.kill('SIGKILL');
  await Promise.all(running.splice(0).map((p) => p.exited()));
  for (const client of clients.splice(0)) await client.end();
});
afterAll(async () => {
  for (const name of databases) await dropDatabase(name);
});

/** A database name and Redis prefix shared by the processes of one test. */
function deployment(env: Record<string, string>) {
  const name = `${testDatabasePrefix(inject('runId'))}${uniqueName()}`;
  databases.push(name);
  const shared = {
    DATABASE_URL: withDatabase(name),
    REDIS_PREFIX: testRedisPrefix(inject('runId')),
    ...env,
  };
  const db = new pg.Client({ connectionString: withDatabase(name) });
  clients.push(db);
  const start = (role: 'api' | 'worker', extra: Record<string, string> = {}) => {
    const proc = spawnService({ ...shared, ROLE: role, ...extra });
    running.push(proc);
    return proc;
  };
  return { shared, db, start };
}

async function activate(port: number): Promise<{ lease_id: string; token_id: string; expires_at: string }> {
  const res = await fetch(`http://127.0.0.1:${port}/api/tokens/activate`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ user_id: newUserId() }),
  });
  if (res.status !== 201) throw new Error(`activation answered ${res.status}`);
  return ((await res.json()) as { data: { lease_id: string; token_id: string; expires_at: string } }).data;
}

async function openCount(db: pg.Client): Promise<number> {
  const { rows } = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM usages WHERE ended_at IS NULL');
  return rows[0]?.n ?? -1;
}

describe('ROLE=api and ROLE=worker as two processes', () => {
  it('the API leases, the worker ends the leases on time, neither does the other’s work', async () => {
    const d = deployment({ LEASE_TTL_MS: '700', SWEEP_INTERVAL_MS: '600000', POOL_SIZE: '10' });
    const api = d.start('api');
    const apiPort = await api.port();
    const worker = d.start('worker');
    const workerPort = await worker.port();
    await d.db.connect();

    const leases = await Promise.all([1, 2, 3, 4, 5].map(() => activate(apiPort)));

    await waitFor(async () => (await openCount(d.db)) === 0, { what: 'every lease to end' });
    const { rows } = await d.db.query<{ late_ms: number; end_reason: string }>(
      `SELECT (extract(epoch FROM ended_at - expires_at) * 1000)::float8 AS late_ms, end_reason
       FROM usages WHERE id = ANY($1)`,
      [leases.map((l) => l.lease_id)],
    );
    for (const row of rows) {
      expect(row.end_reason).toBe('expired');
      expect(row.late_ms).toBeLessThan(1_000);
    }
    // The worker serves health and metrics, not the token API; the API runs no sweep.
    expect((await fetch(`http://127.0.0.1:${workerPort}/api/tokens`)).status).toBe(404);
    expect((await fetch(`http://127.0.0.1:${workerPort}/readyz`)).status).toBe(200);
    expect(api.logs.some((l) => String(l.msg).startsWith('sweep'))).toBe(false);
    const metrics = await (await fetch(`http://127.0.0.1:${workerPort}/metrics`)).text();
    expect(metrics).toMatch(/token_lease_leases_ended_total\{reason="expired",by="job"\} 5/);
  });
});

describe('worker crashes', () => {
  it('a worker killed with SIGKILL loses nothing: a new worker ends every lease', async () => {
    const d = deployment({ LEASE_TTL_MS: '1000', SWEEP_INTERVAL_MS: '600000', POOL_SIZE: '30' });
    const api = d.start('api');
    const apiPort = await api.port();
    const first = d.start('worker');
    await first.port();
    await d.db.connect();

    // Leases keep expiring while the worker dies mid-run.
    const leases = [];
    for (let i = 0; i < 20; i += 1) {
      leases.push(await activate(apiPort));
      if (i === 10) first.kill('SIGKILL');
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    await first.exited();
    const lastExpiry = Math.max(...leases.map((l) => Date.parse(l.expires_at)));
    await waitFor(() => Date.now() > lastExpiry, { what: 'every lease to expire' });

    // Expired leases are free already (lazy expiry), even though no worker ended them.
    const list = (await (await fetch(`http://127.0.0.1:${apiPort}/api/tokens`)).json()) as {
      data: Array<{ status: string }>;
    };
    expect(list.data.every((t) => t.status === 'available')).toBe(true);

    const second = d.start('worker');
    await second.port();
    await waitFor(async () => (await openCount(d.db)) === 0, { timeoutMs: 10_000, what: 'every lease to end' });

    // The jobs that fell due while no worker ran have been processed too.
    const queue = new Queue(RELEASE_QUEUE, { connection: { url: testRedisUrl }, prefix: d.shared.REDIS_PREFIX });
    try {
      await waitFor(async () => {
        const counts = await queue.getJobCounts('delayed', 'wait', 'active', 'prioritized');
        return Object.values(counts).every((n) => n === 0);
      }, { timeoutMs: 40_000, what: 'the queue to drain' });
    } finally {
      await queue.close();
    }
  }, 60_000);

  it('SIGTERM lets the running job finish, then exits 0 within 10 s', async () => {
    const d = deployment({ LEASE_TTL_MS: '800', SWEEP_INTERVAL_MS: '600000', POOL_SIZE: '2' });
    const api = d.start('api');
    const apiPort = await api.port();
    await d.db.connect();
    const lease = await activate(apiPort);

    // Hold the token row, so the release job blocks inside its statement when it runs.
    await d.db.query('BEGIN');
    await d.db.query('SELECT 1 FROM tokens WHERE id = $1 FOR UPDATE', [lease.token_id]);
    const worker = d.start('worker', { LOG_LEVEL: 'debug' });
    await worker.port();
    const observer = new pg.Client({ connectionString: d.shared.DATABASE_URL });
    clients.push(observer);
    await observer.connect();
    await waitFor(
      async () => {
        const { rows } = await observer.query(
          "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND application_name = 'token-lease-worker'",
        );
        return rows.length > 0;
      },
      { timeoutMs: 10_000, what: 'the job to block on the token row' },
    );

    const stopping = Date.now();
    worker.kill('SIGTERM');
    await worker.logged('shutting down');
    await new Promise((resolve) => setTimeout(resolve, 300));
    await d.db.query('COMMIT');

    expect(await worker.exited()).toEqual({ code: 0, signal: null });
    expect(Date.now() - stopping).toBeLessThan(10_000);
    const { rows } = await d.db.query<{ end_reason: string | null }>(
      'SELECT end_reason FROM usages WHERE id = $1',
      [lease.lease_id],
    );
    expect(rows[0]?.end_reason).toBe('expired');
    expect(worker.logs.some((l) => l.msg === 'lease expired' && l.leaseId === lease.lease_id)).toBe(true);
  });
});
