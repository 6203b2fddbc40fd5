import { randomUUID } from 'node:crypto';
import { Queue } from 'bullmq';
import { afterEach, describe, expect, inject, it } from 'vitest';
import { count, drainAndCheck, granted, report, undocumentedAnswers } from './faultChecks.js';
import { createTestDatabase, type TestDatabase, spawnService } from './helpers.js';
import { waitFor } from './harness/waitFor.js';
import { startLoad, type Load } from './harness/load.js';
import type { ServiceProcess } from './harness/processes.js';
import { RELEASE_QUEUE } from '../src/jobs/queue.js';
import { testRedisPrefix, testRedisUrl } from './redis.js';

// Processes killed with SIGKILL while clients keep using the service: separate ROLE=api and
// ROLE=worker OS processes on one database and one Redis prefix. After each crash the answers
// must have been documented ones (requests to the dead process excepted), and once the load has
// drained the invariants must hold with nothing left behind.

const LEASE_TTL_MS = 1_000;
const SWEEP_INTERVAL_MS = 1_000;
// How long a waiter stays live after its process's last heartbeat (sql/waiter_is_live.sql),
// and how often a live process refreshes it (src/domain/waiting.ts).
const WAITER_HEARTBEAT_WINDOW_MS = 5_000;
const WAITER_HEARTBEAT_EVERY_MS = 1_000;
const SCHEDULING_SLACK_MS = 3_000;
// A job the killed worker held runs again once its claim lapses and a worker's check finds it:
// within about two of these.
const RELEASE_JOB_LOCK_MS = 3_000;

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

interface Deployment {
  readonly db: TestDatabase;
  readonly redisPrefix: string;
  start(role: 'api' | 'worker'): Promise<{ proc: ServiceProcess; url: string }>;
}

/** A database and a Redis prefix for processes of any role, each started with `start`. */
async function deployment(env: Record<string, string>): Promise<Deployment> {
  const db = await createTestDatabase();
  cleanups.push(() => db.drop());
  const shared = {
    DATABASE_URL: db.url,
    REDIS_PREFIX: testRedisPrefix(inject('runId')),
    LEASE_TTL_MS: String(LEASE_TTL_MS),
    SWEEP_INTERVAL_MS: String(SWEEP_INTERVAL_MS),
    RELEASE_JOB_LOCK_MS: String(RELEASE_JOB_LOCK_MS),
    ...env,
  };
  return {
    db,
    redisPrefix: shared.REDIS_PREFIX,
    async start(role) {
      const proc = spawnService({ ...shared, ROLE: role });
      cleanups.push(async () => {
        proc.kill('SIGKILL');
        await proc.exited();
      });
      return { proc, url: `http://127.0.0.1:${await proc.port()}` };
    },
  };
}

async function metric(url: string, line: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const found = text.split('\n').find((l) => l.startsWith(line));
  return found === undefined ? 0 : Number(found.split(' ').at(-1));
}

const endedByJob = 'token_lease_leases_ended_total{reason="expired",by="job"}';

/**
 * Waits until the worker at `workerUrl` has ended a lease by its release job. The load's own
 * leases are mostly released or renewed before they run out (the faster the machine, the more
 * so), so each probe also has the load abandon one lease: only expiry ends those, by job unless
 * the sweep gets there first.
 */
async function untilAJobEndsALease(load: Load, workerUrl: string, what: string): Promise<void> {
  await waitFor(
    async () => {
      await load.abandon();
      return (await metric(workerUrl, endedByJob)) > 0;
    },
    { timeoutMs: 15_000, intervalMs: 250, what },
  );
}

