import pg from 'pg';
import { afterAll, afterEach, describe, expect, inject, it } from 'vitest';
import { dropDatabase, testDatabasePrefix, uniqueName, withDatabase } from './harness/databases.js';
import { newUserId, spawnService } from './helpers.js';
import { waitFor } from './harness/waitFor.js';
import type { ServiceProcess } from './harness/processes.js';
import { testRedisPrefix } from './redis.js';

// ROLE=api and ROLE=worker as separate OS processes on one database and one Redis: the split
// deployment and a worker stopped with SIGTERM mid-job (a worker killed with SIGKILL is in
// test/crashes.test.ts, under load).

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
  const { rows } = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM all_usages WHERE ended_at IS NULL');
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
       FROM all_usages WHERE id = ANY($1)`,
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

describe('worker shutdown', () => {
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
    const jobBlocked = async () => {
      const { rows } = await observer.query(
        "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND application_name = 'token-lease-worker'",
      );
      return rows.length > 0;
    };
    await waitFor(jobBlocked, { timeoutMs: 10_000, what: 'the job to block on the token row' });

    const stopping = Date.now();
    worker.kill('SIGTERM');
    await worker.logged('shutting down');
    // The stopping worker keeps waiting for its blocked job rather than exiting under it.
    const shuttingDownAt = Date.now();
    await waitFor(async () => Date.now() - shuttingDownAt >= 300 && worker.running() && (await jobBlocked()), {
      what: 'the stopping worker to keep waiting for its blocked job',
    });
    await d.db.query('COMMIT');

    expect(await worker.exited()).toEqual({ code: 0, signal: null });
    expect(Date.now() - stopping).toBeLessThan(10_000);
    const { rows } = await d.db.query<{ end_reason: string | null }>(
      'SELECT end_reason FROM all_usages WHERE id = $1',
      [lease.lease_id],
    );
    expect(rows[0]?.end_reason).toBe('expired');
    expect(worker.logs.some((l) => l.msg === 'lease expired' && l.leaseId === lease.lease_id)).toBe(true);
  });
});
