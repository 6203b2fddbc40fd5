// Pools: named sets of tokens, each with its size and its own settings where it has them (a
// setting it does not have follows the service's). Here: making, listing and changing pools,
// finding one by name for the routes, ending every lease of one at once, and topping one up to
// its size.

import * as sql from '../db/queries.js';
import type { Pool, PoolClient, Queryable } from '../db/pool.js';
import * as pools from '../db/pools.js';
import type { FullPolicy, PoolCountsRow, PoolSettings } from '../db/pools.js';
import { withTransaction } from '../db/tx.js';
import { AppError, ERRORS, NotFoundError, ValidationError } from '../errors.js';
import type { Logger } from '../logger.js';
import { type LeasesDeps, countEnded } from './lease.js';

export type { FullPolicy, PoolSettings };

/** A pool as the API shows it: its settings as they apply (its own, else the service's). */
export interface PoolInfo {
  readonly id: number;
  readonly name: string;
  readonly size: number;
  readonly leaseTtlMs: number;
  readonly maxLeaseMs: number | null;
  readonly fullPolicy: FullPolicy;
  readonly maxWaiters: number;
  readonly free: number;
  readonly held: number;
  readonly retired: number;
}

/** The service's settings, which a pool follows where it has none of its own. */
export interface ServiceSettings {
  readonly leaseTtlMs: number;
  readonly maxLeaseMs: number | null;
  readonly fullPolicy: FullPolicy;
  readonly maxWaiters: number;
}

export interface NewPool extends Partial<PoolSettings> {
  readonly name: string;
  readonly size: number;
}

/** A change: absent fields stay, null ones go back to the service's setting. */
export interface PoolChange extends Partial<PoolSettings> {
  readonly size?: number | undefined;
}

export class PoolExistsError extends AppError {
  constructor(name: string) {
    super(ERRORS.pool_exists, { pool: name });
  }
}

export function unknownPool(name: string): NotFoundError {
  return new NotFoundError({ pool: name });
}

function toInfo(row: PoolCountsRow, service: ServiceSettings): PoolInfo {
  return {
    id: row.id,
    name: row.name,
    size: Number(row.size),
    leaseTtlMs: row.lease_ttl_ms ?? service.leaseTtlMs,
    maxLeaseMs: row.max_lease_ms ?? service.maxLeaseMs,
    fullPolicy: row.full_policy ?? service.fullPolicy,
    maxWaiters: row.max_waiters ?? service.maxWaiters,
    free: row.free,
    held: row.held,
    retired: row.retired,
  };
}

/** A pool's longest lease may not be shorter than its lease time, whichever of them is its own. */
function checkLeaseTimes(settings: PoolSettings, service: ServiceSettings): void {
  const ttl = settings.leaseTtlMs ?? service.leaseTtlMs;
  const max = settings.maxLeaseMs ?? service.maxLeaseMs;
  if (max !== null && max < ttl) {
    throw new ValidationError([{ field: 'max_lease_ms', message: `must be at least lease_ttl_ms (${ttl})` }]);
  }
}

