// The lease operations. HTTP routes, the release job and the sweep all end leases through the
// functions here, which run the statements in src/db/queries.ts; nothing else writes leases.

import { NotFoundError, PoolExhaustedError } from '../errors.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import type { Pool } from '../db/pool.js';
import * as sql from '../db/queries.js';
import type { EndReason, UsageRow } from '../db/queries.js';
import { withTransaction } from '../db/tx.js';

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
}

export interface LeasesDeps {
  readonly pool: Pool;
  readonly leaseTtlMs: number;
  readonly log: Logger;
  readonly metrics: Metrics;
  readonly scheduler?: ReleaseScheduler | undefined;
}

const SWEEP_BATCH = 1_000;

export function createLeases(deps: LeasesDeps) {
  const { pool, log, metrics } = deps;

  function countEnded(usages: readonly UsageRow[], by: string): void {
    for (const usage of usages) {
      if (usage.end_reason !== null) metrics.leasesEnded.inc({ reason: usage.end_reason, by });
    }
  }

  /**
   * Gives `userId` a lease: the one they hold if it is still unexpired, otherwise a new one on a
   * free token. Throws PoolExhaustedError when every token is held by an unexpired lease.
   */
  async function activate(userId: string): Promise<{ created: boolean; lease: Lease }> {
    const row = await sql.activateLease(pool, {
      userId,
      ttlMs: deps.leaseTtlMs,
      evictOldest: false,
    });
    metrics.activations.inc({ outcome: row.outcome });
    if (row.outcome === 'exhausted') {
      const waitMs = Number(row.wait_ms ?? 0);
      throw new PoolExhaustedError(Math.max(1, Math.ceil(waitMs / 1000)));
    }
    const lease = toLease({
      id: row.lease_id,
      token_id: row.token_id,
      user_id: row.user_id,
      fence: row.fence,
      started_at: row.started_at,
      expires_at: row.expires_at,
    });
    if (row.outcome === 'created') {
      deps.scheduler?.scheduleRelease(lease, deps.leaseTtlMs);
    }
    return { created: row.outcome === 'created', lease };
  }

  async function listTokens(): Promise<TokenState[]> {
    const rows = await sql.listTokens(pool);
    return rows.map(toTokenState);
  }

  async function getToken(tokenId: string): Promise<TokenState> {
    const row = await sql.findToken(pool, tokenId);
    if (row === null) throw new NotFoundError('no token has this id', { token_id: tokenId });
    return toTokenState(row);
  }

  async function history(
    tokenId: string,
    page: { beforeFence: number | null; limit: number },
  ): Promise<HistoryPage> {
    // One row more than asked tells whether another page follows.
    const rows = await sql.listUsages(pool, { tokenId, ...page, limit: page.limit + 1 });
    if (rows.length === 0 && !(await sql.tokenExists(pool, tokenId))) {
      throw new NotFoundError('no token has this id', { token_id: tokenId });
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
   * The release job's work: ends the lease if it is still open and due. A duplicate, retried or
   * late job, or one for a lease that was released, cleared or evicted, changes nothing
   * (`gone`). A lease that is open but not due yet (renewed, or the job ran early by the
   * database clock) answers `not_due` with the time left, so the job can wait that long.
   */
  async function expireLease(leaseId: string): Promise<ExpireOutcome> {
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
    for (;;) {
      const batch = await withTransaction(pool, async (tx) => {
        if (!(await sql.tryLockSweep(tx))) return null;
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
    if (created > 0) log.info({ created, size }, 'token pool topped up');
    return created;
  }

  async function ping(): Promise<void> {
    await sql.ping(pool);
  }

  return {
    activate,
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
