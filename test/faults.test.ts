import { randomUUID } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { count, drainAndCheck, granted, report, unavailable, undocumentedAnswers } from './faultChecks.js';
import { createTestDatabase, startTestService, usagesOf, type TestDatabase, type TestService, spawnService } from './helpers.js';
import { waitFor } from './harness/waitFor.js';
import { checkInvariants, describeViolations } from './invariants.js';
import { startLoad, type Answer, type Load } from './harness/load.js';
import { startRedisServer } from './redisServer.js';
import { startTcpProxy, type TcpProxy } from './tcpProxy.js';

// Fault injection with load running: PostgreSQL connections cut, refused and black-holed through
// a proxy the test controls; the service's own Redis flushed, killed, black-holed and cut. After
// each fault every answer must have been a documented one, no request may have hung past its
// bound, and once the load has drained the invariants must hold and nothing may be left behind
// (open leases, waiters, transactions, connections). Process crashes are in crashes.test.ts.

const CONNECT_TIMEOUT_MS = 500;
const STATEMENT_TIMEOUT_MS = 1_000;
const POOL_MAX = 4;
const LEASE_TTL_MS = 1_500;
const SWEEP_INTERVAL_MS = 500;
const WAIT_SECONDS = 1;

// With PostgreSQL unreachable a request waits at most DATABASE_CONNECT_TIMEOUT_MS for a
// connection, then at most DATABASE_STATEMENT_TIMEOUT_MS + 1 s (the client-side read timeout,
// src/db/pool.ts) for a statement that gets no answer at all, and answers 503 unavailable.
const UNAVAILABLE_BOUND_MS = CONNECT_TIMEOUT_MS + STATEMENT_TIMEOUT_MS + 1_000;
// Two shared cores, other test files and other engineers' runs: the bound plus this is a hang.
const SCHEDULING_SLACK_MS = 3_000;

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

interface Deployment {
  readonly db: TestDatabase;
  readonly proxy: TcpProxy;
  readonly t: TestService;
}

/** The service in this process (ROLE=all: API, release worker and sweep), reaching PostgreSQL through the proxy. */
async function serviceBehindProxy(): Promise<Deployment> {
  const db = await createTestDatabase();
  cleanups.push(() => db.drop());
  const proxy = await startTcpProxy({ host: new URL(db.url).hostname, port: Number(new URL(db.url).port || 5432) });
  cleanups.push(() => proxy.close());
  const t = await startTestService(
    {
      ROLE: 'all',
      DATABASE_URL: proxy.url(db.url),
      DATABASE_POOL_MAX: String(POOL_MAX),
      DATABASE_CONNECT_TIMEOUT_MS: String(CONNECT_TIMEOUT_MS),
      DATABASE_STATEMENT_TIMEOUT_MS: String(STATEMENT_TIMEOUT_MS),
      POOL_SIZE: '4',
      LEASE_TTL_MS: String(LEASE_TTL_MS),
      SWEEP_INTERVAL_MS: String(SWEEP_INTERVAL_MS),
    },
    { db },
  );
  cleanups.push(async () => {
    // The service must be able to stop cleanly, so the network is whole again first.
    proxy.accept();
    proxy.resume();
    await t.close();
  });
  return { db, proxy, t };
}

function loadOn(t: TestService): Load {
  const load = startLoad({
    baseUrls: [t.url],
    clients: 6,
    waitSeconds: WAIT_SECONDS,
    // A waiter that fails makes two trips to the database: its attempt and leaving the queue.
    deadlineMs: 2 * UNAVAILABLE_BOUND_MS + SCHEDULING_SLACK_MS,
  });
  cleanups.push(() => load.stop());
  return load;
}

/** Plain requests (not waiters) that took longer than a database failure may take. */
function overBound(answers: readonly Answer[]): Answer[] {
  return answers.filter((a) => a.op !== 'wait' && a.receivedAt - a.sentAt > UNAVAILABLE_BOUND_MS + SCHEDULING_SLACK_MS);
}

/**
 * No transaction left open (the sweep's own are idle in transaction for an instant between
 * statements, so only one idle for seconds counts) and no more connections than the pool and the
 * listener may hold.
 */
