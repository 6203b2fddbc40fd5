// Upkeep the service does for itself, so that cost stays flat as work and history grow, even on
// a PostgreSQL whose autovacuum is off or slow: the hot tables are vacuumed once their dead rows
// pass a threshold, usages that ended more than HISTORY_RETENTION_DAYS ago, and events, webhook
// deliveries and the per-minute activity counts as old, are removed in small batches, and so are the answers kept for
// Idempotency-Keys after a day. One worker at a time (advisory lock class 5); nothing here takes
// a lock that a lease statement waits for.

import type { Pool, Queryable } from '../db/pool.js';
import { deleteOldEvents } from '../db/events.js';
import { deleteOldActivity } from '../db/stats.js';
import { deleteOldDeliveries } from '../db/webhooks.js';
import * as sql from '../db/queries.js';
import { deleteOldAnswers } from '../db/tokenValues.js';
import { ANSWER_RETENTION_HOURS } from './idempotency.js';
import type { Logger } from '../logger.js';

export interface MaintenanceDeps {
  readonly pool: Pool;
  readonly log: Logger;
  /** A hot table is vacuumed once it has this many dead rows. */
  readonly vacuumDeadRows: number;
  /** 0 keeps all history. */
  readonly historyRetentionDays: number;
  /** Rows per retention batch, and batches per run at most. */
  readonly retentionBatch?: number;
  readonly retentionBatchesPerRun?: number;
}

export interface MaintenanceReport {
  readonly vacuumed: ReadonlyArray<{ table: sql.HotTable; dead: number }>;
  readonly usagesRemoved: number;
  readonly eventsRemoved: number;
  readonly deliveriesRemoved: number;
  /** Minutes of a pool's refusal and wait counts (GET /api/stats). */
  readonly activityRemoved: number;
}

/** One upkeep run; null when another process holds the upkeep lock. */
export async function maintain(deps: MaintenanceDeps): Promise<MaintenanceReport | null> {
  const client = await deps.pool.connect();
  // pg-pool takes its own error listener off a client while it is checked out: without one, a
  // connection that breaks during the upkeep would be an unhandled 'error' event and end the
  // process. The statement in flight fails with the same error.
  const connection = { broken: false };
  const onError = () => {
    connection.broken = true;
  };
  client.on('error', onError);
  let locked = false;
  try {
    locked = await sql.tryLockMaintenance(client);
    if (!locked) return null;
    const usagesRemoved = await removeOld(deps, client, sql.deleteOldUsages);
    const eventsRemoved = await removeOld(deps, client, deleteOldEvents);
    const deliveriesRemoved = await removeOld(deps, client, deleteOldDeliveries);
    const activityRemoved = await removeOld(deps, client, deleteOldActivity);
    // The answers kept for retries with an Idempotency-Key are needed for a day at most.
    await deleteOldAnswers(client, ANSWER_RETENTION_HOURS);
    const vacuumed: Array<{ table: sql.HotTable; dead: number }> = [];
    for (const { table, dead } of await sql.deadRows(client)) {
      if (dead < deps.vacuumDeadRows) continue;
      await sql.vacuum(client, table);
      vacuumed.push({ table, dead });
    }
    return { vacuumed, usagesRemoved, eventsRemoved, deliveriesRemoved, activityRemoved };
  } finally {
    // A connection that could not give the lock back is closed, which gives it back.
    const kept = !connection.broken && (!locked || (await sql.unlockMaintenance(client).then(() => true, () => false)));
    client.off('error', onError);
    client.release(!kept);
  }
}

/** Runs a retention statement in batches until it removes less than a batch, or the run's share is done. */
async function removeOld(
  deps: MaintenanceDeps,
  client: Queryable,
  remove: (db: Queryable, args: { days: number; limit: number }) => Promise<number>,
): Promise<number> {
  if (deps.historyRetentionDays === 0) return 0;
  const batch = deps.retentionBatch ?? 1_000;
  let removed = 0;
  for (let i = 0; i < (deps.retentionBatchesPerRun ?? 100); i += 1) {
    const n = await remove(client, { days: deps.historyRetentionDays, limit: batch });
    removed += n;
    if (n < batch) break;
  }
  return removed;
}
