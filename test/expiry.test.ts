import { Queue } from 'bullmq';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { RELEASE_QUEUE, releaseJobId } from '../src/jobs/queue.js';
import { backdate, createTestDatabase, newUserId, startTestService, usagesOf, type TestDatabase, type TestService } from './helpers.js';
import { waitFor } from './harness/waitFor.js';
import { testRedisUrl } from './redis.js';
import { startRedisServer, type RedisServer } from './redisServer.js';

// Expiry over real PostgreSQL and Redis: release jobs, the sweep, and what happens when Redis
// loses its data or goes away. Faults are injected on a private redis-server.

interface LeaseBody {
  token_id: string;
  user_id: string;
  lease_id: string;
  expires_at: string;
}

async function activate(t: TestService, userId = newUserId()): Promise<LeaseBody> {
  const res = await t.http.post('/api/tokens/activate').send({ user_id: userId });
  if (res.status !== 201) throw new Error(`activation answered ${res.status}: ${res.text}`);
  return res.body.data as LeaseBody;
}

async function endedUsage(db: TestDatabase, leaseId: string, timeoutMs = 5_000) {
  return waitFor(
    async () => {
      const [row] = await usagesOf(db, 'id = $1 AND ended_at IS NOT NULL', [leaseId]);
      return row;
    },
    { timeoutMs, what: `lease ${leaseId} to end` },
  );
}

/**
 * Waits for the count of leases ended as expired `by` to be `count`: it is counted once the
 * ending has committed, a moment after the row.
 */
function endedBy(t: TestService, by: string, count: number): Promise<true> {
  const line = new RegExp(`^token_lease_leases_ended_total\\{reason="expired",by="${by}"\\}`);
  return waitFor(async () => (await metric(t, line)) === count, { what: `${count} leases counted as ended by ${by}` });
}

async function metric(t: TestService, line: RegExp): Promise<number> {
  const text = (await t.http.get('/metrics')).text;
  const match = text.split('\n').find((l) => line.test(l));
  return match === undefined ? 0 : Number(match.split(' ').at(-1));
}

const services: TestService[] = [];
const queues: Queue[] = [];
afterEach(async () => {
  for (const q of queues.splice(0)) await q.close();
  for (const s of services.splice(0)) await s.close();
});

async function start(env: Record<string, string>, db?: TestDatabase): Promise<TestService> {
  const t = await startTestService(env, db === undefined ? {} : { db });
  services.push(t);
  return t;
}

/** The release job of a lease, if it is in Redis. */
function jobOf(queue: Queue, lease: LeaseBody) {
  return queue.getJob(releaseJobId({ leaseId: lease.lease_id, expiresAt: new Date(lease.expires_at) }));
}

/** Jobs are sent in batches: a test about what happens to a job first waits for it to be in Redis. */
async function jobSent(queue: Queue, lease: LeaseBody) {
  return waitFor(() => jobOf(queue, lease), { what: 'the release job to be sent' });
}

function inspect(t: TestService, redisUrl = testRedisUrl): Queue {
  const queue = new Queue(RELEASE_QUEUE, { connection: { url: redisUrl }, prefix: t.redisPrefix });
  queues.push(queue);
  return queue;
}