async function expectNoLeakedConnections(db: TestDatabase): Promise<void> {
  const sessions = await db.pool.query<{ application_name: string; state: string; idle_ms: number }>(
    `SELECT application_name, state, extract(epoch FROM now() - state_change) * 1000 AS idle_ms FROM pg_stat_activity
     WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name LIKE 'token-lease%'`,
  );
  expect(sessions.rows.filter((s) => s.state.startsWith('idle in transaction') && s.idle_ms > 2_000)).toEqual([]);
  expect(sessions.rows.filter((s) => s.application_name === 'token-lease-all').length).toBeLessThanOrEqual(POOL_MAX);
  expect(sessions.rows.filter((s) => s.application_name === 'token-lease-listener').length).toBeLessThanOrEqual(1);
}

describe('PostgreSQL failing under load', () => {
  // Regression: pg-pool takes its error listener off a client while the client is checked out,
  // and withTransaction added none, so a connection reset inside a transaction (the sweep runs in
  // one every SWEEP_INTERVAL_MS) was an unhandled 'error' event that ended the process.
  it('a worker whose sweep transaction loses its connection keeps running', async () => {
    const db = await createTestDatabase();
    cleanups.push(() => db.drop());
    const proxy = await startTcpProxy({ host: new URL(db.url).hostname, port: Number(new URL(db.url).port || 5432) });
    cleanups.push(() => proxy.close());
    const worker = spawnService({
      ROLE: 'worker',
      DATABASE_URL: proxy.url(db.url),
      SWEEP_INTERVAL_MS: '50',
      DATABASE_STATEMENT_TIMEOUT_MS: '5000',
      LOG_LEVEL: 'debug',
    });
    cleanups.push(async () => {
      worker.kill('SIGKILL');
      await worker.exited();
    });
    await worker.port();
    await worker.logged('sweep ran');

    // Statements get no answer, so the next sweep is held inside its transaction; then every
    // connection under it is reset.
    const holeAt = Date.now();
    proxy.blackhole();
    await waitFor(() => Date.now() > holeAt + 500, { what: 'a sweep to be held in its transaction' });
    const cutAt = Date.now();
    proxy.cutAll();
    proxy.resume();

    await waitFor(
      () => {
        if (worker.child.exitCode !== null) throw new Error(`the worker exited ${worker.child.exitCode}: ${worker.stderr()}`);
        return worker.logs.some((l) => l.msg === 'sweep ran' && Date.parse(String(l.time)) > cutAt);
      },
      { timeoutMs: 10_000, what: 'the worker to sweep again' },
    );
    expect(worker.child.exitCode).toBeNull();
  });

  it('connections cut and refused: 503 unavailable with a JSON body within the bound, then success again without a restart', async () => {
    const { db, proxy, t } = await serviceBehindProxy();
    const load = loadOn(t);
    await load.until('leases granted', granted, { count: 10 });

    const downAt = Date.now();
    proxy.refuse();
    proxy.cutAll();
    await load.until('503 unavailable answers', unavailable, { since: downAt, count: 20 });
    const ready = await fetch(`${t.url}/readyz`);
    expect(ready.status).toBe(503);
    expect(((await ready.json()) as any).error.code).toBe('not_ready');

    const upAt = Date.now();
    proxy.accept();
    await load.until('a lease granted after the database came back', (a) => granted(a) && a.sentAt >= upAt, {
      timeoutMs: 10_000,
    });
    // Flapping: a cut every few answers lands inside transactions, between a statement and
    // its COMMIT, and between a commit and its answer.
    for (let cut = 0; cut < 10; cut += 1) {
      await load.until('a few answers', () => true, { since: Date.now(), count: 3 });
      proxy.cutAll();
    }
    await load.until('more leases', granted, { since: Date.now(), count: 10 });

    await drainAndCheck(db, load, { leaseTtlMs: LEASE_TTL_MS, sweepIntervalMs: SWEEP_INTERVAL_MS });
    report('postgres cut', load.answers);
    expect(undocumentedAnswers(load.answers)).toEqual([]);
    expect(overBound(load.answers)).toEqual([]);
    await expectNoLeakedConnections(db);
  });

  it('black-holed (nothing answers, nothing closes): 503 unavailable within the bound, then success again', async () => {
    const { db, proxy, t } = await serviceBehindProxy();
    const load = loadOn(t);
    await load.until('leases granted', granted, { count: 10 });

    const holeAt = Date.now();
    proxy.blackhole();
    // Long enough for requests that were mid-statement to reach the statement's read timeout.
    await load.until('503 unavailable answers', unavailable, { since: holeAt, count: 20 });
    await waitFor(() => Date.now() > holeAt + UNAVAILABLE_BOUND_MS + 500, { what: 'the black hole to outlast the bound' });

    const healedAt = Date.now();
    proxy.resume();
    await load.until('a lease granted after the partition healed', (a) => granted(a) && a.sentAt >= healedAt, {
      timeoutMs: 10_000,
    });
    await load.until('more leases', granted, { since: Date.now(), count: 10 });

    await drainAndCheck(db, load, { leaseTtlMs: LEASE_TTL_MS, sweepIntervalMs: SWEEP_INTERVAL_MS });
    report('postgres black hole', load.answers);
    expect(undocumentedAnswers(load.answers)).toEqual([]);
    expect(overBound(load.answers)).toEqual([]);
    await expectNoLeakedConnections(db);
  });
});

