// The operator's lease tools: one lease looked up by its id, ended or not; one lease revoked;
// every open lease of one user revoked. A revoke locks each token like every other change and
// ends the lease through end_lease() (sql/revoke_lease.sql, sql/revoke_user_leases.sql), so the
// token is free at once, its waiters are woken, and the holder's release, renew and validate
// answer `revoked` from then on.

import { NotFoundError } from '../errors.js';
import * as sql from '../db/queries.js';
import { type LeasesDeps, type Usage, countEnded, leaseEnded, toUsage } from './lease.js';

/** A lease as an operator looks it up: its usage and the pool it belongs to. */
export interface LeaseRecord extends Usage {
  readonly pool: string;
  /** Open and unexpired, by the database clock. */
  readonly active: boolean;
}

function noLease(leaseId: string): NotFoundError {
  return new NotFoundError({ lease_id: leaseId });
}

/** The lease `leaseId`, open or ended; NotFoundError when there is none. */
export async function getLease(deps: LeasesDeps, leaseId: string): Promise<LeaseRecord> {
  const row = await sql.findLease(deps.pool, leaseId);
  if (row === null) throw noLease(leaseId);
  return { ...toUsage(row), pool: row.pool, active: row.active };
}

/**
 * Ends the lease now as `revoked`, whoever holds it, and answers it as it is then. Idempotent: a
 * lease that has ended (revoked before, or any other way) is answered as it ended; one that had
 * run out ends as expired.
 */
export async function revoke(deps: LeasesDeps, leaseId: string, reqId?: string): Promise<LeaseRecord> {
  const row = await sql.revokeLease(deps.pool, leaseId);
  if (row.outcome === 'gone') throw noLease(leaseId);
  if (row.outcome === 'revoked' || row.outcome === 'expired') {
    leaseEnded(deps, leaseId, row.outcome, 'revoke', row, reqId);
  }
  return getLease(deps, leaseId);
}

/** Ends every open lease of `userId`, in every pool; answers those it revoked (not those that had run out). */
export async function revokeUser(deps: LeasesDeps, userId: string, reqId?: string): Promise<LeaseRecord[]> {
  const ended = await sql.revokeUserLeases(deps.pool, userId);
  countEnded(deps, ended, 'revoke', reqId);
  const revoked = ended.filter((usage) => usage.end_reason === 'revoked');
  deps.log.info({ userId, revoked: revoked.length, expired: ended.length - revoked.length, reqId }, 'user leases revoked');
  return Promise.all(revoked.map((usage) => getLease(deps, usage.id)));
}