describe('processes killed mid-run', () => {
  it('a worker SIGKILLed and restarted: answers are unaffected, every lease and every release job still ends', async () => {
    // A pool larger than the load's users, with room for the leases it abandons.
    const d = await deployment({ POOL_SIZE: '40' });
    const [api, first] = await Promise.all([d.start('api'), d.start('worker')]);
    const load = startLoad({ baseUrls: [api.url], clients: 4, usersPerClient: 8, waitSeconds: 1, deadlineMs: 5_000 });
    cleanups.push(() => load.stop());
    await load.until('leases granted', granted, { count: 10 });
    await untilAJobEndsALease(load, first.url, 'the worker to end leases');

    first.proc.kill('SIGKILL');
    await first.proc.exited();
    // With no worker at all, expired leases still free their tokens (lazy expiry).
    await load.until('leases granted with no worker running', granted, { since: Date.now(), count: 10 });

    const second = await d.start('worker');
    await load.until('leases granted after the restart', granted, { since: Date.now(), count: 10 });
    await untilAJobEndsALease(load, second.url, 'the new worker to run release jobs');

    await drainAndCheck(d.db, load, { leaseTtlMs: LEASE_TTL_MS, sweepIntervalMs: SWEEP_INTERVAL_MS });
    report('worker killed', load.answers);
    // The API never failed: not even a 503.
    expect(undocumentedAnswers(load.answers, false)).toEqual([]);

    // The jobs that fell due while no worker ran have been processed too, and any the killed
    // worker held is taken back once its claim lapses and the new worker finds it stalled.
    const queue = new Queue(RELEASE_QUEUE, { connection: { url: testRedisUrl }, prefix: d.redisPrefix });
    try {
      await waitFor(
        async () => {
          const counts = await queue.getJobCounts('delayed', 'wait', 'active', 'prioritized');
          return Object.values(counts).every((n) => n === 0);
        },
        { timeoutMs: 4 * RELEASE_JOB_LOCK_MS + 15_000, intervalMs: 250, what: 'the release queue to drain' },
      ).catch(async (err: unknown) => {
        // What is left, and why: each job's state, attempts and last error.
        const left = await queue.getJobs(['delayed', 'wait', 'active', 'prioritized']);
        const jobs = await Promise.all(
          left.map(async (job) => ({
            id: job.id,
            state: await job.getState(),
            attemptsMade: job.attemptsMade,
            stalledCounter: job.stalledCounter,
            failedReason: job.failedReason,
            addedAt: job.timestamp,
            processedOn: job.processedOn,
          })),
        );
        throw new Error(`${String(err)}; left at ${Date.now()}: ${JSON.stringify(jobs)}`);
      });
    } finally {
      await queue.close();
    }
  }, 150_000);

  it('an API process SIGKILLed mid-request, waiters included: its waiters stop holding the queue within the heartbeat window', async () => {
    const d = await deployment({ POOL_SIZE: '3', DATABASE_CONNECT_TIMEOUT_MS: '1000', DATABASE_STATEMENT_TIMEOUT_MS: '1000' });
    const [doomed, survivor] = await Promise.all([d.start('api'), d.start('api'), d.start('worker')]);
    const baseUrls = [doomed.url, survivor.url];
    const load = startLoad({ baseUrls, clients: 6, waitSeconds: 2, waitShare: 0.3, deadlineMs: 5_000 });
    cleanups.push(() => load.stop());
    await load.until('leases granted', granted, { count: 10 });

    // Waiters of the process about to die, with a deadline far off: only the heartbeat can
    // take them out of the queue once their process is gone.
    const stranded = Array.from({ length: 4 }, () => randomUUID());
    const answers = stranded.map((userId) => {
      const sentAt = Date.now();
      return fetch(`${doomed.url}/api/tokens/activate?wait=30`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ user_id: userId }),
      }).then(
        async (res) => ({ userId, sentAt, status: res.status, body: (await res.json()) as any }),
        () => ({ userId, sentAt, status: 0, body: undefined }),
      );
    });
    await waitFor(async () => (await count(d.db, 'SELECT count(*) AS n FROM waiters WHERE user_id = ANY($1)', [stranded])) > 0, {
      what: 'a waiter of the doomed process to queue',
    });

    const killedAt = Date.now();
    doomed.proc.kill('SIGKILL');
    baseUrls.splice(0, baseUrls.length, survivor.url);
    await doomed.proc.exited();
    const strandedAnswers = await Promise.all(answers);
    for (const answer of strandedAnswers) {
      const lease = answer.status === 201 ? answer.body.data : undefined;
      load.observations.push({
        op: 'activate',
        userId: answer.userId,
        sentAt: answer.sentAt,
        receivedAt: Date.now(),
        status: answer.status,
        lease: lease === undefined ? undefined : { leaseId: lease.lease_id, tokenId: lease.token_id, fence: lease.fence },
      });
    }
    // It did die mid-request.
    expect([...strandedAnswers, ...load.answers.filter((a) => a.baseUrl === doomed.url)].some((a) => a.status === 0)).toBe(true);

    await waitFor(
      async () =>
        (await count(d.db, 'SELECT count(*) AS n FROM waiters w WHERE user_id = ANY($1) AND waiter_is_live(w, clock_timestamp())', [stranded])) === 0,
      {
        timeoutMs: WAITER_HEARTBEAT_WINDOW_MS + WAITER_HEARTBEAT_EVERY_MS + SCHEDULING_SLACK_MS,
        intervalMs: 100,
        what: 'the dead process’s waiters to stop counting',
      },
    );
    const freedAt = Date.now();
    console.log(`dead waiters held the queue for ${freedAt - killedAt} ms after the kill`);
    await load.until(
      'the surviving API to grant a lease asked for after that',
      (a) => granted(a) && a.baseUrl === survivor.url && a.sentAt >= freedAt,
      { timeoutMs: LEASE_TTL_MS + SCHEDULING_SLACK_MS + 5_000 },
    );
    await waitFor(async () => (await count(d.db, 'SELECT count(*) AS n FROM waiters WHERE user_id = ANY($1)', [stranded])) === 0, {
      timeoutMs: SWEEP_INTERVAL_MS + SCHEDULING_SLACK_MS,
      what: 'the sweep to purge the dead waiters',
    });

    await drainAndCheck(d.db, load, { leaseTtlMs: LEASE_TTL_MS, sweepIntervalMs: SWEEP_INTERVAL_MS });
    report('api killed', load.answers);
    // Requests to the killed process may have had no answer; everything else was documented.
    const toSurvivor = load.answers.filter((a) => a.baseUrl === survivor.url);
    expect(undocumentedAnswers(toSurvivor)).toEqual([]);
    expect(undocumentedAnswers(load.answers.filter((a) => a.status !== 0))).toEqual([]);
  });
});