describe('Redis failing under load', () => {
  // Regression: BullMQ's graceful Worker.close() waits for its blocking connection to end, which
  // a connection waiting between reconnect attempts never does (bullmq #4656), so a worker told to
  // stop during a Redis outage hung until SHUTDOWN_TIMEOUT_MS and exited 1.
  it('a worker stopped with SIGTERM while Redis is down still exits 0, at once', async () => {
    const redis = await startRedisServer();
    cleanups.push(() => redis.stop());
    const db = await createTestDatabase();
    cleanups.push(() => db.drop());
    const worker = spawnService({ ROLE: 'worker', DATABASE_URL: db.url, REDIS_URL: redis.url, SHUTDOWN_TIMEOUT_MS: '8000' });
    cleanups.push(async () => {
      worker.kill('SIGKILL');
      await worker.exited();
    });
    await worker.port();
    await redis.stop();
    await worker.logged('redis connection lost');

    const stopping = Date.now();
    worker.kill('SIGTERM');

    expect(await worker.exited()).toEqual({ code: 0, signal: null });
    expect(Date.now() - stopping).toBeLessThan(5_000);
  });

  it('down, flushed, black-holed and cut: every activation still answers at once, every lease still ends', async () => {
    const redis = await startRedisServer();
    cleanups.push(() => redis.stop());
    const proxy = await startTcpProxy({ host: '127.0.0.1', port: redis.port });
    cleanups.push(() => proxy.close());
    const ttlMs = 1_000;
    const sweepIntervalMs = 1_000;
    const t = await startTestService({
      ROLE: 'all',
      REDIS_URL: proxy.url(redis.url),
      POOL_SIZE: '6',
      LEASE_TTL_MS: String(ttlMs),
      SWEEP_INTERVAL_MS: String(sweepIntervalMs),
    });
    cleanups.push(async () => {
      await redis.start();
      proxy.resume();
      await t.close();
    });
    // Redis is not on the path of any answer (release jobs are added after it), so the
    // deadline is the ordinary one for a loaded machine, whatever Redis does.
    const load = startLoad({ baseUrls: [t.url], clients: 5, waitSeconds: WAIT_SECONDS, deadlineMs: 1_000 + SCHEDULING_SLACK_MS });
    cleanups.push(() => load.stop());
    const moreLeases = (what: string) => load.until(what, granted, { since: Date.now(), count: 10 });
    await moreLeases('leases granted');

    await redis.command('FLUSHALL');
    await moreLeases('leases granted after FLUSHALL');

    await redis.stop();
    await moreLeases('leases granted with Redis down');
    const whileDown = (await (await fetch(`${t.url}/readyz`)).json()) as any;
    expect(whileDown.data.checks.redis).toBe('down');

    await redis.start();
    await waitFor(async () => ((await (await fetch(`${t.url}/readyz`)).json()) as any).data.checks.redis === 'up', {
      timeoutMs: 10_000,
      what: 'Redis to be reported up again',
    });
    await moreLeases('leases granted after Redis came back empty');

    const holeAt = Date.now();
    proxy.blackhole();
    await moreLeases('leases granted with Redis black-holed');
    // Past the producer's 1 s command timeout, so adds time out rather than wait.
    await waitFor(() => Date.now() > holeAt + 2_500, { what: 'the black hole to outlast the command timeout' });
    await moreLeases('leases granted with Redis black-holed for a while');
    proxy.resume();
    proxy.cutAll();
    await moreLeases('leases granted after the Redis connections were cut');

    // With Redis gone, and no activation coming to end them lazily, the sweep alone must end
    // the leases still open (a re-added job could beat it after a mere flush).
    await load.stop();
    const openAtStop = await count(t.db, 'SELECT count(*) AS n FROM all_usages WHERE ended_at IS NULL');
    await redis.stop();
    await drainAndCheck(t.db, load, { leaseTtlMs: ttlMs, sweepIntervalMs });
    report('redis faults', load.answers);
    // Not even 503: Redis is on the path of no answer.
    expect(undocumentedAnswers(load.answers, false)).toEqual([]);
    const metrics = await (await fetch(`${t.url}/metrics`)).text();
    const metric = (name: string) => Number(/ (\d+)$/.exec(metrics.split('\n').find((l) => l.startsWith(name)) ?? '')?.[1] ?? 0);
    expect(metric('token_lease_release_enqueue_failures_total')).toBeGreaterThan(0);
    if (openAtStop > 0) expect(metric('token_lease_leases_ended_total{reason="expired",by="sweep"}')).toBeGreaterThan(0);
  });
});

