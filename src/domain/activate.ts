// Activation: gives a user a lease of the pool (sql/activate_lease.sql decides, in one round
// trip), or a place in the waiting queue when the pool is full and the caller will wait.

import { PoolExhaustedError } from '../errors.js';
import * as sql from '../db/queries.js';
import { type HeldLease, type LeasesDeps, held, leaseEnded, toLease } from './lease.js';
import { release } from './release.js';
import { ClientGoneError } from './waiting.js';

export interface ActivateOptions {
  /** How long to wait in the queue on a full pool; 0 (default): refuse at once. */
  readonly waitMs?: number;
  /** Aborted when the waiting client leaves. */
  readonly signal?: AbortSignal | undefined;
  /** The API client asking, if it is one: the new lease records it. */
  readonly clientId?: string | null;
  /** The pool's own limit on the waiters of this process (a named pool's max_waiters). */
  readonly maxWaiters?: number | undefined;
  /** The id of the request that asks, for the log lines of what it changes. */
  readonly reqId?: string | undefined;
}

/** One call of activate_lease(); the leases it ended as expired on the way are counted here. */
async function attempt(
  deps: LeasesDeps,
  userId: string,
  waiterId: string | null,
  clientId: string | null,
  reqId: string | undefined,
): Promise<sql.ActivateRow> {
  const row = await sql.activateLease(deps.pool, {
    poolId: deps.poolId,
    userId,
    ttlMs: deps.leaseTtlMs,
    evictOldest: deps.evictOldest ?? false,
    waiterId,
    clientId,
  });
  for (const leaseId of row.expired_lease_ids) leaseEnded(deps, leaseId, 'expired', 'activation', undefined, reqId);
  return row;
}

/**
 * Gives `userId` a lease: the one they hold if it has not run out, otherwise a new one on a
 * free token (or, with evict_oldest, the oldest lease's token), with the token's value if it has
 * one. On a full pool, waits up to
 * `waitMs` in the queue, first come first served; then throws PoolExhaustedError. A new lease
 * records `clientId`, the API client asking, if it is one.
 */
export async function activate(
  deps: LeasesDeps,
  userId: string,
  options: ActivateOptions = {},
): Promise<{ created: boolean; lease: HeldLease }> {
  const { metrics, log } = deps;
  const clientId = options.clientId ?? null;
  let row = await attempt(deps, userId, null, clientId, options.reqId);
  const waitMs = options.waitMs ?? 0;
  if (row.outcome !== 'created' && row.outcome !== 'existing' && waitMs > 0 && deps.waitingRoom) {
    deps.activity?.count(deps.poolId, 'waits');
    try {
      row = await deps.waitingRoom.wait({
        poolId: deps.poolId,
        maxWaiters: options.maxWaiters,
        userId,
        timeoutMs: waitMs,
        signal: options.signal,
        attempt: (waiterId) => attempt(deps, userId, waiterId, clientId, options.reqId),
      });
    } catch (err) {
      // The wait ran out: refused like any activation on a full pool.
      if (err instanceof PoolExhaustedError) {
        metrics.activations.inc({ pool: deps.poolName, outcome: 'exhausted' });
        deps.activity?.count(deps.poolId, 'refusals');
      }
      throw err;
    }
  }
  metrics.activations.inc({ pool: deps.poolName, outcome: row.outcome === 'queued' ? 'exhausted' : row.outcome });
  if (row.outcome !== 'created' && row.outcome !== 'existing') {
    deps.activity?.count(deps.poolId, 'refusals');
    throw new PoolExhaustedError(Math.max(1, Math.ceil(Number(row.wait_ms ?? 0) / 1000)));
  }
  const lease = toLease({ ...row, id: row.lease_id });
  if (row.evicted_lease_id !== null) {
    metrics.evictions.inc({ pool: deps.poolName });
    leaseEnded(deps, row.evicted_lease_id, 'evicted', 'activation', { token_id: lease.tokenId }, options.reqId);
  }
  if (row.outcome === 'created') {
    log.info(
      {
        leaseId: lease.leaseId,
        tokenId: lease.tokenId,
        userId,
        pool: deps.poolName,
        fence: lease.fence,
        expiresAt: lease.expiresAt,
        reqId: options.reqId,
      },
      'lease granted',
    );
    deps.scheduler?.scheduleRelease(lease, lease.expiresAt.getTime() - lease.startedAt.getTime());
    if (options.signal?.aborted === true) {
      // The waiting client left as its lease was granted: give that lease straight back.
      await release(deps, { tokenId: lease.tokenId, userId, leaseId: lease.leaseId, clientId, reqId: options.reqId }).catch(() => undefined);
      throw new ClientGoneError();
    }
  }
  // The value goes into the answer only, not into the release job.
  return { created: row.outcome === 'created', lease: held(deps, lease, row.value_sealed) };
}
