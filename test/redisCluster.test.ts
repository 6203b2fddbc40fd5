import { existsSync } from 'node:fs';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { createTestDatabase, newUserId, spawnService, usagesOf, backdate, type TestDatabase } from './helpers.js';
import type { ServiceProcess } from './harness/processes.js';
import { waitFor } from './harness/waitFor.js';
import { testRedisPrefix } from './redis.js';
import { startRedisCluster, type RedisCluster } from './redisServer.js';

// The service on a Redis Cluster (REDIS_CLUSTER_NODES, a hash-tag REDIS_PREFIX): three masters on
// spare ports, the service as a separate process, release jobs, the sweep and rate limits. The
// servers and their files are gone afterwards, whether the tests passed or not.

let started: RedisCluster | undefined;
const running: ServiceProcess[] = [];
const databases: TestDatabase[] = [];

beforeAll(async () => {
  // A start that fails stops and removes what it started by itself.
  started = await startRedisCluster(3);
});
afterEach(async () => {
  await Promise.all(running.splice(0).map((p) => p.stop()));
  for (const db of databases.splice(0)) await db.drop();
});
afterAll(async () => {
  if (started === undefined) return;
  await started.stop();
  expect(started.running()).toBe(false);
  expect(existsSync(started.dir)).toBe(false);
});

function cluster(): RedisCluster {
  if (started === undefined) throw new Error('the cluster did not start');
  return started;
}

interface Deployment {
  readonly proc: ServiceProcess;
  readonly url: string;
  readonly db: TestDatabase;
  readonly prefix: string;
  /** The service's environment, for more processes of the same deployment. */
  readonly env: Record<string, string>;
}

/** The service (ROLE=all) on the cluster, with a database and a hash-tag prefix of its own. */
async function startOnCluster(env: Record<string, string>): Promise<Deployment> {
  const db = await createTestDatabase();
  databases.push(db);
  const prefix = `{${testRedisPrefix(inject('runId'))}}`;
  const deployment = {
    ROLE: 'all',
    DATABASE_URL: db.url,
    // Nothing listens here: every connection must go to the cluster.
    REDIS_URL: 'redis://127.0.0.1:1',
    REDIS_CLUSTER_NODES: cluster().nodes,
    REDIS_PREFIX: prefix,
    POOL_SIZE: '5',
    TRUST_PROXY: '1',
    ...env,
  };
  const proc = spawnService(deployment);
  running.push(proc);
  const url = await proc.ready();
  await waitFor(async () => (await readiness(url)).redis === 'up', { timeoutMs: 10_000, what: 'the cluster to be reported up' });
  return { proc, url, db, prefix, env: deployment };
}

async function readiness(url: string): Promise<{ redis?: string }> {
  const res = await fetch(`${url}/readyz`);
  return ((await res.json()) as { data: { checks: { redis?: string } } }).data.checks;
}

async function activate(url: string, headers: Record<string, string> = {}) {
  const res = await fetch(`${url}/api/tokens/activate`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ user_id: newUserId() }),
  });
  expect(res.status, await res.clone().text()).toBe(201);
  return ((await res.json()) as { data: { lease_id: string; token_id: string; expires_at: string } }).data;
}

async function metric(url: string, line: RegExp): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const match = text.split('\n').find((l) => line.test(l));
  return match === undefined ? 0 : Number(match.split(' ').at(-1));
}

const endedBy = (url: string, by: string) =>
  metric(url, new RegExp(`^token_lease_leases_ended_total\\{reason="expired",by="${by}"\\}`));

async function endedUsage(db: TestDatabase, leaseId: string) {
  return waitFor(
    async () => (await usagesOf(db, 'id = $1 AND ended_at IS NOT NULL', [leaseId]))[0],
    { timeoutMs: 10_000, what: `lease ${leaseId} to end` },
  );
}

/** The keys under `prefix` on each master, by port (SCAN on each server). */
async function keysByNode(prefix: string): Promise<Map<number, string[]>> {
  const found = new Map<number, string[]>();
  for (const port of cluster().ports) {
    const keys: string[] = [];
    let cursor = '0';
    do {
      const [next, page] = (await cluster().command(port, 'SCAN', cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000)) as [string, string[]];
      cursor = next;
      keys.push(...page);
    } while (cursor !== '0');
    if (keys.length > 0) found.set(port, keys);
  }
  return found;
}

