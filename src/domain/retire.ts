// Taking a token out of its pool for good (sql/retire_token.sql): it is never leased again, and
// stays in the token lists as retired, with its history. A held one keeps its lease until it
// ends, unless retired now, which ends the lease as retired.

import * as sql from '../db/tokenValues.js';
import { NotFoundError } from '../errors.js';
import { type LeasesDeps, type Usage, leaseEnded, toUsage } from './lease.js';

export interface Retirement {
  readonly tokenId: string;
  /** retired: out of use now; retiring: held, out of use once its lease ends. */
  readonly status: 'retired' | 'retiring';
  /** The lease this retirement ended (status retired), or the one it waits for (retiring). */
  readonly usage: Usage | null;
}

/** Retires the token; again, answers the same without changing anything. */
export async function retire(deps: LeasesDeps, args: { tokenId: string; now: boolean }): Promise<Retirement> {
  const row = await sql.retireToken(deps.pool, args);
  if (row.outcome === 'no_token') throw new NotFoundError({ token_id: args.tokenId });
  const usage = row.id === null ? null : toUsage(row);
  if (row.outcome === 'retired' && usage !== null && usage.endReason !== null) {
    leaseEnded(deps, usage.leaseId, usage.endReason, 'retire');
  }
  deps.log.info({ tokenId: args.tokenId, status: row.outcome, leaseId: usage?.leaseId }, 'token retired');
  return { tokenId: args.tokenId, status: row.outcome, usage };
}