describe('release jobs', () => {
  it('end a lease within 1 s of its expiry, and history shows it', async () => {
    const t = await start({ ROLE: 'all', LEASE_TTL_MS: '800', SWEEP_INTERVAL_MS: '600000' });
    const lease = await activate(t);

    const row = await endedUsage(t.db, lease.lease_id);

    expect(row.end_reason).toBe('expired');
    const lateMs = (row.ended_at?.getTime() ?? 0) - row.expires_at.getTime();
    expect(lateMs).toBeGreaterThanOrEqual(0);
    expect(lateMs).toBeLessThan(1_000);
    const history = await t.http.get(`/api/tokens/${lease.token_id}/history`);
    expect(history.body.data.usages[0]).toMatchObject({
      lease_id: lease.lease_id,
      end_reason: 'expired',
      ended_at: row.ended_at?.toISOString(),
    });
    await endedBy(t, 'job', 1);
  });

  it('have an id per lease and expiry, and are removed once done', async () => {
    const t = await start({ ROLE: 'api', LEASE_TTL_MS: '60000' });
    const queue = inspect(t);
    const lease = await activate(t);
    const job = await jobSent(queue, lease);

    expect(await job.getState()).toBe('delayed');
    expect(job.data).toMatchObject({ leaseId: lease.lease_id, tokenId: lease.token_id });
    expect(job.opts.removeOnComplete).toBe(true);
  });

  it('are sent in batches that leave out leases already ended, and a shutdown sends the last one', async () => {
    const t = await start({ ROLE: 'api', LEASE_TTL_MS: '60000', RELEASE_JOB_BATCH_MS: '1000' });
    const queue = inspect(t);
    const [kept, released] = [await activate(t), await activate(t)];
    const res = await t.http.post(`/api/tokens/${released.token_id}/release`).send({ user_id: released.user_id, lease_id: released.lease_id });
    expect(res.status).toBe(200);
    expect(await jobOf(queue, kept)).toBeUndefined();

    expect(await t.service.stop('test')).toBe(true);

    expect(await jobOf(queue, kept)).toMatchObject({ data: { leaseId: kept.lease_id } });
    expect(await jobOf(queue, released)).toBeUndefined();
  });

  it('wait a whole batch interval, so a lease released within one never gets a job', async () => {
    const t = await start({ ROLE: 'api', LEASE_TTL_MS: '60000', RELEASE_JOB_BATCH_MS: '1000' });
    const queue = inspect(t);
    // The first lease sets the batch timer; the second, queued after it, has not waited a whole
    // interval when that batch goes out, so it stays for the next one.
    const first = await activate(t);
    const second = await activate(t);
    await jobSent(queue, first);
    expect(await jobOf(queue, second)).toBeUndefined();
    const res = await t.http.post(`/api/tokens/${second.token_id}/release`).send({ user_id: second.user_id, lease_id: second.lease_id });
    expect(res.status).toBe(200);

    const third = await activate(t);
    expect(await t.service.stop('test')).toBe(true);
    expect(await jobOf(queue, second)).toBeUndefined();
    // A shutdown sends every job still waiting.
    expect(await jobOf(queue, third)).toMatchObject({ data: { leaseId: third.lease_id } });
  });

  it('do not wait for the batch when the lease falls due before it goes out', async () => {
    // A TTL shorter than the batch interval: the lease's job must reach Redis by its expiry, not
    // with the batch a whole interval later (900 ms after it, here).
    const t = await start({ ROLE: 'api', LEASE_TTL_MS: '100', RELEASE_JOB_BATCH_MS: '1000' });
    const queue = inspect(t);
    const lease = await activate(t);
    const job = await jobSent(queue, lease);

    expect(job.timestamp - Date.parse(lease.expires_at)).toBeLessThan(500);
  });

  it('a duplicate or late job does not end the next holder’s lease', async () => {
    const t = await start({ ROLE: 'all', POOL_SIZE: '1', LEASE_TTL_MS: '60000' });
    const queue = inspect(t);
    const first = await activate(t);
    await t.http.post('/api/tokens/clear');
    const second = await activate(t);
    expect(second.token_id).toBe(first.token_id);

    // A late job of the first lease, and an early duplicate of the second lease's own job.
    const late = await queue.add(
      'release',
      { leaseId: first.lease_id, tokenId: first.token_id, expiresAt: first.expires_at },
      { jobId: 'late-duplicate', removeOnComplete: false },
    );
    const early = await queue.add(
      'release',
      { leaseId: second.lease_id, tokenId: second.token_id, expiresAt: second.expires_at },
      { jobId: 'early-duplicate', removeOnComplete: false },
    );

    await waitFor(async () => (await late.getState()) === 'completed', { what: 'the late job' });
    await waitFor(async () => (await early.getState()) === 'delayed', {
      what: 'the early job to wait for the expiry',
    });
    expect((await queue.getJob('late-duplicate'))?.returnvalue).toBe('gone');
    const [open] = await usagesOf(t.db, 'ended_at IS NULL');
    expect(open?.id).toBe(second.lease_id);
  });

  it('of cleared leases do nothing when they fire', async () => {
    const t = await start({
      ROLE: 'all',
      POOL_SIZE: '3',
      LEASE_TTL_MS: '1000',
      SWEEP_INTERVAL_MS: '600000',
    });
    const queue = inspect(t);
    const cleared = [await activate(t), await activate(t), await activate(t)];
    for (const lease of cleared) await jobSent(queue, lease);
    await t.http.post('/api/tokens/clear');
    const next = [await activate(t), await activate(t), await activate(t)];

    // The cleared leases' jobs fire first (their leases started earlier) and are removed.
    await waitFor(
      async () => (await Promise.all(cleared.map((l) => jobOf(queue, l)))).every((job) => job === undefined),
      { what: 'the cleared leases’ jobs to run' },
    );
    const rows = await usagesOf(t.db, 'id = ANY($1)', [cleared.map((l) => l.lease_id)]);
    expect(rows.map((r) => r.end_reason)).toEqual(['cleared', 'cleared', 'cleared']);
    for (const lease of next) {
      const row = await endedUsage(t.db, lease.lease_id);
      expect(row.end_reason).toBe('expired');
      expect((row.ended_at?.getTime() ?? 0) - row.expires_at.getTime()).toBeGreaterThanOrEqual(0);
    }
  });
});

