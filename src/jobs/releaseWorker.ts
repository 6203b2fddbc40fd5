import { DelayedError, Worker, type Job } from 'bullmq';
import { z } from 'zod';
import type { Leases } from '../domain/leases.js';
import type { Logger } from '../logger.js';
import { RELEASE_QUEUE, type ReleaseJobData } from './queue.js';
import { logConnectionState, reconnectBackoff } from './redis.js';

/** How long a closing worker may wait for its running jobs and for Redis. */
const CLOSE_GRACE_MS = 5_000;

const jobData = z.object({ leaseId: z.guid(), expiresAt: z.string() });

export interface ReleaseWorker {
  /** Lets the running jobs finish, takes no new ones, closes the worker's connections. */
  close(): Promise<void>;
}

/**
 * Runs release jobs. Jobs run at least once, not exactly once (a stalled job runs again), so
 * the handler only ends a lease that is still open and due, in one conditional statement.
 */
export function startReleaseWorker(deps: {
  redisUrl: string;
  prefix: string;
  concurrency: number;
  leases: Leases;
  log: Logger;
  /** Whether Redis answers right now (any connection to the same server tells). */
  redisReachable: () => boolean;
}): ReleaseWorker {
  const { leases, log } = deps;

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
      // Due later by the database clock than by ours: wait until it is due.
      await job.moveToDelayed(Date.now() + result.remainingMs + 1, token);
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

  const worker = new Worker<ReleaseJobData, string>(RELEASE_QUEUE, release, {
    // Workers keep retrying commands while Redis is away (maxRetriesPerRequest: null is set by
    // BullMQ for its blocking connection), and reconnect forever.
    connection: { url: deps.redisUrl, maxRetriesPerRequest: null, retryStrategy: reconnectBackoff },
    prefix: deps.prefix,
    concurrency: deps.concurrency,
    autorun: true,
  });
  logConnectionState(worker, log, 'worker');
  worker.on('failed', (job, err) => {
    log.warn({ err, jobId: job?.id, attempts: job?.attemptsMade }, 'release job failed');
  });

  return {
    async close() {
      const closed = worker.close();
      // With Redis unreachable, close() waits for commands that can never be sent (and no job
      // can be marked done anyway): drop the connections at once, or after a grace period if
      // Redis seemed up, so that shutdown still ends in time.
      const graceMs = deps.redisReachable() ? CLOSE_GRACE_MS : 0;
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<'late'>((resolve) => {
        timer = setTimeout(() => resolve('late'), graceMs);
      });
      const outcome = await Promise.race([closed, late]);
      clearTimeout(timer);
      if (outcome === 'late') {
        log.warn({ graceMs }, 'release worker did not close in time; disconnecting');
        // Its jobs stay in Redis: a job it was running is retried once its lock expires.
        // Neither close() nor disconnect() settles while Redis is unreachable, so neither is
        // awaited; disconnecting stops the reconnection attempts.
        closed.catch(() => undefined);
        worker.disconnect().catch(() => undefined);
      }
    },
  };
}