describe('found by fault injection', () => {
  // The black-holed run found a token whose second usage started (by its started_at) before the
  // first one ended. activate_lease stamped a new lease with now(), its transaction's start, but
  // an activation can wait first (here on its user's advisory lock, held by another activation of
  // the same user) while the token is released; it then took the token with a start time from
  // before the release: overlapping history, and a lease shorter than LEASE_TTL_MS.
  it('an activation that waited for its user’s lock starts its lease when it takes the token', async () => {
    const t = await startTestService({ POOL_SIZE: '1', LEASE_TTL_MS: '60000' });
    const lock = await t.db.pool.connect();
    try {
      const holder = randomUUID();
      const waiter = randomUUID();
      const first = (await t.http.post('/api/tokens/activate').send({ user_id: holder })).body.data;
      // Another activation of the waiter's holds the waiter's lock (class 1, sql/activate_lease.sql).
      await lock.query('BEGIN');
      await lock.query("SELECT pg_advisory_xact_lock(1, hashtext('1/' || $1::uuid::text))", [waiter]);
      const waiting = t.http.post('/api/tokens/activate').send({ user_id: waiter }).then((res) => res);
      await waitFor(
        async () =>
          (await t.db.pool.query("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'")).rows.length > 0,
        { what: 'the activation to wait for the lock' },
      );
      expect((await t.http.post(`/api/tokens/${first.token_id}/release`).send({ user_id: holder, lease_id: first.lease_id })).status).toBe(200);
      await lock.query('COMMIT');

      const second = (await waiting).body.data;
      expect(second.token_id).toBe(first.token_id);
      const violations = await checkInvariants(t.db.url);
      expect(violations, describeViolations(violations)).toEqual([]);
      const [released] = await usagesOf(t.db, 'id = $1', [first.lease_id]);
      expect(Date.parse(second.activated_at)).toBeGreaterThanOrEqual(released?.ended_at?.getTime() ?? Infinity);
      expect(Date.parse(second.expires_at) - Date.parse(second.activated_at)).toBe(60_000);
    } finally {
      lock.release();
      await t.close();
    }
  });

  // The same wait with POOL_FULL_POLICY=evict_oldest: a lease granted while the activation waited
  // was evicted with an ended_at before its started_at, which usages_ends_after_start refuses: 500.
  it('an activation that waited for its user’s lock evicts a lease granted meanwhile', async () => {
    const t = await startTestService({ POOL_SIZE: '1', LEASE_TTL_MS: '60000', POOL_FULL_POLICY: 'evict_oldest' });
    const lock = await t.db.pool.connect();
    try {
      const waiter = randomUUID();
      await t.http.post('/api/tokens/activate').send({ user_id: randomUUID() });
      await lock.query('BEGIN');
      await lock.query("SELECT pg_advisory_xact_lock(1, hashtext('1/' || $1::uuid::text))", [waiter]);
      const waiting = t.http.post('/api/tokens/activate').send({ user_id: waiter }).then((res) => res);
      await waitFor(
        async () =>
          (await t.db.pool.query("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'")).rows.length > 0,
        { what: 'the activation to wait for the lock' },
      );
      const meanwhile = (await t.http.post('/api/tokens/activate').send({ user_id: randomUUID() })).body.data;
      await lock.query('COMMIT');

      const res = await waiting;
      expect(res.status, JSON.stringify(res.body)).toBe(201);
      const [evicted] = await usagesOf(t.db, 'id = $1', [meanwhile.lease_id]);
      expect(evicted?.end_reason).toBe('evicted');
      const violations = await checkInvariants(t.db.url);
      expect(violations, describeViolations(violations)).toEqual([]);
    } finally {
      lock.release();
      await t.close();
    }
  });
});