describe('lazy expiry by activation', () => {
  it('counts the leases it ends: the token it takes, and the caller’s own', async () => {
    // No worker and no sweep: only activations end leases here.
    const t = await start({ ROLE: 'api', POOL_SIZE: '1', LEASE_TTL_MS: '300' });
    const expiredByActivation = () =>
      metric(t, /^token_lease_leases_ended_total\{reason="expired",by="activation"\}/);
    const pastExpiry = (lease: LeaseBody) =>
      waitFor(() => Date.now() > Date.parse(lease.expires_at) + 20, { what: 'the lease to run out' });

    const first = await activate(t);
    await pastExpiry(first);
    const second = await activate(t);
    expect(second.token_id).toBe(first.token_id);
    expect((await endedUsage(t.db, first.lease_id)).end_reason).toBe('expired');
    expect(await expiredByActivation()).toBe(1);

    await pastExpiry(second);
    const again = await activate(t, second.user_id);
    expect(again.lease_id).not.toBe(second.lease_id);
    expect((await endedUsage(t.db, second.lease_id)).end_reason).toBe('expired');
    expect(await expiredByActivation()).toBe(2);
  });
});

describe('the sweep', () => {
  it('ends leases whose time ran out, whatever happened to their jobs', async () => {
    const t = await start({ ROLE: 'all', POOL_SIZE: '5', LEASE_TTL_MS: '60000', SWEEP_INTERVAL_MS: '100' });
    const leases = [await activate(t), await activate(t)];
    await backdate(t.db, 61_000);

    for (const lease of leases) {
      expect((await endedUsage(t.db, lease.lease_id)).end_reason).toBe('expired');
    }
    await endedBy(t, 'sweep', 2);
  });

  it('runs in one process at a time', async () => {
    const db = await createTestDatabase();
    try {
      const t = await start({ ROLE: 'api', POOL_SIZE: '2' }, db);
      const lease = await activate(t);
      await backdate(t.db, 10 * 60_000);
      const holder = await db.pool.connect();
      try {
        await holder.query('BEGIN');
        await holder.query('SELECT pg_advisory_xact_lock(2, 0)');

        expect(await t.service.leases.sweep()).toBeNull();
        expect(await usagesOf(db, 'ended_at IS NULL')).toHaveLength(1);

        await holder.query('COMMIT');
      } finally {
        holder.release();
      }
      expect(await t.service.leases.sweep()).toBe(1);
      expect((await endedUsage(db, lease.lease_id)).end_reason).toBe('expired');
    } finally {
      for (const s of services.splice(0)) await s.close();
      await db.drop();
    }
  });
});