export function createPools(deps: { pool: Pool; service: ServiceSettings; log: Logger }) {
  const { pool: db, service, log } = deps;

  async function info(name: string): Promise<PoolInfo> {
    const row = await pools.findPool(db, name);
    if (row === null) throw unknownPool(name);
    return toInfo(row, service);
  }

  return {
    /** Makes a pool with `size` tokens; a name already taken is refused (409 pool_exists). */
    async create(input: NewPool): Promise<PoolInfo> {
      const settings: PoolSettings = {
        leaseTtlMs: input.leaseTtlMs ?? null,
        maxLeaseMs: input.maxLeaseMs ?? null,
        fullPolicy: input.fullPolicy ?? null,
        maxWaiters: input.maxWaiters ?? null,
      };
      checkLeaseTimes(settings, service);
      await withTransaction(db, async (tx) => {
        const row = await pools.insertPool(tx, { name: input.name, size: input.size, ...settings });
        if (row === null) throw new PoolExistsError(input.name);
        await topUp(tx, row.id, input.size);
      });
      log.info({ pool: input.name, size: input.size }, 'pool created');
      return info(input.name);
    },

    async list(): Promise<PoolInfo[]> {
      return (await pools.listPools(db)).map((row) => toInfo(row, service));
    },

    get: info,

    /** Grows the pool to `size` (never shrinks it) and changes its settings for new leases. */
    async update(name: string, change: PoolChange): Promise<PoolInfo> {
      await withTransaction(db, async (tx) => {
        const row = await pools.lockPool(tx, name);
        if (row === null) throw unknownPool(name);
        const current = Number(row.size);
        const size = change.size ?? current;
        if (size < current) {
          throw new ValidationError([{ field: 'size', message: `a pool only grows: it has ${current} tokens` }]);
        }
        const pick = <T>(given: T | null | undefined, kept: T | null): T | null => (given === undefined ? kept : given);
        const settings: PoolSettings = {
          leaseTtlMs: pick(change.leaseTtlMs, row.lease_ttl_ms),
          maxLeaseMs: pick(change.maxLeaseMs, row.max_lease_ms),
          fullPolicy: pick(change.fullPolicy, row.full_policy),
          maxWaiters: pick(change.maxWaiters, row.max_waiters),
        };
        checkLeaseTimes(settings, service);
        await pools.updatePool(tx, { id: row.id, size, ...settings });
        await topUp(tx, row.id, size);
      });
      log.info({ pool: name, change }, 'pool changed');
      return info(name);
    },
  };
}

export type Pools = ReturnType<typeof createPools>;

/**
 * Finds pools by name for the routes. A pool's id never changes and pools are never deleted, so
 * ids are kept; the settings the routes need in memory (the waiters a process lets wait) are
 * read again once they are `maxAgeMs` old, so a change reaches every process within that.
 */
export function createPoolDirectory(deps: { pool: Pool; service: ServiceSettings; maxAgeMs?: number }) {
  const maxAgeMs = deps.maxAgeMs ?? 1_000;
  const known = new Map<string, { id: number; maxWaiters: number; readAt: number }>();
  return {
    async find(name: string): Promise<{ id: number; maxWaiters: number }> {
      const kept = known.get(name);
      if (kept !== undefined && Date.now() - kept.readAt < maxAgeMs) return kept;
      const row = await pools.findPoolRow(deps.pool, name);
      if (row === null) throw unknownPool(name);
      const found = { id: row.id, maxWaiters: row.max_waiters ?? deps.service.maxWaiters, readAt: Date.now() };
      known.set(name, found);
      return found;
    },
  };
}

export type PoolDirectory = ReturnType<typeof createPoolDirectory>;

/** Creates tokens until the pool `poolId` holds `size`; one top-up at a time across processes. */
async function topUp(tx: PoolClient, poolId: number, size: number): Promise<number> {
  await sql.lockPoolSeeding(tx);
  return sql.topUpPool(tx, { poolId, size });
}

/** Ends every open lease of the pool; those already past their expiry end as expired, not cleared. */
export async function clearPool(deps: LeasesDeps): Promise<{ cleared: number; expired: number }> {
  const ended = await sql.clearLeases(deps.pool, deps.poolId);
  countEnded(deps, ended, 'clear');
  const cleared = ended.filter((u) => u.end_reason === 'cleared').length;
  deps.log.info({ cleared, expired: ended.length - cleared }, 'leases cleared');
  return { cleared, expired: ended.length - cleared };
}

/**
 * Grows the pool to at least `size` (POOL_SIZE, for the default pool at start) and creates tokens
 * until it holds its size, in one process at a time.
 */
export async function seedPool(deps: LeasesDeps, size: number): Promise<number> {
  const created = await withTransaction(deps.pool, async (tx) => {
    const target = await pools.growPool(tx, { id: deps.poolId, size });
    return topUp(tx, deps.poolId, target);
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
