// The statements on pools (src/domain/pools.ts). A pool's settings are null where it follows the
// service's; the lease statements in sql/ read them from the pool's row themselves.

import type { Queryable } from './pool.js';
import { query } from './pool.js';

export type FullPolicy = 'reject' | 'evict_oldest';

export interface PoolRow {
  id: number;
  name: string;
  size: string; // int8 arrives as a string
  lease_ttl_ms: number | null;
  max_lease_ms: number | null;
  full_policy: FullPolicy | null;
  max_waiters: number | null;
  created_at: Date;
}

export interface PoolCountsRow extends PoolRow {
  /** Tokens without an active lease (a lease past its expiry counts as free), not retired. */
  free: number;
  held: number;
  /** Tokens taken out of use, once their lease (if any) has ended. */
  retired: number;
}

export interface PoolSettings {
  leaseTtlMs: number | null;
  maxLeaseMs: number | null;
  fullPolicy: FullPolicy | null;
  maxWaiters: number | null;
}

const COUNTS = `
  SELECT p.*,
         count(t.id) FILTER (WHERE t.retired_at IS NULL
                               AND (t.lease_id IS NULL OR t.expires_at <= clock_timestamp()))::int AS free,
         count(t.id) FILTER (WHERE t.expires_at > clock_timestamp())::int AS held,
         count(t.id) FILTER (WHERE t.retired_at IS NOT NULL
                               AND (t.lease_id IS NULL OR t.expires_at <= clock_timestamp()))::int AS retired
  FROM pools p LEFT JOIN tokens t ON t.pool_id = p.id`;

/** Every pool with how many of its tokens are free and held, by name. */
export async function listPools(db: Queryable): Promise<PoolCountsRow[]> {
  return query<PoolCountsRow>(db, 'list-pools', `${COUNTS} GROUP BY p.id ORDER BY p.name`);
}

export async function findPool(db: Queryable, name: string): Promise<PoolCountsRow | null> {
  const rows = await query<PoolCountsRow>(db, 'find-pool', `${COUNTS} WHERE p.name = $1 GROUP BY p.id`, [name]);
  return rows[0] ?? null;
}

/** The pool's row alone, without counting its tokens. */
export async function findPoolRow(db: Queryable, name: string): Promise<PoolRow | null> {
  const rows = await query<PoolRow>(db, 'find-pool-row', 'SELECT * FROM pools WHERE name = $1', [name]);
  return rows[0] ?? null;
}

/** The pool's row, locked until the transaction ends: a change of its size or settings. */
export async function lockPool(db: Queryable, name: string): Promise<PoolRow | null> {
  const rows = await query<PoolRow>(db, 'lock-pool', 'SELECT * FROM pools WHERE name = $1 FOR UPDATE', [name]);
  return rows[0] ?? null;
}

/** Adds a pool; null when one of that name exists. */
export async function insertPool(
  db: Queryable,
  args: { name: string; size: number } & PoolSettings,
): Promise<PoolRow | null> {
  const rows = await query<PoolRow>(
    db,
    'insert-pool',
    `INSERT INTO pools (name, size, lease_ttl_ms, max_lease_ms, full_policy, max_waiters)
     VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (name) DO NOTHING
     RETURNING *`,
    [args.name, args.size, args.leaseTtlMs, args.maxLeaseMs, args.fullPolicy, args.maxWaiters],
  );
  return rows[0] ?? null;
}

/** Sets the size and every setting of the pool `id` (the caller merged the change in). */
export async function updatePool(db: Queryable, args: { id: number; size: number } & PoolSettings): Promise<void> {
  await query(
    db,
    'update-pool',
    `UPDATE pools SET size = $2, lease_ttl_ms = $3, max_lease_ms = $4, full_policy = $5, max_waiters = $6
     WHERE id = $1`,
    [args.id, args.size, args.leaseTtlMs, args.maxLeaseMs, args.fullPolicy, args.maxWaiters],
  );
}

/** Raises the pool's size to at least `size` (the default pool's, from POOL_SIZE at start). */
export async function growPool(db: Queryable, args: { id: number; size: number }): Promise<number> {
  const rows = await query<{ size: string }>(
    db,
    'grow-pool',
    'UPDATE pools SET size = greatest(size, $2) WHERE id = $1 RETURNING size',
    [args.id, args.size],
  );
  return Number(rows[0]?.size ?? 0);
}