describe('when Redis fails', () => {
  let redis: RedisServer;

  beforeAll(async () => {
    redis = await startRedisServer();
  });
  afterAll(async () => {
    await redis.stop();
  });
  afterEach(async () => {
    await redis.start();
  });

  it('a lease whose job was lost (FLUSHALL) is free at expiry and ended by the sweep', async () => {
    const t = await start({
      ROLE: 'all',
      REDIS_URL: redis.url,
      LEASE_TTL_MS: '600',
      SWEEP_INTERVAL_MS: '400',
    });
    const lease = await activate(t);
    await jobSent(inspect(t, redis.url), lease);
    await redis.command('FLUSHALL');

    await waitFor(() => Date.now() > Date.parse(lease.expires_at), { what: 'the expiry' });
    const details = await t.http.get(`/api/tokens/${lease.token_id}`);
    expect(details.body.data).toMatchObject({ status: 'available', active_usage: null });

    const row = await endedUsage(t.db, lease.lease_id);
    expect(row.end_reason).toBe('expired');
    await endedBy(t, 'sweep', 1);
    const history = await t.http.get(`/api/tokens/${lease.token_id}/history`);
    expect(history.body.data.usages[0]).toMatchObject({ end_reason: 'expired' });
  });

  it('activation answers within 1 s with Redis down, and the lease still ends on time', async () => {
    const t = await start({
      ROLE: 'all',
      REDIS_URL: redis.url,
      LEASE_TTL_MS: '500',
      SWEEP_INTERVAL_MS: '200',
    });
    await redis.stop();

    const started = Date.now();
    const res = await t.http.post('/api/tokens/activate').send({ user_id: newUserId() });
    const elapsed = Date.now() - started;

    expect(res.status).toBe(201);
    expect(elapsed).toBeLessThan(1_000);
    const [row] = await usagesOf(t.db, 'id = $1', [res.body.data.lease_id]);
    expect(row?.ended_at).toBeNull();
    await waitFor(() => metric(t, /^token_lease_release_enqueue_failures_total /).then((n) => n === 1), {
      what: 'the failed enqueue to be counted',
    });
    const ready = await t.http.get('/readyz');
    expect(ready.status).toBe(200);
    expect(ready.body.data.checks).toEqual({ postgres: 'up', redis: 'down' });

    const ended = await endedUsage(t.db, res.body.data.lease_id);
    expect(ended.end_reason).toBe('expired');
    expect((ended.ended_at?.getTime() ?? 0) - ended.expires_at.getTime()).toBeLessThan(1_000);
  });

  it('activation answers within 1 s while Redis stalls', async () => {
    const t = await start({ ROLE: 'api', REDIS_URL: redis.url, LEASE_TTL_MS: '60000' });
    await redis.command('CLIENT', 'PAUSE', 1_500, 'ALL');

    const started = Date.now();
    const res = await t.http.post('/api/tokens/activate').send({ user_id: newUserId() });

    expect(res.status).toBe(201);
    expect(Date.now() - started).toBeLessThan(1_000);
    // The lease's job goes with a batch while Redis is still paused: the add gives up after the
    // producer's 1 s command timeout and is counted, and the sweep will end that lease.
    await waitFor(async () => (await metric(t, /^token_lease_release_enqueue_failures_total /)) >= 1, {
      what: 'the stalled add to give up',
    });
    await redis.command('CLIENT', 'UNPAUSE').catch(() => undefined);
  });

  it('recovers without a restart when Redis comes back empty', async () => {
    const t = await start({
      ROLE: 'all',
      REDIS_URL: redis.url,
      LEASE_TTL_MS: '1500',
      SWEEP_INTERVAL_MS: '600000',
    });
    await redis.stop();
    const duringOutage = await activate(t);
    await redis.start();

    // Redis is back, empty: new leases get jobs again, and the lease from the outage has its
    // job re-added, so both end on time through jobs (the sweep is 10 minutes away).
    await waitFor(async () => (await t.http.get('/readyz')).body.data.checks.redis === 'up', {
      what: 'Redis to be reported up',
    });
    const afterwards = await activate(t);
    for (const lease of [duringOutage, afterwards]) {
      const row = await endedUsage(t.db, lease.lease_id);
      expect(row.end_reason).toBe('expired');
      expect((row.ended_at?.getTime() ?? 0) - row.expires_at.getTime()).toBeLessThan(1_000);
    }
    await endedBy(t, 'job', 2);
  });

  it('a service whose Redis is down still shuts down cleanly and in time', async () => {
    const t = await startTestService({ ROLE: 'all', REDIS_URL: redis.url, LEASE_TTL_MS: '60000' });
    await activate(t);
    await redis.stop();
    await waitFor(async () => (await t.http.get('/readyz')).body.data.checks.redis === 'down', {
      what: 'Redis to be reported down',
    });

    const started = Date.now();
    const clean = await t.service.stop('test');
    await t.close();

    expect(clean).toBe(true);
    expect(Date.now() - started).toBeLessThan(10_000);
  });

  it('the sweep keeps running after Redis restarts without its data', async () => {
    const t = await start({
      ROLE: 'all',
      REDIS_URL: redis.url,
      LEASE_TTL_MS: '60000',
      SWEEP_INTERVAL_MS: '100',
    });
    await redis.stop();
    await redis.start();
    const before = await metric(t, /^token_lease_sweep_runs_total\{result="ran"\}/);
    const lease = await activate(t);
    await jobSent(inspect(t, redis.url), lease);
    await redis.command('FLUSHALL');
    await backdate(t.db, 61_000, lease.lease_id);

    expect((await endedUsage(t.db, lease.lease_id)).end_reason).toBe('expired');
    expect(await metric(t, /^token_lease_sweep_runs_total\{result="ran"\}/)).toBeGreaterThan(before);
  });
});

