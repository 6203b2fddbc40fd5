// Reads of tokens, leases and history. None takes a lock, with one exception: validate, when
// it finds a lease past its expiry that nothing has ended yet, ends it first (see validate).

import { NotFoundError } from '../errors.js';
import * as sql from '../db/queries.js';
import { type EndReason, type Lease, type LeasesDeps, type Usage, countEnded, toLease, toUsage } from './lease.js';

/** A token and its active lease; a lease past its expiry is never reported as active. */
export interface TokenState {
  readonly id: string;
  readonly lease: Lease | null;
  /** Taken out of use: never leased again (one retired while held keeps its lease until it ends). */
  readonly retired: boolean;
}

export interface TokenList {
  readonly tokens: TokenState[];
  /**
   * Time until the earliest of these leases runs out, by the database clock, rounded down: the
   * list changes by itself then. Null when no token is leased.
   */
  readonly nextExpiryInMs: number | null;
}

export interface HistoryPage {
  readonly tokenId: string;
  readonly usages: Usage[];
  /** The fence to pass as `beforeFence` for the next page, or null on the last page. */
  readonly nextBeforeFence: number | null;
}

export type Validation =
  | { readonly valid: true; readonly leaseId: string; readonly expiresAt: Date }
  | { readonly valid: false; readonly reason: InvalidReason };

/** Why a (token, user, fence) no longer names an active lease. */
export type InvalidReason =
  | 'expired'
  | 'released'
  | 'cleared'
  | 'revoked'
  | 'superseded'
  | 'redeemed'
  | 'retired'
  | 'not_holder'
  | 'unknown_lease';

const INVALID_REASONS: Record<EndReason, InvalidReason> = {
  expired: 'expired',
  released: 'released',
  cleared: 'cleared',
  revoked: 'revoked',
  // Evicted: the token went to a newer lease with a higher fence.
  evicted: 'superseded',
  redeemed: 'redeemed',
  retired: 'retired',
};

function noToken(tokenId: string): NotFoundError {
  return new NotFoundError({ token_id: tokenId });
}

/**
 * Whether `fence` still names `userId`'s active lease of the token: one read of a unique index,
 * no lock, so a downstream resource can afford it on every request. Monotonic: a lease found
 * past its expiry but not ended is ended (waiting for its token, so a renewal that decided in
 * time commits first) before the answer is `expired`; once ended, it never answers valid again.
 */
export async function validate(
  deps: LeasesDeps,
  ref: { tokenId: string; userId: string; fence: number },
): Promise<Validation> {
  const row = await sql.findUsageByFence(deps.pool, ref);
  if (row === null) return { valid: false, reason: 'unknown_lease' };
  if (row.user_id !== ref.userId) return { valid: false, reason: 'not_holder' };
  if (row.active) return { valid: true, leaseId: row.id, expiresAt: row.expires_at };
  if (row.ended_at === null) {
    const due = await sql.endLeaseIfDue(deps.pool, row.id);
    if (due.outcome === 'ended') countEnded(deps, [due as sql.UsageRow], 'validate');
    if (due.outcome === 'not_due' && due.expires_at !== null) {
      return { valid: true, leaseId: row.id, expiresAt: due.expires_at };
    }
    return { valid: false, reason: INVALID_REASONS[due.end_reason ?? 'expired'] };
  }
  return { valid: false, reason: INVALID_REASONS[row.end_reason ?? 'expired'] };
}

export async function listTokens(deps: LeasesDeps): Promise<TokenList> {
  const rows = await sql.listTokens(deps.pool, deps.poolId);
  let nextExpiryInMs: number | null = null;
  for (const row of rows) {
    if (row.remaining_ms !== null && (nextExpiryInMs === null || row.remaining_ms < nextExpiryInMs)) {
      nextExpiryInMs = row.remaining_ms;
    }
  }
  return { tokens: rows.map(toTokenState), nextExpiryInMs };
}

export async function getToken(deps: LeasesDeps, tokenId: string): Promise<TokenState> {
  const row = await sql.findToken(deps.pool, tokenId);
  if (row === null) throw noToken(tokenId);
  return toTokenState(row);
}

export async function history(
  deps: LeasesDeps,
  tokenId: string,
  page: { beforeFence: number | null; limit: number },
): Promise<HistoryPage> {
  // One row more than asked tells whether another page follows.
  const rows = await sql.listUsages(deps.pool, { tokenId, ...page, limit: page.limit + 1 });
  if (rows.length === 0 && !(await sql.tokenExists(deps.pool, tokenId))) throw noToken(tokenId);
  const usages = rows.slice(0, page.limit).map(toUsage);
  const last = usages.at(-1);
  return {
    tokenId,
    usages,
    nextBeforeFence: rows.length > page.limit && last !== undefined ? last.fence : null,
  };
}

function toTokenState(row: sql.TokenRow): TokenState {
  return {
    id: row.id,
    lease: row.lease_id === null ? null : toLease({ ...row, id: row.lease_id, token_id: row.id }),
    retired: row.retired,
  };
}
