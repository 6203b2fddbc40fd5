import { DelayedError, Queue, type Job } from 'bullmq';
import type { EventFeed } from '../domain/eventFeed.js';
import type { DueDelivery, Webhooks } from '../domain/webhooks.js';
import type { WebhookPoster } from '../domain/webhookPost.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import { startPeriodic } from './periodic.js';
import type { RedisConnection } from './redis.js';
import { startWorker } from './worker.js';

// Webhook deliveries (docs/events.md, "Webhooks"): one BullMQ job per delivery, id
// `delivery-<id>`, that attempts it when it is due and, after a failure, moves itself back to
// delayed until the next attempt. Redis is not the truth: the rows are. The fan-out turns the
// event log into deliveries (a cursor in PostgreSQL), and the sweep gives every pending delivery
// that is due soon its job back, so a change always leads to its deliveries even when Redis lost
// its data or a worker died between the commit and the add. An add whose job exists is ignored,
// so the sweep never makes a second job for a delivery, and the claim in SQL lets only one run
// of a job post an attempt.

export const DELIVERY_QUEUE = 'webhook-delivery';

export const deliveryJobId = (deliveryId: number) => `delivery-${deliveryId}`;

interface DeliveryJobData {
  readonly deliveryId: number;
}

const JOB_OPTIONS = {
  // A job that throws (PostgreSQL unreachable) is tried again soon; once it gives up it is
  // removed, so that the sweep can add it again: a failed job kept in Redis would block its id.
  attempts: 5,
  backoff: { type: 'exponential', delay: 1_000 },
  removeOnComplete: true,
  removeOnFail: true,
} as const;

export interface DeliveryQueue {
  /** The BullMQ queue itself, for the queue board (src/http/queueBoard.ts). */
  readonly queue: Queue<DeliveryJobData>;
  /** Adds the jobs of these deliveries (a job that exists is left as it is). */
  add(deliveries: readonly DueDelivery[]): Promise<void>;
  /** Makes a delivery's job run now (a replay): an existing delayed job is replaced. */
  runNow(deliveryId: number): Promise<void>;
  close(): Promise<void>;
}

export function createDeliveryQueue(deps: { connection: RedisConnection; prefix: string; log: Logger }): DeliveryQueue {
  const { log } = deps;
  const queue = new Queue<DeliveryJobData>(DELIVERY_QUEUE, {
    connection: deps.connection,
    prefix: deps.prefix,
    skipWaitingForReady: true,
    skipVersionCheck: true,
    defaultJobOptions: JOB_OPTIONS,
  });
  queue.on('error', (err) => {
    log.debug({ err }, 'delivery queue error');
  });
  const jobOf = (d: DueDelivery) => ({
    name: 'deliver',
    data: { deliveryId: d.id },
    opts: { jobId: deliveryJobId(d.id), delay: d.delayMs },
  });
  return {
    queue,
    async add(deliveries) {
      if (deliveries.length === 0) return;
      await queue.addBulk(deliveries.map(jobOf));
    },
    async runNow(deliveryId) {
      // A job running now cannot be removed: it finds the delivery due again when it records its
      // attempt, and its next run attempts it.
      await queue.remove(deliveryJobId(deliveryId)).catch(() => 0);
      await queue.add('deliver', { deliveryId }, { jobId: deliveryJobId(deliveryId), delay: 0 });
    },
    close: () => queue.close(),
  };
}

export interface DeliveryWorker {
  close(): Promise<void>;
}

/**
 * Runs delivery jobs, follows the event log into deliveries (every FANOUT_INTERVAL_MS, up to the
 * log's horizon) and sweeps pending deliveries back into Redis every `sweepIntervalMs`.
 */
export function startDeliveryWorker(deps: {
  connection: RedisConnection;
  queue: DeliveryQueue;
  prefix: string;
  concurrency: number;
  lockMs: number;
  webhooks: Webhooks;
  poster: WebhookPoster;
  feed: EventFeed;
  sweepIntervalMs: number;
  log: Logger;
  metrics: Metrics;
}): DeliveryWorker {
  const { webhooks, poster, log, metrics, queue } = deps;

  async function deliver(job: Job<DeliveryJobData>, token?: string): Promise<string> {
    // Data from Redis: checked, not trusted.
    const deliveryId: unknown = job.data.deliveryId;
    if (typeof deliveryId !== 'number' || !Number.isSafeInteger(deliveryId)) return 'invalid';
    const result = await webhooks.attempt(deliveryId, poster);
    if (result.outcome !== 'not_due' && result.outcome !== 'skipped') metrics.webhookAttempts.inc({ result: result.outcome });
    if (result.outcome === 'retry' || result.outcome === 'not_due') {
      // The same job waits for the next attempt, so the sweep finds it and adds nothing.
      await job.moveToDelayed(Date.now() + result.delayMs, token);
      throw new DelayedError();
    }
    log.debug({ deliveryId, jobId: job.id, outcome: result.outcome }, 'webhook delivery done');
    return result.outcome;
  }

  const { worker, close: closeWorker } = startWorker<DeliveryJobData>({
    ...deps,
    queue: DELIVERY_QUEUE,
    name: 'delivery worker',
    graceMs: RUNNING_JOBS_GRACE_MS,
    run: deliver,
  });
  worker.on('failed', (job, err) => {
    log.warn({ err, jobId: job?.id, attempts: job?.attemptsMade }, 'delivery job failed');
  });

  // The fan-out: events up to the horizon become deliveries, and their jobs are added at once.
  let fannedOut = -1;
  const fanOut = startPeriodic(async () => {
    try {
      const upTo = await deps.feed.horizon();
      if (upTo <= fannedOut) return;
      const made = await webhooks.fanOut(upTo);
      fannedOut = upTo;
      if (made.length === 0) return;
      await queue.add(made).catch((err: unknown) => {
        log.warn({ err, count: made.length }, 'delivery jobs not added; the sweep will add them');
      });
    } catch (err) {
      log.warn({ err }, 'events could not be turned into deliveries');
    }
  }, FANOUT_INTERVAL_MS);

  // The sweep: every pending delivery due before the next sweep gets its job (again).
  const sweep = startPeriodic(async () => {
    try {
      const due = await webhooks.due(deps.sweepIntervalMs * 2, SWEEP_BATCH);
      await queue.add(due);
      log.debug({ count: due.length }, 'webhook delivery sweep ran');
    } catch (err) {
      log.warn({ err }, 'webhook delivery sweep failed');
    }
  }, deps.sweepIntervalMs);

  return {
    // Stop making work, then the worker (startWorker's close). An attempt abandoned mid-way is
    // attempted again once its claim runs out.
    async close() {
      const steps = [() => fanOut.stop(), () => sweep.stop(), closeWorker];
      for (const step of steps) await step().catch((err: unknown) => log.warn({ err }, 'delivery worker close step failed'));
    },
  };
}

/** How often the worker turns new events into deliveries: a delivery starts within about this of its event. */
const FANOUT_INTERVAL_MS = 100;
const SWEEP_BATCH = 1_000;
/** An attempt takes at most 10 s. */
const RUNNING_JOBS_GRACE_MS = 11_000;
