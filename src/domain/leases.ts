// The lease operations. HTTP routes, the release job and the sweep all end leases through the
// functions here, which run the statements in src/db/queries.ts; nothing else writes leases.

import { AppError, ERRORS, NotFoundError, PoolExhaustedError } from '../errors.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import type { Pool } from '../db/pool.js';
import * as sql from '../db/queries.js';
import type { EndReason, UsageRow } from '../db/queries.js';
import { withTransaction } from '../db/tx.js';
import { ClientGoneError, type WaitingRoom } from './waiting.js';

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

/** A usage as history keeps it; `endedAt` and `endReason` are null while it is open. */
export interface Usage extends Lease {
  readonly endedAt: Date | null;
  readonly endReason: EndReason | null;
}

/** A token and its active lease; a lease past its expiry is never reported as active. */
export interface TokenState {
  readonly id: string;
  readonly lease: Lease | null;
}

export type ExpireOutcome =
  | { readonly outcome: 'ended'; readonly usage: Usage }
  | { readonly outcome: 'not_due'; readonly expiresAt: Date; readonly remainingMs: number }
  | { readonly outcome: 'gone' };

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

/** Where new leases get their release job. The jobs layer implements it; the domain only calls it. */
export interface ReleaseScheduler {
  /** Must not throw or block: a lease is committed whether or not its job could be added. */
  scheduleRelease(lease: Lease, delayMs: number): void;
  /** The lease has ended, whichever way: a job not sent yet for it is not needed. */
  leaseEnded(leaseId: string): void;
}

export interface LeasesDeps {
  readonly pool: Pool;
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
}

export type Validation =
  | { readonly valid: true; readonly leaseId: string; readonly expiresAt: Date }
  | { readonly valid: false; readonly reason: InvalidReason };

/** Why a (token, user, fence) no longer names an active lease. */
export type InvalidReason =
  | 'expired'
  | 'released'
  | 'cleared'
  | 'superseded'
  | 'not_holder'
  | 'unknown_lease';

const INVALID_REASONS: Record<EndReason, InvalidReason> = {
  expired: 'expired',
  released: 'released',
  cleared: 'cleared',
  // Evicted: the token went to a newer lease with a higher fence.
  evicted: 'superseded',
};

const SWEEP_BATCH = 1_000;
// A renewal or release that keeps losing the race with activations of the same user answers
// 409 conflict.
const RACE_ATTEMPTS = 3;
/** Leases one release job ends at most, besides its own. */
const EXPIRY_BATCH = 1_000;

/** Called after try `attempt` of a renewal or release lost that race: 409 once all have. */
function lostRace(attempt: number): void {
  if (attempt >= RACE_ATTEMPTS) {
    throw new AppError(ERRORS.conflict);
  }
}