describe('a release job under a burst of expiries', () => {
  it('ends every lease that is due, not only its own, and leaves the others alone', async () => {
    // ROLE=api: no worker, so only the calls below end leases.
    const t = await start({ ROLE: 'api', POOL_SIZE: '3', LEASE_TTL_MS: '60000' });
    const a = await activate(t);
    const b = await activate(t);
    const c = await activate(t);
    await backdate(t.db, 61_000, a.lease_id);
    await backdate(t.db, 61_000, b.lease_id);

    expect(await t.service.leases.expireLease(a.lease_id)).toMatchObject({ outcome: 'ended' });

    const ended = await usagesOf(t.db, 'ended_at IS NOT NULL');
    expect(ended.map((u) => [u.id, u.end_reason]).sort()).toEqual(
      [[a.lease_id, 'expired'], [b.lease_id, 'expired']].sort(),
    );
    expect(await metric(t, /^token_lease_leases_ended_total\{reason="expired",by="job"\}/)).toBe(2);
    // b's own job then finds it ended; c's job, early, is told how long to wait.
    expect(await t.service.leases.expireLease(b.lease_id)).toEqual({ outcome: 'gone' });
    expect(await t.service.leases.expireLease(c.lease_id)).toMatchObject({ outcome: 'not_due' });
    expect(await usagesOf(t.db, 'ended_at IS NULL')).toHaveLength(1);
  });
});
