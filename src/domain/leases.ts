// The lease operations, one file each (activate.ts, release.ts, reads.ts, expiry.ts,
// pools.ts, revoke.ts, and for tokens with values addTokens.ts, redeem.ts, retire.ts), bound to their
// dependencies. HTTP routes, the release job and the sweep all end
// leases through them, and they through the SQL in src/db; nothing else writes leases.

import { activate, type ActivateOptions } from './activate.js';
import { generateTokens, importValues, type ImportInput } from './addTokens.js';
import { expireLease, openLeases, sweep } from './expiry.js';
import type { LeaseRef, LeasesDeps } from './lease.js';
import { clearPool, seedPool } from './pools.js';
import { getToken, history, listTokens, validate } from './reads.js';
import { checkValue, redeem } from './redeem.js';
import { release, renew } from './release.js';
import { retire } from './retire.js';
import { getLease, revoke, revokeUser } from './revoke.js';
import * as sql from '../db/queries.js';

export type { EndReason, HeldLease, Lease, LeaseRef, LeasesDeps, ReleaseScheduler, Usage } from './lease.js';
export type { ImportInput, ImportItem, ImportResult } from './addTokens.js';
export type { ValueCheck } from './redeem.js';
export type { Retirement } from './retire.js';
export type { ExpireOutcome } from './expiry.js';
export type { LeaseRecord } from './revoke.js';
export type { HistoryPage, InvalidReason, TokenList, TokenState, Validation } from './reads.js';

export function createLeases(deps: LeasesDeps) {
  return {
    activate: (userId: string, options?: ActivateOptions) => activate(deps, userId, options),
    release: (ref: LeaseRef) => release(deps, ref),
    renew: (ref: LeaseRef) => renew(deps, ref),
    validate: (ref: { tokenId: string; userId: string; fence: number }) => validate(deps, ref),
    listTokens: () => listTokens(deps),
    getToken: (tokenId: string) => getToken(deps, tokenId),
    history: (tokenId: string, page: { beforeFence: number | null; limit: number }) => history(deps, tokenId, page),
    clear: () => clearPool(deps),
    lease: (leaseId: string) => getLease(deps, leaseId),
    revoke: (leaseId: string, reqId?: string) => revoke(deps, leaseId, reqId),
    revokeUser: (userId: string, reqId?: string) => revokeUser(deps, userId, reqId),
    expireLease: (leaseId: string) => expireLease(deps, leaseId),
    openLeases: (pageSize?: number) => openLeases(deps, pageSize),
    sweep: () => sweep(deps),
    seedPool: (size: number) => seedPool(deps, size),
    generate: (args: { count: number; idempotencyKey?: string | undefined }) => generateTokens(deps, args),
    import: (args: { inputs: readonly ImportInput[]; idempotencyKey?: string | undefined }) => importValues(deps, args),
    check: (value: string) => checkValue(deps, value),
    redeem: (ref: { value: string; userId: string; clientId?: string | null }) => redeem(deps, ref),
    retire: (args: { tokenId: string; now: boolean }) => retire(deps, args),
    ping: () => sql.ping(deps.pool),
  };
}

export type Leases = ReturnType<typeof createLeases>;

/**
 * The lease operations of each pool: `deps` with the pool's id, made once per pool. The
 * operations that name a token act on whichever pool it is in, through any of them.
 */
export function createLeasesByPool(
  deps: Omit<LeasesDeps, 'poolId' | 'poolName'>,
): (pool: { readonly id: number; readonly name: string }) => Leases {
  const made = new Map<number, Leases>();
  return ({ id: poolId, name: poolName }) => {
    let leases = made.get(poolId);
    if (leases === undefined) {
      leases = createLeases({ ...deps, poolId, poolName });
      made.set(poolId, leases);
    }
    return leases;
  };
}