// Each test starts the service as a process of its own: slow on a loaded machine.
describe('on a Redis Cluster', { timeout: 60_000 }, () => {
  it('the service refuses to start with REDIS_CLUSTER_NODES and a prefix that is not a hash tag', async () => {
    const proc = spawnService({ REDIS_CLUSTER_NODES: cluster().nodes, REDIS_PREFIX: 'token-lease' });
    running.push(proc);

    expect(await proc.exited()).toEqual({ code: 1, signal: null });
    expect(proc.stderr()).toMatch(/REDIS_PREFIX: must be a hash tag such as \{token-lease\}/);
  });

  it('activates, and a release job on the cluster ends a short lease on time, all keys in one slot', async () => {
    // The sweep is ten minutes away: only the release job can end the lease in time.
    const d = await startOnCluster({ LEASE_TTL_MS: '1000', SWEEP_INTERVAL_MS: '600000' });

    const lease = await activate(d.url);
    const jobKey = (keys: string[]) => keys.find((k) => k.startsWith(`${d.prefix}:lease-release:release-${lease.lease_id}-`));
    const byNode = await waitFor(
      async () => {
        const found = await keysByNode(d.prefix);
        return [...found.values()].some((keys) => jobKey(keys) !== undefined) && found;
      },
      { what: 'the release job to reach the cluster' },
    );

    // Every key the service wrote is on one master, in the slot of the prefix's hash tag.
    expect(byNode.size).toBe(1);
    const [[port, keys]] = [...byNode.entries()] as [[number, string[]]];
    const slots = new Set(await Promise.all(keys.map((key) => cluster().command(port, 'CLUSTER', 'KEYSLOT', key))));
    expect(slots).toEqual(new Set([await cluster().command(port, 'CLUSTER', 'KEYSLOT', d.prefix)]));

    const row = await endedUsage(d.db, lease.lease_id);
    expect(row.end_reason).toBe('expired');
    const lateMs = (row.ended_at?.getTime() ?? 0) - row.expires_at.getTime();
    expect(lateMs).toBeGreaterThanOrEqual(0);
    expect(lateMs).toBeLessThan(1_000);
    // Counted once the ending has committed: a moment after the row.
    await waitFor(async () => (await endedBy(d.url, 'job')) === 1, { what: 'the job to count the lease' });
    expect(await endedBy(d.url, 'sweep')).toBe(0);
    expect(await metric(d.url, /^token_lease_release_enqueue_failures_total /)).toBe(0);
    expect(d.proc.logs.filter((l) => typeof l.level === 'number' && l.level >= 50)).toEqual([]);
  });

  it('the sweep ends a lease whose release job the cluster lost', async () => {
    const d = await startOnCluster({ LEASE_TTL_MS: '60000', SWEEP_INTERVAL_MS: '300' });
    const lease = await activate(d.url);
    await waitFor(async () => (await keysByNode(d.prefix)).size > 0, { what: 'the release job to reach the cluster' });
    for (const port of cluster().ports) await cluster().command(port, 'FLUSHALL');
    await backdate(d.db, 61_000, lease.lease_id);

    const row = await endedUsage(d.db, lease.lease_id);
    expect(row.end_reason).toBe('expired');
    // The sweep counts what it ended once its transaction has committed: a moment after the row.
    await waitFor(async () => (await endedBy(d.url, 'sweep')) === 1, { what: 'the sweep to count the lease' });
    expect(await endedBy(d.url, 'job')).toBe(0);
  });

  it('counts rate limits in the cluster and answers 429 past the limit', async () => {
    const d = await startOnCluster({ RATE_LIMIT_PER_MINUTE: '3' });
    // Until the limiter's connection is up, requests pass uncounted: wait for a counted answer,
    // spending the budget of a caller of its own.
    await waitFor(async () => (await validate(d.url, '203.0.113.8')).headers.get('ratelimit') !== null, {
      timeoutMs: 10_000,
      what: 'the limiter to reach the cluster',
    });

    const statuses: number[] = [];
    for (let i = 0; i < 4; i += 1) statuses.push((await validate(d.url, '203.0.113.7')).status);

    expect(statuses).toEqual([200, 200, 200, 429]);
    expect(await metric(d.url, /^token_lease_rate_limit_store_failures_total\{budget="lease"\}/)).toBe(0);
  });
});

// Last: it kills one master of the cluster and starts it again empty.
describe('with the master of the service’s slot down', () => {
  it('activation still answers, Redis is reported down, the sweep ends the leases, a process stops cleanly, and jobs resume once it is back', { timeout: 90_000 }, async () => {
    const d = await startOnCluster({ LEASE_TTL_MS: '3000', SWEEP_INTERVAL_MS: '500' });
    // A second process of the deployment, a worker, stopped while the master is down.
    const other = spawnService({ ...d.env, ROLE: 'worker', SWEEP_INTERVAL_MS: '600000' });
    running.push(other);
    await other.ready();
    const before = await activate(d.url);
    const [port] = await waitFor(async () => {
      const found = await keysByNode(d.prefix);
      return found.size > 0 && [...found.keys()];
    }, { what: 'the release job to reach the cluster' });
    await cluster().kill(port ?? 0);

    await waitFor(async () => (await readiness(d.url)).redis === 'down', { timeoutMs: 10_000, what: 'Redis to be reported down' });
    const during = await activate(d.url);
    running.splice(running.indexOf(other), 1);
    expect(await other.stop()).toEqual({ code: 0, signal: null });
    await waitFor(async () => (await metric(d.url, /^token_lease_release_enqueue_failures_total /)) >= 1, {
      timeoutMs: 10_000,
      what: 'the failed add to be counted',
    });

    for (const lease of [before, during]) expect((await endedUsage(d.db, lease.lease_id)).end_reason).toBe('expired');
    // The later lease's job never reached Redis (the earlier one's was lost with the master,
    // unless a worker ran it before the master went down).
    await waitFor(async () => (await endedBy(d.url, 'sweep')) >= 1, { what: 'the sweep to count a lease' });
    const byJob = await endedBy(d.url, 'job');

    // Back, empty: new leases get jobs again, and those end them.
    await cluster().restart(port ?? 0);
    await waitFor(async () => (await readiness(d.url)).redis === 'up', { timeoutMs: 20_000, what: 'Redis to be reported up again' });
    // A lease granted as the cluster comes back may still fall to the sweep: the next ones do not.
    await waitFor(
      async () => {
        const after = await activate(d.url);
        expect((await endedUsage(d.db, after.lease_id)).end_reason).toBe('expired');
        return (await endedBy(d.url, 'job')) > byJob;
      },
      { timeoutMs: 30_000, what: 'a lease granted after the restart to be ended by its release job' },
    );

    running.splice(running.indexOf(d.proc), 1);
    expect(await d.proc.stop()).toEqual({ code: 0, signal: null });
  });
});

/** A validation (a lease route that changes nothing) from the caller at `address`. */
function validate(url: string, address: string): Promise<Response> {
  return fetch(`${url}/api/tokens/${newUserId()}/validate`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-forwarded-for': address },
    body: JSON.stringify({ user_id: newUserId(), fence: 1 }),
  });
}
