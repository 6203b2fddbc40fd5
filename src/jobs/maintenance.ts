import type { MaintenanceReport } from '../domain/maintenance.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import { type Periodic, startPeriodic } from './periodic.js';

/**
 * Runs the database upkeep (domain/maintenance.ts) now and then every `intervalMs`, in every
 * worker; an advisory lock lets one run at a time across all of them.
 */
export function startMaintenance(deps: {
  maintain: () => Promise<MaintenanceReport | null>;
  intervalMs: number;
  log: Logger;
  metrics: Metrics;
}): Periodic {
  const { log, metrics } = deps;
  return startPeriodic(async () => {
    const started = Date.now();
    try {
      const report = await deps.maintain();
      metrics.maintenanceRuns.inc({ result: report === null ? 'skipped' : 'ran' });
      if (report === null) return;
      for (const table of report.vacuumed) metrics.vacuums.inc({ table: table.table });
      metrics.usagesRemoved.inc(report.usagesRemoved);
      metrics.eventsRemoved.inc(report.eventsRemoved);
      const fields = { ...report, ms: Date.now() - started };
      const removed = report.usagesRemoved + report.eventsRemoved + report.deliveriesRemoved + report.activityRemoved;
      if (report.vacuumed.length > 0 || removed > 0) log.info(fields, 'maintenance ran');
      else log.debug(fields, 'maintenance ran');
    } catch (err) {
      metrics.maintenanceRuns.inc({ result: 'failed' });
      log.error({ err }, 'maintenance failed');
    }
  }, deps.intervalMs);
}
