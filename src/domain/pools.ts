// The pool as a whole: ending every lease at once, and topping the pool up to its size.

import * as sql from '../db/queries.js';
import type { Queryable } from '../db/pool.js';
import { withTransaction } from '../db/tx.js';
import { type LeasesDeps, countEnded } from './lease.js';

/** Ends every open lease of the pool; those already past their expiry end as expired, not cleared. */
export async function clearPool(deps: LeasesDeps): Promise<{ cleared: number; expired: number }> {
  const ended = await sql.clearLeases(deps.pool, deps.poolId);
  countEnded(deps, ended, 'clear');
  const cleared = ended.filter((u) => u.end_reason === 'cleared').length;
  deps.log.info({ cleared, expired: ended.length - cleared }, 'leases cleared');
  return { cleared, expired: ended.length - cleared };
}

/** Creates tokens until the pool holds `size`, in one process at a time. */
export async function seedPool(deps: LeasesDeps, size: number): Promise<number> {
  const created = await withTransaction(deps.pool, async (tx) => {
    await sql.lockPoolSeeding(tx);
    return sql.topUpPool(tx, { poolId: deps.poolId, size });
  });
  if (created > 0) deps.log.info({ created, size }, 'token pool topped up');
  return created;
}

/** The id of the pool named `name`; throws when the migrations have not created it. */
export async function getPoolId(db: Queryable, name: string): Promise<number> {
  const id = await sql.findPoolId(db, name);
  if (id === null) throw new Error(`no pool is named ${name}`);
  return id;
}
