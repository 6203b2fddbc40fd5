// Release and renewal act on the lease they name and on no other (sql/release_lease.sql,
// sql/renew_lease.sql): a retried release answers the same ended usage, and a stale one never
// touches the caller's newer lease of the same token.

import { AppError, ERRORS, NotFoundError } from '../errors.js';
import * as sql from '../db/queries.js';
import {
  type HeldLease,
  type LeaseRef,
  type LeasesDeps,
  type Usage,
  anotherClients,
  ended,
  held,
  leaseEnded,
  notHolder,
  toLease,
  toUsage,
} from './lease.js';

function noToken(tokenId: string): NotFoundError {
  return new NotFoundError({ token_id: tokenId });
}

/** The answers release and renewal share: the named lease is not there, not theirs, or ended. */
function refuse(deps: LeasesDeps, ref: LeaseRef, row: sql.ReleaseRow | sql.RenewRow, by: string): void {
  switch (row.outcome) {
    case 'no_token':
      throw noToken(ref.tokenId);
    case 'not_holder':
      throw notHolder();
    case 'forbidden':
      throw anotherClients();
    case 'ended':
      throw ended(row);
    case 'expired':
      // It had run out, and this call ended it (under its token's lock) as expired.
      leaseEnded(deps, ref.leaseId, 'expired', by, row, ref.reqId);
      throw ended(row);
  }
}

/**
 * Ends the named lease now (`released`). A retry after a successful release answers the same
 * ended usage; a lease that ran out or ended otherwise answers 409 with the reason.
 */
export async function release(deps: LeasesDeps, ref: LeaseRef): Promise<Usage> {
  const row = await sql.releaseLease(deps.pool, ref);
  refuse(deps, ref, row, 'release');
  // Counted once: by the call that ended it, not by a retry that finds it ended.
  if (row.outcome === 'released') leaseEnded(deps, ref.leaseId, 'released', 'release', row, ref.reqId);
  return toUsage(row);
}

/**
 * Moves the named lease's expiry to LEASE_TTL_MS from now (capped by MAX_LEASE_MS) and
 * schedules its release at the new time; the old job, when it fires, finds it not due. Answers
 * the lease with its token's value, if it has one.
 */
export async function renew(deps: LeasesDeps, ref: LeaseRef): Promise<HeldLease> {
  const row = await sql.renewLease(deps.pool, {
    ...ref,
    ttlMs: deps.leaseTtlMs,
    maxLeaseMs: deps.maxLeaseMs ?? null,
  });
  refuse(deps, ref, row, 'renewal');
  if (row.outcome === 'max_lease') {
    throw new AppError(ERRORS.max_lease_reached, { expires_at: row.expires_at?.toISOString() ?? null });
  }
  const lease = toLease(row);
  deps.scheduler?.scheduleRelease(lease, row.remaining_ms ?? 0);
  deps.log.info({ leaseId: lease.leaseId, tokenId: lease.tokenId, expiresAt: lease.expiresAt, reqId: ref.reqId }, 'lease renewed');
  return held(deps, lease, row.value_sealed);
}
