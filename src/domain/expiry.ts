// Taking tokens back on time: the release job of each lease, the periodic sweep that ends any
// lease whose job was lost, and the list of open leases from which lost jobs are re-added.

import * as sql from '../db/queries.js';
import { withTransaction } from '../db/tx.js';
import { type Lease, type LeasesDeps, type Usage, countEnded, toLease, toUsage } from './lease.js';

export type ExpireOutcome =
  | { readonly outcome: 'ended'; readonly usage: Usage }
  | { readonly outcome: 'not_due'; readonly expiresAt: Date; readonly remainingMs: number }
  | { readonly outcome: 'gone' };

const SWEEP_BATCH = 1_000;
/** Leases one release job ends at most, besides its own. */
const EXPIRY_BATCH = 1_000;

/**
 * The release job's work: ends the lease if it is still open and due, and with it every other
 * due lease of its pool. A duplicate, retried or late job, or one for a lease that ended
 * otherwise, changes nothing of its own (`gone`). A lease that is open but not due (renewed, or
 * the job ran early by the database clock) answers `not_due` with the time left.
 */
export async function expireLease(deps: LeasesDeps, leaseId: string): Promise<ExpireOutcome> {
  const { ended, own } = await sql.expireLease(deps.pool, { leaseId, limit: EXPIRY_BATCH });
  countEnded(deps, ended, 'job');
  if (ended.length > 1) deps.log.debug({ leaseId, ended: ended.length }, 'due leases ended by one release job');
  if (own.outcome === 'ended') {
    if (!ended.some((usage) => usage.id === leaseId)) countEnded(deps, [own as sql.UsageRow], 'job');
    return { outcome: 'ended', usage: toUsage(own) };
  }
  if (own.outcome === 'not_due' && own.expires_at !== null) {
    return { outcome: 'not_due', expiresAt: own.expires_at, remainingMs: own.remaining_ms ?? 0 };
  }
  return { outcome: 'gone' };
}

/** Every open lease with the time left on it, a page at a time, in a stable order. */
export async function* openLeases(
  deps: LeasesDeps,
  pageSize = 1_000,
): AsyncGenerator<{ lease: Lease; remainingMs: number }[]> {
  let afterTokenId: string | null = null;
  for (;;) {
    const rows = await sql.listOpenLeases(deps.pool, { afterTokenId, limit: pageSize });
    if (rows.length > 0) yield rows.map((row) => ({ lease: toLease(row), remainingMs: row.remaining_ms }));
    const last = rows.at(-1);
    if (last === undefined || rows.length < pageSize) return;
    afterTokenId = last.token_id;
  }
}

/**
 * Ends every open lease whose time is up, pool by pool. Only one sweep runs at a time across
 * all processes; returns null when another process holds the sweep lock.
 */
export async function sweep(deps: LeasesDeps): Promise<number | null> {
  let total = 0;
  let first = true;
  for (const poolId of await sql.listPoolIds(deps.pool)) {
    for (;;) {
      // A transaction per batch, so that no token stays locked longer than its batch.
      const batch = await withTransaction(deps.pool, async (tx) => {
        if (!(await sql.tryLockSweep(tx))) return null;
        // Places of waiters that timed out or whose process died go too.
        if (first) await sql.purgeDeadWaiters(tx);
        first = false;
        return sql.endDueLeases(tx, { poolId, limit: SWEEP_BATCH });
      });
      if (batch === null) return total === 0 ? null : total;
      countEnded(deps, batch, 'sweep');
      total += batch.length;
      if (batch.length < SWEEP_BATCH) break;
    }
  }
  return total;
}