export function createLeases(deps: LeasesDeps) {
  const { pool, log, metrics } = deps;

  /**
   * Every lease that ends through this process passes here: it is counted, and a release job
   * not sent yet for it is dropped.
   */
  function leaseEnded(leaseId: string, reason: EndReason, by: string): void {
    deps.scheduler?.leaseEnded(leaseId);
    metrics.leasesEnded.inc({ reason, by });
  }

  function countEnded(usages: readonly UsageRow[], by: string): void {
    for (const usage of usages) {
      if (usage.end_reason !== null) leaseEnded(usage.id, usage.end_reason, by);
    }
  }

  /** One call of activate_lease(); the leases it ended as expired on the way are counted here. */
  async function attempt(userId: string, waiterId: string | null): Promise<sql.ActivateRow> {
    const row = await sql.activateLease(pool, {
      userId,
      ttlMs: deps.leaseTtlMs,
      evictOldest: deps.evictOldest ?? false,
      waiterId,
    });
    for (const leaseId of row.expired_lease_ids) leaseEnded(leaseId, 'expired', 'activation');
    return row;
  }

  /**
   * Gives `userId` a lease: the one they hold if it is still unexpired, otherwise a new one on a
   * free token (or, with evict_oldest, the oldest lease's token). On a full pool, waits up to
   * `waitMs` in the queue, first come first served; then throws PoolExhaustedError.
   */
  async function activate(
    userId: string,
    options: { waitMs?: number; signal?: AbortSignal | undefined } = {},
  ): Promise<{ created: boolean; lease: Lease }> {
    let row = await attempt(userId, null);
    const waitMs = options.waitMs ?? 0;
    if (row.outcome !== 'created' && row.outcome !== 'existing' && waitMs > 0 && deps.waitingRoom) {
      try {
        row = await deps.waitingRoom.wait({
          userId,
          timeoutMs: waitMs,
          signal: options.signal,
          attempt: (waiterId) => attempt(userId, waiterId),
        });
      } catch (err) {
        // The wait ran out: refused like any activation on a full pool.
        if (err instanceof PoolExhaustedError) metrics.activations.inc({ outcome: 'exhausted' });
        throw err;
      }
    }
    metrics.activations.inc({ outcome: row.outcome === 'queued' ? 'exhausted' : row.outcome });
    if (row.outcome !== 'created' && row.outcome !== 'existing') {
      throw new PoolExhaustedError(Math.max(1, Math.ceil(Number(row.wait_ms ?? 0) / 1000)));
    }
    const lease = toLease({ ...row, id: row.lease_id });
    if (row.evicted_lease_id !== null) {
      metrics.evictions.inc();
      leaseEnded(row.evicted_lease_id, 'evicted', 'activation');
      log.info({ leaseId: row.evicted_lease_id, tokenId: lease.tokenId }, 'lease evicted');
    }
    if (row.outcome === 'created') {
      deps.scheduler?.scheduleRelease(lease, deps.leaseTtlMs);
      if (options.signal?.aborted === true) {
        // The waiting client left as its lease was granted: give the token straight back.
        await release(lease.tokenId, userId).catch(() => undefined);
        throw new ClientGoneError();
      }
    }
    return { created: row.outcome === 'created', lease };
  }

  /**
   * Ends the caller's lease of a token now (`released`). A retry after a successful release
   * answers the same ended usage. Throws `not_holder` when the caller holds no lease of it.
   */
  async function release(tokenId: string, userId: string): Promise<Usage> {
    for (let attempt = 1; ; attempt += 1) {
      const ended = await sql.releaseLease(pool, { tokenId, userId });
      if (ended !== null) {
        countEnded([ended], 'release');
        if (ended.end_reason === 'released') return toUsage(ended);
        throw notHolder('expired');
      }
      const latest = await latestUsage(tokenId, userId);
      if (latest?.end_reason === 'released') return toUsage(latest);
      if (latest === null || !latest.active) throw notHolder(latest?.end_reason ?? 'not_held');
      // Active, yet the release ended nothing: while it waited for the token, the same user was
      // given this token again (an activation that ended their run-out lease on it), and the
      // statement was still looking for the lease that one replaced. Release the new one.
      lostRace(attempt);
    }
  }

  /**
   * Moves the caller's unexpired lease to expire LEASE_TTL_MS from now (capped by MAX_LEASE_MS)
   * and schedules its release at the new time; the old job, when it fires, finds it not due.
   */
  async function renew(tokenId: string, userId: string): Promise<Lease> {
    for (let attempt = 1; ; attempt += 1) {
      const renewed = await sql.renewLease(pool, {
        tokenId,
        userId,
        ttlMs: deps.leaseTtlMs,
        maxLeaseMs: deps.maxLeaseMs ?? null,
      });
      if (renewed !== null) {
        const lease = toLease(renewed);
        deps.scheduler?.scheduleRelease(lease, renewed.remaining_ms);
        return lease;
      }
      const latest = await latestUsage(tokenId, userId);
      if (latest === null) throw notHolder('not_held');
      if (!latest.active) return refuseRenewal(latest);
      if (atMaxLease(latest)) {
        throw new AppError(ERRORS.max_lease_reached, {
          expires_at: latest.expires_at.toISOString(),
        });
      }
      // Not renewable a moment ago, active and below its cap now: the user was given this token
      // again in between (a concurrent activation). That lease is the one to renew.
      lostRace(attempt);
    }
  }

  function atMaxLease(usage: UsageRow): boolean {
    const maxLeaseMs = deps.maxLeaseMs ?? null;
    return maxLeaseMs !== null && usage.started_at.getTime() + maxLeaseMs <= usage.expires_at.getTime();
  }

  /** Why a lease that is no longer active cannot be renewed. */
  function refuseRenewal(latest: UsageRow): never {
    if (latest.end_reason === null || latest.end_reason === 'expired') {
      throw new AppError(ERRORS.lease_expired, {
        reason: 'expired',
      });
    }
    throw new AppError(ERRORS.lease_ended, {
      reason: latest.end_reason,
    });
  }

  /**
   * Whether `fence` still names `userId`'s active lease of the token: one read of a unique
   * index, no lock, so a downstream resource can afford it on every request.
   */
  async function validate(tokenId: string, userId: string, fence: number): Promise<Validation> {
    const row = await sql.findUsageByFence(pool, { tokenId, fence });
    if (row === null) return { valid: false, reason: 'unknown_lease' };
    if (row.user_id !== userId) return { valid: false, reason: 'not_holder' };
    if (row.active) return { valid: true, leaseId: row.id, expiresAt: row.expires_at };
    return { valid: false, reason: row.end_reason === null ? 'expired' : INVALID_REASONS[row.end_reason] };
  }

  /** The caller's latest usage of the token; a NotFoundError if the token does not exist. */
  async function latestUsage(tokenId: string, userId: string) {
    const latest = await sql.findLatestUsage(pool, { tokenId, userId });
    if (latest === null && !(await sql.tokenExists(pool, tokenId))) {
      throw new NotFoundError({ token_id: tokenId });
    }
    return latest;
  }

  async function listTokens(): Promise<TokenList> {
    const rows = await sql.listTokens(pool);
    let nextExpiryInMs: number | null = null;
    for (const row of rows) {
      if (row.remaining_ms !== null && (nextExpiryInMs === null || row.remaining_ms < nextExpiryInMs)) {
        nextExpiryInMs = row.remaining_ms;
      }
    }
    return { tokens: rows.map(toTokenState), nextExpiryInMs };
  }

  async function getToken(tokenId: string): Promise<TokenState> {
    const row = await sql.findToken(pool, tokenId);
    if (row === null) throw new NotFoundError({ token_id: tokenId });
    return toTokenState(row);
  }

  async function history(
    tokenId: string,
    page: { beforeFence: number | null; limit: number },
  ): Promise<HistoryPage> {
    // One row more than asked tells whether another page follows.
    const rows = await sql.listUsages(pool, { tokenId, ...page, limit: page.limit + 1 });
    if (rows.length === 0 && !(await sql.tokenExists(pool, tokenId))) {
      throw new NotFoundError({ token_id: tokenId });
    }
    const usages = rows.slice(0, page.limit).map(toUsage);
    const last = usages.at(-1);
    return {
      tokenId,
      usages,
      nextBeforeFence: rows.length > page.limit && last !== undefined ? last.fence : null,
    };
  }

  /** Ends every open lease; those already past their expiry end as expired, not cleared. */
  async function clear(): Promise<{ cleared: number; expired: number }> {
    const ended = await sql.clearLeases(pool);
    countEnded(ended, 'clear');
    const cleared = ended.filter((u) => u.end_reason === 'cleared').length;
    log.info({ cleared, expired: ended.length - cleared }, 'leases cleared');
    return { cleared, expired: ended.length - cleared };
  }

  /**
   * The release job's work: ends the lease if it is still open and due, and with it every other
   * lease that is due (see endDueLeasesWith). A duplicate, retried or late job, or one for a
   * lease that was released, cleared, evicted or already ended by another job, changes nothing
   * of its own (`gone`). A lease that is open but not due yet (renewed, or the job ran early by
   * the database clock) answers `not_due` with the time left, so the job can wait that long.
   */
  async function expireLease(leaseId: string): Promise<ExpireOutcome> {
    const { ended, own } = await sql.endDueLeasesWith(pool, { leaseId, limit: EXPIRY_BATCH });
    countEnded(ended, 'job');
    if (ended.length > 1) log.debug({ leaseId, ended: ended.length }, 'due leases ended by one release job');
    const mine = ended.find((usage) => usage.id === leaseId);
    if (mine !== undefined) return { outcome: 'ended', usage: toUsage(mine) };
    if (own === null || own.ended_at !== null) return { outcome: 'gone' };
    if (!own.due) return { outcome: 'not_due', expiresAt: own.expires_at, remainingMs: own.remaining_ms };
    // Due, but its token was locked by someone else (who is ending or taking it right now), or
    // beyond this batch: end it on its own, waiting for the lock, as before.
    return expireOneLease(leaseId);
  }

  async function expireOneLease(leaseId: string): Promise<ExpireOutcome> {
    const ended = await sql.endLeaseIfDue(pool, leaseId);
    if (ended !== null) {
      countEnded([ended], 'job');
      return { outcome: 'ended', usage: toUsage(ended) };
    }
    const open = await sql.findOpenLeaseExpiry(pool, leaseId);
    if (open === null) return { outcome: 'gone' };
    return { outcome: 'not_due', expiresAt: open.expires_at, remainingMs: open.remaining_ms };
  }

  /** Every open lease with the time left on it, a page at a time, in a stable order. */
  async function* openLeases(pageSize = 1_000): AsyncGenerator<{ lease: Lease; remainingMs: number }[]> {
    let afterTokenId: string | null = null;
    for (;;) {
      const rows = await sql.listOpenLeases(pool, { afterTokenId, limit: pageSize });
      if (rows.length > 0) yield rows.map((row) => ({ lease: toLease(row), remainingMs: row.remaining_ms }));
      const last = rows.at(-1);
      if (last === undefined || rows.length < pageSize) return;
      afterTokenId = last.token_id;
    }
  }

  /**
   * Ends every open lease whose time is up. Only one sweep runs at a time across all processes;
   * returns null when another process holds the sweep lock.
   */
  async function sweep(): Promise<number | null> {
    let total = 0;
    for (let round = 0; ; round += 1) {
      const batch = await withTransaction(pool, async (tx) => {
        if (!(await sql.tryLockSweep(tx))) return null;
        // Places of waiters that timed out or whose process died go too.
        if (round === 0) await sql.purgeDeadWaiters(tx);
        return sql.endDueLeases(tx, SWEEP_BATCH);
      });
      if (batch === null) return total === 0 ? null : total;
      countEnded(batch, 'sweep');
      total += batch.length;
      if (batch.length < SWEEP_BATCH) return total;
    }
  }

  /** Creates tokens until the pool holds `size`, in one process at a time. */
  async function seedPool(size: number): Promise<number> {
    const created = await withTransaction(pool, async (tx) => {
      await sql.lockPoolSeeding(tx);
      return sql.topUpPool(tx, size);
    });
    if (created > 0) {
      log.info({ created, size }, 'token pool topped up');
    }
    return created;
  }

  async function ping(): Promise<void> {
    await sql.ping(pool);
  }

  return {
    activate,
    release,
    renew,
    validate,
    listTokens,
    getToken,
    history,
    clear,
    expireLease,
    openLeases,
    sweep,
    seedPool,
    ping,
  };
}

export type Leases = ReturnType<typeof createLeases>;

function toLease(row: {
  id: string | null;
  token_id: string | null;
  user_id: string | null;
  fence: string | null;
  started_at: Date | null;
  expires_at: Date | null;
}): Lease {
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

function toUsage(row: UsageRow): Usage {
  return { ...toLease(row), endedAt: row.ended_at, endReason: row.end_reason };
}

function toTokenState(row: sql.TokenRow): TokenState {
  return {
    id: row.id,
    lease: row.lease_id === null ? null : toLease({ ...row, id: row.lease_id, token_id: row.id }),
  };
}

/** 409 not_holder; `reason` says why: not_held, expired, cleared or evicted. */
function notHolder(reason: EndReason | 'not_held'): AppError {
  return new AppError(ERRORS.not_holder, { reason });
}
