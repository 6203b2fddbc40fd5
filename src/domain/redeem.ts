// What a downstream service asks of a token's value: whether it is held now (check, a read), and
// using it up once (redeem: the holder's lease ends as redeemed and the token is retired, under
// the token's lock, so of many redeems at once exactly one succeeds).

import * as sql from '../db/tokenValues.js';
import { AppError, ERRORS, NotFoundError } from '../errors.js';
import { type LeasesDeps, type Usage, anotherClients, ended, leaseEnded, notHolder, toUsage } from './lease.js';
import { valueDigest } from './values.js';

export interface ValueCheck {
  /** The token with the value; null when no token has it. */
  readonly tokenId: string | null;
  readonly held: boolean;
  /** The holder, the lease's fence and expiry while it is held; null otherwise. */
  readonly userId: string | null;
  readonly fence: number | null;
  readonly expiresAt: Date | null;
}

/** Whether the token with `value` is held now: one read of a unique index, no lock. */
export async function checkValue(deps: LeasesDeps, value: string): Promise<ValueCheck> {
  const row = await sql.checkValue(deps.pool, valueDigest(value));
  if (row === null) return { tokenId: null, held: false, userId: null, fence: null, expiresAt: null };
  return {
    tokenId: row.token_id,
    held: row.held,
    userId: row.user_id,
    fence: row.fence === null ? null : Number(row.fence),
    expiresAt: row.expires_at,
  };
}

/**
 * `userId` uses up the token with `value`, which they hold: their lease ends as redeemed and
 * the token is retired. Any later redeem, the same caller's retry included, is 409
 * already_redeemed (not_holder for a user who never held the token).
 */
export async function redeem(
  deps: LeasesDeps,
  ref: { value: string; userId: string; clientId?: string | null },
): Promise<Usage> {
  const row = await sql.redeemToken(deps.pool, {
    digest: valueDigest(ref.value),
    userId: ref.userId,
    clientId: ref.clientId ?? null,
  });
  switch (row.outcome) {
    case 'no_token':
      // Never the value itself in an answer.
      throw new NotFoundError({ reason: 'unknown_value' });
    case 'not_holder':
      throw notHolder();
    case 'forbidden':
      throw anotherClients();
    case 'already_redeemed':
      throw new AppError(ERRORS.already_redeemed, { token_id: row.token_id, ended_at: row.ended_at?.toISOString() ?? null });
    case 'expired':
      if (row.id !== null) leaseEnded(deps, row.id, 'expired', 'redeem');
      throw ended(row);
    case 'ended':
      throw ended(row);
    case 'redeemed':
      if (row.id !== null) leaseEnded(deps, row.id, 'redeemed', 'redeem');
      deps.log.info({ leaseId: row.id, tokenId: row.token_id }, 'token redeemed');
      return toUsage(row);
  }
}
