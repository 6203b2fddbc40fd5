import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';

export interface Sweeper {
  /** Stops the timer and waits for a run in progress. */
  stop(): Promise<void>;
}

/**
 * Runs `sweep` now and then every `intervalMs` after the previous run ends. The trigger is a
 * timer in this process, not a job in Redis, so it keeps running when Redis loses its data or
 * is down; the sweep itself takes an advisory lock, so one runs at a time across processes.
 */
export function startSweeper(deps: {
  sweep: () => Promise<number | null>;
  intervalMs: number;
  log: Logger;
  metrics: Metrics;
}): Sweeper {
  const { log, metrics } = deps;
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;
  let stopped = false;

  async function runOnce(): Promise<void> {
    const started = Date.now();
    try {
      const ended = await deps.sweep();
      metrics.sweepRuns.inc({ result: ended === null ? 'skipped' : 'ran' });
      const fields = { ended, ms: Date.now() - started };
      if (ended !== null && ended > 0) log.info(fields, 'sweep ended leases');
      else log.debug(fields, 'sweep ran');
    } catch (err) {
      metrics.sweepRuns.inc({ result: 'failed' });
      log.error({ err }, 'sweep failed');
    }
  }

  function schedule(delayMs: number): void {
    if (stopped) return;
    timer = setTimeout(() => {
      running = runOnce().finally(() => {
        running = undefined;
        schedule(deps.intervalMs);
      });
    }, delayMs);
  }

  schedule(0);
  return {
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await running;
    },
  };
}
