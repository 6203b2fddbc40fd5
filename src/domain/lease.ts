// What every lease operation shares: the types callers see, the rows they come from, and the
// one place where an ended lease is counted. The operations are one file each beside this one;
// leases.ts puts them together.

import { AppError, ERRORS } from '../errors.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import type { Pool } from '../db/pool.js';
import type { EndReason, UsageRow } from '../db/queries.js';
import { CLEAR_VALUES, type ValueSealer } from './values.js';
import type { WaitingRoom } from './waiting.js';
import type { ActivityCounter } from './activity.js';

export type { EndReason };

/** An open usage: `userId` holds `tokenId` until `expiresAt`. */
export interface Lease {
  readonly leaseId: string;
  readonly tokenId: string;
  readonly userId: string;
  readonly fence: number;
  readonly startedAt: Date;
  readonly expiresAt: Date;
}

/**
 * A lease as its holder is told of it, by activate and renew: with the token's secret value, if
 * it has one. No other answer carries the value.
 */
export interface HeldLease extends Lease {
  readonly value: string | null;
}

/** A usage as history keeps it; `endedAt` and `endReason` are null while it is open. */
export interface Usage extends Lease {
  readonly endedAt: Date | null;
  readonly endReason: EndReason | null;
}

/** What names one lease in a release or a renewal: the token, its holder and the lease. */
export interface LeaseRef {
  readonly tokenId: string;
  readonly userId: string;
  readonly leaseId: string;
  /**
   * The API client asking, which may act only on the leases it made; null or absent for any
   * other caller (a user, whom userId stands for, or an admin).
   */
  readonly clientId?: string | null;
  /** The id of the request that asks, for the log lines of what it changes. */
  readonly reqId?: string | undefined;
}

/** Where new leases get their release job. The jobs layer implements it; the domain only calls it. */
export interface ReleaseScheduler {
  /** Must not throw or block: a lease is committed whether or not its job could be added. */
  scheduleRelease(lease: Lease, delayMs: number): void;
  /** The lease has ended, whichever way: a job not sent yet for it is not needed. */
  leaseEnded(leaseId: string): void;
}

export interface LeasesDeps {
  readonly pool: Pool;
  /** The pool that activations, lists and clears act on, and its name (a label of its metrics). */
  readonly poolId: number;
  readonly poolName: string;
  readonly leaseTtlMs: number;
  /** Caps a lease's whole life across renewals; null for no cap. */
  readonly maxLeaseMs?: number | null;
  /** POOL_FULL_POLICY=evict_oldest: a full pool gives the oldest lease's token to a newcomer. */
  readonly evictOldest?: boolean;
  readonly log: Logger;
  readonly metrics: Metrics;
  readonly scheduler?: ReleaseScheduler | undefined;
  /** Where activations with a wait go when the pool is full; without it they are refused. */
  readonly waitingRoom?: WaitingRoom | undefined;
  /** Counts refused and waiting activations for GET /api/stats (API processes only). */
  readonly activity?: ActivityCounter | undefined;
  /** Seals and opens tokens' values (TOKEN_VALUE_KEY); absent: values are stored in clear. */
  readonly values?: ValueSealer | undefined;
}

/** What is known of a lease that ended, for its log line and its lateness. */
export interface Ended {
  readonly token_id?: string | null;
  readonly user_id?: string | null;
  readonly expires_at?: Date | null;
  readonly ended_at?: Date | null;
}

/**
 * Every lease that ends through this process passes here: it is counted and logged (info, with
 * its ids), a lease that ended as expired has its lateness observed when its times are known,
 * and a release job not sent yet for it is dropped.
 */
export function leaseEnded(deps: LeasesDeps, leaseId: string, reason: EndReason, by: string, usage?: Ended, reqId?: string): void {
  deps.scheduler?.leaseEnded(leaseId);
  deps.metrics.leasesEnded.inc({ reason, by });
  const endedAt = usage?.ended_at;
  const expiresAt = usage?.expires_at;
  if (reason === 'expired' && endedAt instanceof Date && expiresAt instanceof Date) {
    deps.metrics.expiryLateness.observe(Math.max(0, endedAt.getTime() - expiresAt.getTime()) / 1e3);
  }
  if (deps.log.isLevelEnabled('info')) {
    deps.log.info({ leaseId, tokenId: usage?.token_id ?? undefined, userId: usage?.user_id ?? undefined, reason, by, reqId }, 'lease ended');
  }
}

export function countEnded(deps: LeasesDeps, usages: readonly UsageRow[], by: string, reqId?: string): void {
  for (const usage of usages) {
    if (usage.end_reason !== null) leaseEnded(deps, usage.id, usage.end_reason, by, usage, reqId);
  }
}

type Nullable<T> = { [K in keyof T]: T[K] | null };

export function toLease(row: Nullable<Pick<UsageRow, 'id' | 'token_id' | 'user_id' | 'fence' | 'started_at' | 'expires_at'>>): Lease {
  if (
    row.id === null ||
    row.token_id === null ||
    row.user_id === null ||
    row.fence === null ||
    row.started_at === null ||
    row.expires_at === null
  ) {
    throw new Error('lease row is incomplete');
  }
  return {
    leaseId: row.id,
    tokenId: row.token_id,
    userId: row.user_id,
    fence: Number(row.fence),
    startedAt: row.started_at,
    expiresAt: row.expires_at,
  };
}

/** The lease with its token's value opened, for its holder. */
export function held(deps: LeasesDeps, lease: Lease, sealed: Buffer | null): HeldLease {
  return { ...lease, value: sealed === null ? null : (deps.values ?? CLEAR_VALUES).open(sealed) };
}

export function toUsage(row: Nullable<UsageRow>): Usage {
  return { ...toLease(row), endedAt: row.ended_at, endReason: row.end_reason };
}

/** 409 not_holder: the lease named is not this user's lease of this token. */
export function notHolder(): AppError {
  return new AppError(ERRORS.not_holder, { reason: 'not_held' });
}

/** 403 forbidden: the lease named is the user's, but another API client made it. */
export function anotherClients(): AppError {
  return new AppError(ERRORS.forbidden, { reason: 'another_client' });
}

/** 409 lease_ended (lease_expired when it ran out): the lease named has ended. */
export function ended(usage: Nullable<UsageRow>): AppError {
  const reason = usage.end_reason ?? 'expired';
  const details = { reason, ended_at: usage.ended_at?.toISOString() ?? null };
  return new AppError(reason === 'expired' ? ERRORS.lease_expired : ERRORS.lease_ended, details);
}
