import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { afterEach, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { RELEASE_QUEUE } from '../src/jobs/queue.js';
import { waitFor } from './harness/waitFor.js';
import { backdate, createTestDatabase, newUserId, startTestService, type TestService } from './helpers.js';
import { testRedisUrl } from './redis.js';
import { startTcpProxy } from './tcpProxy.js';

// The metrics an operator needs, each seen moving when its event happens, and the ready-made
// monitoring (docs/monitoring/) against what /metrics exports.

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function started(env: Record<string, string>, options: Parameters<typeof startTestService>[1] = {}): Promise<TestService> {
  const t = await startTestService(env, options);
  cleanups.push(() => t.close());
  return t;
}

/** The value of the sample `series` (name and labels as exported), or 0 when it is absent. */
async function sample(t: TestService, series: string): Promise<number> {
  const text = (await t.http.get('/metrics')).text;
  const found = text.split('\n').find((line) => line.startsWith(`${series} `));
  return found === undefined ? 0 : Number(found.slice(series.length + 1));
}

/** Polls until the sample satisfies `ok`; answers its value. */
function until(t: TestService, series: string, ok: (value: number) => boolean, what = series): Promise<number> {
  return waitFor(
    async () => {
      const value = await sample(t, series);
      return ok(value) ? { value } : undefined;
    },
    { timeoutMs: 10_000, what },
  ).then(({ value }) => value);
}

describe('metrics', () => {
  it('token_lease_waiting_clients counts the clients waiting on this process, under MAX_WAITERS', async () => {
    const t = await started({ POOL_SIZE: '1', MAX_WAITERS: '7' });
    expect(await sample(t, 'token_lease_waiting_clients_limit')).toBe(7);
    expect(await sample(t, 'token_lease_waiting_clients')).toBe(0);
    const holder = newUserId();
    const lease = (await t.http.post('/api/tokens/activate').send({ user_id: holder })).body.data;

    const waiting = t.http.post('/api/tokens/activate?wait=20').send({ user_id: newUserId() }).then((res) => res);
    await until(t, 'token_lease_waiting_clients', (n) => n === 1);
    await t.http.post(`/api/tokens/${lease.token_id}/release`).send({ user_id: holder, lease_id: lease.lease_id }).expect(200);

    expect((await waiting).status).toBe(201);
    await until(t, 'token_lease_waiting_clients', (n) => n === 0);
  });

  it('token_lease_release_jobs shows delayed and failed jobs; token_lease_release_job_failures_total counts failed attempts', async () => {
    const t = await started({ ROLE: 'all', POOL_SIZE: '2', LEASE_TTL_MS: '60000', RELEASE_JOB_BATCH_MS: '0' });
    await until(t, 'token_lease_release_jobs{state="delayed"}', (n) => n === 0, 'the job counts to be read');
    await t.http.post('/api/tokens/activate').send({ user_id: newUserId() }).expect(201);
    await until(t, 'token_lease_release_jobs{state="delayed"}', (n) => n === 1);

    // A job whose statement fails: the function it calls is gone for a moment.
    await t.db.pool.query('ALTER FUNCTION expire_lease(uuid, integer) RENAME TO expire_lease_gone');
    const connection = new Redis(testRedisUrl, { maxRetriesPerRequest: null });
    const queue = new Queue(RELEASE_QUEUE, { connection, prefix: t.redisPrefix });
    cleanups.push(async () => {
      await queue.close();
      connection.disconnect();
    });
    await queue.add('release', { leaseId: randomUUID(), tokenId: randomUUID(), expiresAt: new Date().toISOString() }, { attempts: 1 });

    await until(t, 'token_lease_release_job_failures_total', (n) => n === 1);
    await until(t, 'token_lease_release_jobs{state="failed"}', (n) => n === 1);
    await t.db.pool.query('ALTER FUNCTION expire_lease_gone(uuid, integer) RENAME TO expire_lease');
  });

  it('the sweep counts its runs and what it ended, and the lateness of each expired lease', async () => {
    const t = await started({ ROLE: 'all', POOL_SIZE: '2', LEASE_TTL_MS: '60000', SWEEP_INTERVAL_MS: '200' });
    await until(t, 'token_lease_sweep_runs_total{result="ran"}', (n) => n >= 1);
    const lateBefore = await sample(t, 'token_lease_expiry_lateness_seconds_count');
    const lease = (await t.http.post('/api/tokens/activate').send({ user_id: newUserId() })).body.data;

    // Ran out 5 s ago; its release job is not due for a minute, so the sweep ends it.
    await backdate(t.db, 65_000, lease.lease_id);

    await until(t, 'token_lease_leases_ended_total{reason="expired",by="sweep"}', (n) => n === 1);
    expect(await sample(t, 'token_lease_expiry_lateness_seconds_count')).toBe(lateBefore + 1);
    expect(await sample(t, 'token_lease_expiry_lateness_seconds_bucket{le="2.5"}')).toBe(0);
    expect(await sample(t, 'token_lease_expiry_lateness_seconds_bucket{le="10"}')).toBe(1);
  });

  it('counts leases an activation ended on its way, by reason', async () => {
    const t = await started({ POOL_SIZE: '1', LEASE_TTL_MS: '60000' });
    const lease = (await t.http.post('/api/tokens/activate').send({ user_id: newUserId() })).body.data;
    await backdate(t.db, 61_000, lease.lease_id);
    await t.http.post('/api/tokens/activate').send({ user_id: newUserId() }).expect(201);
    expect(await sample(t, 'token_lease_leases_ended_total{reason="expired",by="activation"}')).toBe(1);
  });

  it('token_lease_db_pool_connections and token_lease_db_pool_waiting follow the PostgreSQL pool', async () => {
    // Timeouts far beyond the test's polls: the held requests must wait, not give up, however slow the machine.
    const t = await started({
      POOL_SIZE: '1',
      DATABASE_POOL_MAX: '1',
      DATABASE_STATEMENT_TIMEOUT_MS: '60000',
      DATABASE_CONNECT_TIMEOUT_MS: '60000',
      ADMIN_API_KEY: 'metrics-admin-key-0123456789',
    });
    await until(t, 'token_lease_db_pool_connections{state="in_use"}', (n) => n === 0);
    const { tokenId } = (await t.db.pool.query<{ tokenId: string }>('SELECT id AS "tokenId" FROM tokens LIMIT 1')).rows[0] ?? { tokenId: '' };
    await t.http.post('/api/tokens/activate').send({ user_id: newUserId() }).expect(201);
    const blocker = await t.db.pool.connect();
    try {
      // A clear waits for the held token's lock on the pool's one connection; a read then waits for it.
      await blocker.query('BEGIN');
      await blocker.query('SELECT 1 FROM tokens FOR UPDATE');
      const clear = t.http.post('/api/tokens/clear').set('Authorization', 'Bearer metrics-admin-key-0123456789').then((res) => res);
      await until(t, 'token_lease_db_pool_connections{state="in_use"}', (n) => n === 1);
      const read = t.http.get(`/api/tokens/${tokenId}`).then((res) => res);
      await until(t, 'token_lease_db_pool_waiting', (n) => n >= 1);
      await blocker.query('ROLLBACK');
      expect((await clear).status).toBe(200);
      expect((await read).status).toBe(200);
    } finally {
      blocker.release();
    }
    await until(t, 'token_lease_db_pool_waiting', (n) => n === 0);
    await until(t, 'token_lease_db_pool_connections{state="in_use"}', (n) => n === 0);
  });

  it('token_lease_listener_connected and token_lease_ready fall to 0 while PostgreSQL is cut off, and come back', async () => {
    const db = await createTestDatabase();
    cleanups.push(() => db.drop());
    const target = new URL(db.url);
    const proxy = await startTcpProxy({ host: target.hostname, port: Number(target.port || 5432) });
    cleanups.push(() => proxy.close());
    const t = await started({ DATABASE_URL: proxy.url(db.url), DATABASE_CONNECT_TIMEOUT_MS: '500' }, { db });
    await until(t, 'token_lease_listener_connected', (n) => n === 1);
    expect(await sample(t, 'token_lease_ready')).toBe(1);

    proxy.refuse();
    proxy.cutAll();
    await until(t, 'token_lease_listener_connected', (n) => n === 0);
    await until(t, 'token_lease_ready', (n) => n === 0);

    proxy.accept();
    await until(t, 'token_lease_listener_connected', (n) => n === 1);
    await until(t, 'token_lease_ready', (n) => n === 1);
  });
});

describe('docs/monitoring', () => {
  const file = (name: string) => readFileSync(new URL(`../docs/monitoring/${name}`, import.meta.url), 'utf8');
  const alerts = parseYaml(file('alerts.yml')) as { groups: Array<{ rules: Array<{ alert: string; expr: string; for?: string }> }> };
  const dashboard = JSON.parse(file('grafana-dashboard.json')) as { panels: Array<{ title: string; targets?: Array<{ expr: string }> }> };
  const rules = alerts.groups.flatMap((group) => group.rules);
  const exprs = [...rules.map((rule) => rule.expr), ...dashboard.panels.flatMap((panel) => (panel.targets ?? []).map((target) => target.expr))];

  it('alerts on late expiry, refusals, failing release jobs, readiness and waiters at the cap', () => {
    const exprOf = (name: string) => rules.find((rule) => rule.alert === name)?.expr ?? '';
    expect(exprOf('TokenLeaseExpiryLate')).toMatch(/histogram_quantile\(0\.99,.*token_lease_expiry_lateness_seconds_bucket.*> 1$/s);
    expect(exprOf('TokenLeaseMostActivationsRefused')).toMatch(/outcome="exhausted".*> 0\.5$/s);
    expect(rules.find((rule) => rule.alert === 'TokenLeaseMostActivationsRefused')?.for).toBe('5m');
    expect(exprOf('TokenLeaseReleaseJobsFailing')).toContain('token_lease_release_job_failures_total');
    expect(exprOf('TokenLeaseNotReady')).toContain('token_lease_ready');
    expect(exprOf('TokenLeaseWaitersAtCap')).toContain('token_lease_waiting_clients_limit');
  });

  it('uses only metrics that /metrics exports', async () => {
    // Every role's metrics: ROLE=all runs the API and the worker.
    const t = await started({ ROLE: 'all', POOL_SIZE: '1' });
    const exported = new Set(
      [...(await t.http.get('/metrics')).text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].flatMap(([, name = '', type]) =>
        type === 'histogram' ? [name, `${name}_bucket`, `${name}_sum`, `${name}_count`] : [name],
      ),
    );
    const used = new Set(exprs.flatMap((expr) => expr.match(/\btoken_lease_[a-z0-9_]+/g) ?? []));
    expect(used.size).toBeGreaterThan(10);
    expect([...used].filter((name) => !exported.has(name))).toEqual([]);
  });
});
