import { DelayedError, Worker, type Job } from 'bullmq';
import { z } from 'zod';
import type { Leases } from '../domain/leases.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import { within } from '../timeouts.js';
import { RELEASE_QUEUE, type ReleaseJobData } from './queue.js';
import { logConnectionState, type RedisConnection } from './redis.js';

const jobData = z.object({ leaseId: z.guid(), expiresAt: z.string() });

export interface ReleaseWorker {
  /** Lets the running jobs finish (for up to 5 s), then closes the worker's connections. */
  close(): Promise<void>;
}

/**
 * Runs release jobs. Jobs run at least once, not exactly once (a stalled job runs again), so
 * the handler only ends a lease that is still open and due, in one conditional statement.
 */
export function startReleaseWorker(deps: {
  /** Built in main/ (createWorkerConnection); the caller closes it after the worker. */
  connection: RedisConnection;
  prefix: string;
  concurrency: number;
  /**
   * How long a running job stays claimed without its worker renewing the claim, and how often
   * workers look for claims that lapsed: a job whose worker died runs again within about two
   * of these.
   */
  lockMs: number;
  leases: Leases;
  log: Logger;
  metrics: Metrics;
}): ReleaseWorker {
  const { leases, log, metrics } = deps;

  async function release(job: Job<ReleaseJobData>, token?: string): Promise<string> {
    const parsed = jobData.safeParse(job.data);
    if (!parsed.success) {
      log.warn({ jobId: job.id }, 'release job without a valid lease id; dropped');
      return 'invalid';
    }
    const { leaseId, expiresAt } = parsed.data;
    const result = await leases.expireLease(leaseId);
    if (result.outcome === 'not_due') {
      // Renewed since this job was added: the renewal added a job for the new expiry.
      if (result.expiresAt.getTime() > Date.parse(expiresAt)) return 'renewed';
      // Due later by the database clock than by ours: wait until it is due. (Never due here:
      // expire_lease waits for the lease's token and ends it if it is.)
      const delayMs = result.remainingMs + 1;
      await job.moveToDelayed(Date.now() + delayMs, token);
      throw new DelayedError();
    }
    if (result.outcome === 'ended') {
      const { usage } = result;
      log.debug(
        {
          leaseId,
          tokenId: usage.tokenId,
          jobId: job.id,
          lateMs: (usage.endedAt?.getTime() ?? 0) - usage.expiresAt.getTime(),
        },
        'lease expired',
      );
    }
    return result.outcome;
  }

  // The jobs this process is running, so that close() can wait for them itself (see close()).
  const running = new Set<Promise<string>>();
  function tracked(job: Job<ReleaseJobData>, token?: string): Promise<string> {
    const work = release(job, token);
    running.add(work);
    const done = () => running.delete(work);
    work.then(done, done);
    return work;
  }

  const worker = new Worker<ReleaseJobData, string>(RELEASE_QUEUE, tracked, {
    connection: deps.connection,
    prefix: deps.prefix,
    concurrency: deps.concurrency,
    lockDuration: deps.lockMs,
    stalledInterval: deps.lockMs,
    autorun: true,
  });
  logConnectionState(worker, log, 'worker');
  worker.on('failed', (job, err) => {
    metrics.releaseJobFailures.inc();
    log.warn({ err, jobId: job?.id, attempts: job?.attemptsMade }, 'release job failed');
  });

  return {
    // BullMQ's graceful close() waits for its blocking connection to end, and a connection
    // waiting between reconnect attempts never does (Redis down: bullmq #4656), so a worker told
    // to stop during an outage hung until SHUTDOWN_TIMEOUT_MS and exited 1. Instead: stop
    // fetching (pause without waiting), wait a bounded time for the jobs running here, then close
    // by force, which only disconnects. A job still running then is abandoned; once its lock
    // expires it runs again elsewhere, which changes nothing but the lease it is due to end.
    async close() {
      await worker.pause(true);
      await settleWithin(running, RUNNING_JOBS_GRACE_MS);
      await worker.close(true);
    },
  };
}

/** How long close() waits for running jobs: each is a statement or two, unless Redis is away. */
const RUNNING_JOBS_GRACE_MS = 5_000;

/** Waits until `running` is empty (a fetch in flight may still add a job) or `ms` have passed. */
async function settleWithin(running: ReadonlySet<Promise<unknown>>, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (running.size > 0 && Date.now() < deadline) {
    // allSettled never rejects: a rejection here is the time running out.
    await within(Promise.allSettled([...running]), deadline - Date.now()).catch(() => undefined);
  }
}
