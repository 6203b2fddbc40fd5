import { DelayedError, type Job } from 'bullmq';
import { z } from 'zod';
import type { Leases } from '../domain/leases.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import { RELEASE_QUEUE, type ReleaseJobData } from './queue.js';
import type { RedisConnection } from './redis.js';
import { startWorker } from './worker.js';

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
  /** See WorkerOptions (src/jobs/worker.ts). */
  connection: RedisConnection;
  prefix: string;
  concurrency: number;
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

  const { worker, close } = startWorker<ReleaseJobData>({
    ...deps,
    queue: RELEASE_QUEUE,
    name: 'worker',
    graceMs: RUNNING_JOBS_GRACE_MS,
    run: release,
  });
  worker.on('failed', (job, err) => {
    metrics.releaseJobFailures.inc();
    log.warn({ err, jobId: job?.id, attempts: job?.attemptsMade }, 'release job failed');
  });
  return { close };
}

/** How long close() waits for running jobs: each is a statement or two, unless Redis is away. */
const RUNNING_JOBS_GRACE_MS = 5_000;
