import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import { type Periodic, startPeriodic } from './periodic.js';

export type Sweeper = Periodic;

/**
 * Runs `sweep` now and then every `intervalMs` (see startPeriodic); the sweep itself takes an
 * advisory lock, so one runs at a time across processes.
 */
export function startSweeper(deps: {
  sweep: () => Promise<number | null>;
  intervalMs: number;
  log: Logger;
  metrics: Metrics;
}): Sweeper {
  const { log, metrics } = deps;
  return startPeriodic(async () => {
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
  }, deps.intervalMs);
}
