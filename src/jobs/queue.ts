import { Queue } from 'bullmq';
import type { Lease, Leases, ReleaseScheduler } from '../domain/leases.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import type { RedisConnection } from './redis.js';

// Release jobs: one BullMQ delayed job per lease that ends it at its expiry. Redis is not the
// source of truth: a job that cannot be added is logged and counted, and the sweep ends that
// lease instead; reads treat it as expired at once anyway.
//
// Jobs are sent in batches, one Redis round trip per RELEASE_JOB_BATCH_MS rather than one per
// lease: a round trip per activation cost the API process a fifth of its CPU. A lease's job
// goes with the first batch after it has waited a whole RELEASE_JOB_BATCH_MS (or sooner if it
// falls due before the next one), so between one and two intervals after it was granted. A lease
// that ends before then (released, cleared, evicted) is taken out, since its job would only
// find the lease gone: a lease held for less than the interval costs Redis nothing. Sending
// with the very next batch instead gave a job to every lease of the bench's activate + release
// cycle still open when that batch went out, though each was released 10-30 ms after it was
// granted, and cost the API process 4-7% of its CPU per cycle. A process that dies with jobs
// unsent loses them, as when Redis is down: the sweep ends those leases. A shutdown sends them
// all.

export const RELEASE_QUEUE = 'lease-release';

export interface ReleaseJobData {
  readonly leaseId: string;
  readonly tokenId: string;
  readonly expiresAt: string;
}

/**
 * Unique per lease and per expiry: BullMQ ignores an add whose id already exists in any state,
 * so an id per token (or per user) would silently drop the next lease's job. Ids contain no ':'.
 */
export function releaseJobId(lease: Pick<Lease, 'leaseId' | 'expiresAt'>): string {
  return `release-${lease.leaseId}-${lease.expiresAt.getTime()}`;
}

const JOB_OPTIONS = {
  attempts: 8,
  backoff: { type: 'exponential', delay: 500 },
  // Finished jobs are not kept: Redis must not grow with traffic. Failed ones are kept a while
  // (bounded) for inspection; the sweep has ended those leases by then.
  removeOnComplete: true,
  removeOnFail: { age: 7 * 24 * 3600, count: 1_000 },
} as const;

export interface ReleaseQueue extends ReleaseScheduler {
  /** The BullMQ queue itself, for the queue board (src/http/queueBoard.ts). */
  readonly queue: Queue<ReleaseJobData>;
  /** Re-adds the release job of every open lease (existing jobs are left as they are). */
  resync(leases: Leases): Promise<number>;
  /** How many jobs are delayed (due later), waiting (due, not started) and failed (out of attempts). */
  jobCounts(): Promise<Record<'delayed' | 'waiting' | 'failed', number>>;
  ping(): Promise<void>;
  close(): Promise<void>;
}

