import { Worker, type Job } from 'bullmq';
import type { Logger } from '../logger.js';
import { within } from '../timeouts.js';
import { logConnectionState, type RedisConnection } from './redis.js';

/** How a queue's jobs run in this process (the release jobs, the webhook deliveries). */
export interface WorkerOptions<D> {
  readonly queue: string;
  /** For the log lines: 'worker', 'delivery worker'. */
  readonly name: string;
  /** Built in main/ (createWorkerConnection); the caller closes it after the worker. */
  readonly connection: RedisConnection;
  readonly prefix: string;
  readonly concurrency: number;
  /**
   * How long a running job stays claimed without its worker renewing the claim, and how often
   * workers look for claims that lapsed: a job whose worker died runs again within about two
   * of these.
   */
  readonly lockMs: number;
  /** How long close() waits for the jobs running here. */
  readonly graceMs: number;
  readonly log: Logger;
  readonly run: (job: Job<D>, token?: string) => Promise<string>;
}

export interface StartedWorker<D> {
  readonly worker: Worker<D, string>;
  /**
   * Stops fetching, waits up to graceMs for the jobs running here, then closes by force.
   * BullMQ's graceful close() waits for its blocking connection to end, and a connection waiting
   * between reconnect attempts never does (Redis down: bullmq #4656), so a worker told to stop
   * during an outage would hang until SHUTDOWN_TIMEOUT_MS and exit 1. A job still running at the
   * end is abandoned; once its claim lapses it runs again elsewhere, which the jobs allow for.
   */
  readonly close: () => Promise<void>;
}

export function startWorker<D>(options: WorkerOptions<D>): StartedWorker<D> {
  // The jobs this process is running, so that close() can wait for them itself.
  const running = new Set<Promise<string>>();
  const tracked = (job: Job<D>, token?: string): Promise<string> => {
    const work = options.run(job, token);
    running.add(work);
    const done = () => running.delete(work);
    work.then(done, done);
    return work;
  };
  const worker = new Worker<D, string>(options.queue, tracked, {
    connection: options.connection,
    prefix: options.prefix,
    concurrency: options.concurrency,
    lockDuration: options.lockMs,
    stalledInterval: options.lockMs,
    autorun: true,
  });
  logConnectionState(worker, options.log, options.name);
  return {
    worker,
    close: async () => {
      await worker.pause(true);
      await settleWithin(running, options.graceMs);
      await worker.close(true);
    },
  };
}

/** Waits until `running` is empty (a fetch in flight may still add a job) or `ms` have passed. */
async function settleWithin(running: ReadonlySet<Promise<unknown>>, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (running.size > 0 && Date.now() < deadline) {
    // allSettled never rejects: a rejection here is the time running out.
    await within(Promise.allSettled([...running]), deadline - Date.now()).catch(() => undefined);
  }
}