export function createReleaseQueue(deps: {
  connection: RedisConnection;
  prefix: string;
  /** The batch interval: a job waits one to two of these to be sent; 0 sends each at once. */
  batchMs: number;
  log: Logger;
  metrics: Metrics;
}): ReleaseQueue {
  const { connection, log, metrics } = deps;
  const queue = new Queue<ReleaseJobData>(RELEASE_QUEUE, {
    connection,
    prefix: deps.prefix,
    // Never wait for Redis: a down Redis must fail the add at once, not hold up an activation.
    skipWaitingForReady: true,
    skipVersionCheck: true,
    defaultJobOptions: JOB_OPTIONS,
  });
  queue.on('error', (err) => {
    log.debug({ err }, 'release queue error');
  });
  const pending = new Set<Promise<void>>();

  function jobFor(lease: Lease, delayMs: number) {
    const data: ReleaseJobData = {
      leaseId: lease.leaseId,
      tokenId: lease.tokenId,
      expiresAt: lease.expiresAt.toISOString(),
    };
    return { name: 'release', data, opts: { jobId: releaseJobId(lease), delay: delayMs } };
  }

  /** Adds jobs in one round trip (a MULTI for several) without waiting for Redis to answer. */
  function send(jobs: ReturnType<typeof jobFor>[]): void {
    const [first] = jobs;
    if (first === undefined) return;
    const adding = (jobs.length === 1 ? queue.add(first.name, first.data, first.opts) : queue.addBulk(jobs))
      .then(
        () => undefined,
        (err: unknown) => {
          metrics.enqueueFailures.inc(jobs.length);
          log.error(
            { err, leaseIds: jobs.map((job) => job.data.leaseId) },
            'release jobs not enqueued; the sweep will end these leases',
          );
        },
      )
      .finally(() => pending.delete(adding));
    pending.add(adding);
  }

  // The jobs not sent yet, by lease id (a renewal replaces its lease's entry), with the time
  // each falls due by this process's clock and the order in which their leases were first queued.
  const unsent = new Map<string, { lease: Lease; dueAt: number; seq: number }>();
  let queued = 0;
  let batchTimer: NodeJS.Timeout | undefined;
  let batchAt = 0;
  // The last lease queued when the timer was set: it and those before it have waited a whole
  // interval when the timer fires.
  let waitedUpTo = 0;

  function armBatch(): void {
    waitedUpTo = queued;
    batchAt = Date.now() + deps.batchMs;
    batchTimer = setTimeout(sendBatch, deps.batchMs);
  }

  /** Sends the jobs that have waited an interval or fall due before the next batch; `all`: every job. */
  function sendBatch(all = false): void {
    clearTimeout(batchTimer);
    batchTimer = undefined;
    const now = Date.now();
    const jobs: ReturnType<typeof jobFor>[] = [];
    for (const [leaseId, { lease, dueAt, seq }] of unsent) {
      if (!all && seq > waitedUpTo && dueAt - now > deps.batchMs) continue;
      jobs.push(jobFor(lease, Math.max(0, dueAt - now)));
      unsent.delete(leaseId);
    }
    send(jobs);
    if (unsent.size > 0) armBatch();
  }

  function scheduleRelease(lease: Lease, delayMs: number): void {
    if (deps.batchMs === 0) {
      send([jobFor(lease, delayMs)]);
      return;
    }
    const seq = unsent.get(lease.leaseId)?.seq ?? ++queued;
    const dueAt = Date.now() + delayMs;
    unsent.set(lease.leaseId, { lease, dueAt, seq });
    if (batchTimer === undefined) armBatch();
    // A lease due before the batch goes out (a TTL shorter than the interval, a renewal capped by
    // MAX_LEASE_MS) brings the batch forward to its expiry rather than wait for it.
    if (dueAt < batchAt) {
      clearTimeout(batchTimer);
      batchAt = dueAt;
      batchTimer = setTimeout(sendBatch, delayMs);
    }
  }

  function leaseEnded(leaseId: string): void {
    unsent.delete(leaseId);
  }

  async function resync(leases: Leases): Promise<number> {
    let added = 0;
    for await (const page of leases.openLeases()) {
      await queue.addBulk(page.map(({ lease, remainingMs }) => jobFor(lease, remainingMs)));
      added += page.length;
    }
    return added;
  }

  return {
    queue,
    scheduleRelease,
    leaseEnded,
    resync,
    async jobCounts() {
      const counts = await queue.getJobCounts('delayed', 'waiting', 'failed');
      return { delayed: counts.delayed ?? 0, waiting: counts.waiting ?? 0, failed: counts.failed ?? 0 };
    },
    // A read of one of the queue's keys rather than PING: on a Redis Cluster PING goes to any
    // master, and is answered while the master of the queue's slot is down; this asks that one.
    async ping() {
      await connection.exists(`${deps.prefix}:${RELEASE_QUEUE}:meta`);
    },
    async close() {
      sendBatch(true);
      // Adds in flight are bounded by the connection's command timeout.
      await Promise.allSettled([...pending]);
      await queue.close();
    },
  };
}
