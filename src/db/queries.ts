// Every SQL statement the service runs, so that locking can be reviewed in one place with the
// functions in sql/ (one file each). docs/design.md gives the rule they all follow: a change to
// a lease locks the token row first, then reads the clock once, and decides and stamps
// everything by that reading.

import type { PoolClient, Queryable } from './pool.js';
import { query } from './pool.js';

export type EndReason = 'expired' | 'released' | 'cleared' | 'evicted' | 'redeemed' | 'retired' | 'revoked';

export interface UsageRow {
  id: string;
  pool_id: number;
  token_id: string;
  user_id: string;
  fence: string; // int8 arrives as a string
  started_at: Date;
  expires_at: Date;
  ended_at: Date | null;
  end_reason: EndReason | null;
}

export interface ActivateRow {
  outcome: 'existing' | 'created' | 'exhausted' | 'queued';
  lease_id: string | null;
  token_id: string | null;
  user_id: string | null;
  fence: string | null;
  started_at: Date | null;
  expires_at: Date | null;
  wait_ms: string | null;
  evicted_lease_id: string | null;
  /** Leases this activation ended on the way because their time had run out. */
  expired_lease_ids: string[];
  /** The token's value as stored (src/domain/values.ts), for its holder; null without one. */
  value_sealed: Buffer | null;
}

/**
 * `waiterId`: the caller's place in the queue; null for a plain activation. `clientId`: the API
 * client asking, recorded on a new lease; null or absent for any other caller.
 */
export async function activateLease(
  db: Queryable,
  args: { poolId: number; userId: string; ttlMs: number; evictOldest: boolean; waiterId: string | null; clientId?: string | null },
): Promise<ActivateRow> {
  const rows = await query<ActivateRow>(
    db,
    'activate-lease',
    'SELECT * FROM activate_lease($1, $2, $3, $4, $5, $6)',
    [args.poolId, args.userId, args.ttlMs, args.evictOldest, args.waiterId, args.clientId ?? null],
  );
  return one(rows);
}

/** A usage with what a statement did to it; the usage columns are null when there is none. */
export type Outcome<O extends string, Extra = object> = {
  outcome: O;
} & ({ [K in keyof UsageRow]: UsageRow[K] | null } & Extra);

export type ReleaseRow = Outcome<'released' | 'released_before' | 'expired' | 'ended' | 'not_holder' | 'forbidden' | 'no_token'>;

/**
 * Ends the lease `leaseId` if it is `userId`'s lease of `tokenId` and, when `clientId` names the
 * API client asking, that client made it (sql/release_lease.sql).
 */
export async function releaseLease(
  db: Queryable,
  args: { tokenId: string; userId: string; leaseId: string; clientId?: string | null },
): Promise<ReleaseRow> {
  const rows = await query<ReleaseRow>(db, 'release-lease', 'SELECT * FROM release_lease($1, $2, $3, $4)', [
    args.tokenId,
    args.userId,
    args.leaseId,
    args.clientId ?? null,
  ]);
  return one(rows);
}

export type RenewRow = Outcome<
  'renewed' | 'max_lease' | 'expired' | 'ended' | 'not_holder' | 'forbidden' | 'no_token',
  { remaining_ms: number | null; value_sealed: Buffer | null }
>;

/**
 * Moves the expiry of `userId`'s lease `leaseId` of `tokenId`, if `clientId` (the API client
 * asking, when it is one) made it (sql/renew_lease.sql).
 */
export async function renewLease(
  db: Queryable,
  args: { tokenId: string; userId: string; leaseId: string; ttlMs: number; maxLeaseMs: number | null; clientId?: string | null },
): Promise<RenewRow> {
  const rows = await query<RenewRow>(db, 'renew-lease', 'SELECT * FROM renew_lease($1, $2, $3, $4, $5, $6)', [
    args.tokenId,
    args.userId,
    args.leaseId,
    args.ttlMs,
    args.maxLeaseMs,
    args.clientId ?? null,
  ]);
  return one(rows);
}

export type DueRow = Outcome<'ended' | 'not_due' | 'gone', { remaining_ms: number | null }>;

/** Ends one lease if its time is up (sql/end_lease_if_due.sql). */
export async function endLeaseIfDue(db: Queryable, leaseId: string): Promise<DueRow> {
  return one(await query<DueRow>(db, 'end-lease-if-due', 'SELECT * FROM end_lease_if_due($1)', [leaseId]));
}

/**
 * The release job's statement (sql/expire_lease.sql): the due leases of the lease's pool that
 * it ended, up to `limit`, and what became of the lease itself.
 */
export async function expireLease(
  db: Queryable,
  args: { leaseId: string; limit: number },
): Promise<{ ended: UsageRow[]; own: DueRow }> {
  const rows = await query<DueRow & { kind: 'ended' | 'own' }>(
    db,
    'expire-lease',
    'SELECT * FROM expire_lease($1, $2)',
    [args.leaseId, args.limit],
  );
  const own = rows.find((row) => row.kind === 'own');
  if (own === undefined) throw new Error('expire_lease answered no row for its own lease');
  return { ended: rows.filter((row) => row.kind === 'ended') as unknown as UsageRow[], own };
}

/** Ends up to `limit` leases of the pool whose time is up, earliest expiry first. */
export async function endDueLeases(db: Queryable, args: { poolId: number; limit: number }): Promise<UsageRow[]> {
  return query<UsageRow>(db, 'end-due-leases', 'SELECT * FROM end_due_leases($1, $2)', [args.poolId, args.limit]);
}

/** Ends every open lease of the pool; returns the ended usages. */
export async function clearLeases(db: Queryable, poolId: number): Promise<UsageRow[]> {
  return query<UsageRow>(db, 'clear-leases', 'SELECT * FROM clear_leases($1)', [poolId]);
}

export type RevokeRow = Outcome<'revoked' | 'expired' | 'ended' | 'gone'>;

/** Ends the lease `leaseId` now as revoked, whoever holds it (sql/revoke_lease.sql). */
export async function revokeLease(db: Queryable, leaseId: string): Promise<RevokeRow> {
  return one(await query<RevokeRow>(db, 'revoke-lease', 'SELECT * FROM revoke_lease($1)', [leaseId]));
}

/** Ends every open lease of the user, in every pool (sql/revoke_user_leases.sql); the ended usages. */
export async function revokeUserLeases(db: Queryable, userId: string): Promise<UsageRow[]> {
  return query<UsageRow>(db, 'revoke-user-leases', 'SELECT * FROM revoke_user_leases($1)', [userId]);
}

export interface LeaseRecordRow extends UsageRow {
  /** The name of the lease's pool. */
  pool: string;
  /** Open and unexpired, by the database clock. */
  active: boolean;
}

/** One lease by its id, open or ended, with its pool's name; no lock. */
export async function findLease(db: Queryable, leaseId: string): Promise<LeaseRecordRow | null> {
  return maybeOne(
    await query<LeaseRecordRow>(
      db,
      'find-lease',
      `SELECT u.*, p.name AS pool, (u.ended_at IS NULL AND u.expires_at > clock_timestamp()) AS active
       FROM all_usages u JOIN pools p ON p.id = u.pool_id WHERE u.id = $1`,
      [leaseId],
    ),
  );
}

/** Whole milliseconds from now until `expiry`, rounded up, never negative (a job delay). */
const msUntil = (expiry: string) => `greatest(0, ceil(extract(epoch FROM ${expiry} - clock_timestamp()) * 1000))::int`;

export interface OpenLeaseRow extends UsageRow {
  remaining_ms: number;
}

/**
 * A page of open leases in token order, with the time left on each, for re-adding release
 * jobs. Read from the token rows, which hold each open lease.
 */
export async function listOpenLeases(
  db: Queryable,
  args: { afterTokenId: string | null; limit: number },
): Promise<OpenLeaseRow[]> {
  return query<OpenLeaseRow>(
    db,
    'list-open-leases',
    `SELECT t.lease_id AS id, t.pool_id, t.id AS token_id, t.user_id, t.last_fence AS fence,
            t.started_at, t.expires_at, NULL::timestamptz AS ended_at, NULL::text AS end_reason,
            ${msUntil('t.expires_at')} AS remaining_ms
     FROM tokens t
     WHERE t.lease_id IS NOT NULL AND ($1::uuid IS NULL OR t.id > $1::uuid)
     ORDER BY t.id
     LIMIT $2`,
    [args.afterTokenId, args.limit],
  );
}

/**
 * One lease of a token by its fence, open or ended: a read of the open lease (by token, unique)
 * and of the history's (token_id, fence) unique index, no lock.
 */
export async function findUsageByFence(
  db: Queryable,
  args: { tokenId: string; fence: number },
): Promise<(UsageRow & { active: boolean }) | null> {
  return maybeOne(
    await query<UsageRow & { active: boolean }>(
      db,
      'find-usage-by-fence',
      `SELECT u.*, (u.ended_at IS NULL AND u.expires_at > clock_timestamp()) AS active
       FROM all_usages u WHERE u.token_id = $1 AND u.fence = $2`,
      [args.tokenId, args.fence],
    ),
  );
}

/**
 * Joins the pool's waiting queue; the id is the place in it. A plain insert: no lock holds
 * anyone up. The deadline is kept by the database clock.
 */
export async function addWaiter(
  db: Queryable,
  args: { poolId: number; userId: string; timeoutMs: number },
): Promise<string> {
  const rows = await query<{ id: string }>(
    db,
    'add-waiter',
    `INSERT INTO waiters (pool_id, user_id, deadline)
     VALUES ($1, $2, clock_timestamp() + $3::int * interval '1 millisecond')
     RETURNING id`,
    [args.poolId, args.userId, args.timeoutMs],
  );
  return one(rows).id;
}

/** Gives up a place; the pool's other waiters are told only when a place was actually given up. */
export async function removeWaiter(db: Queryable, waiterId: string): Promise<void> {
  await query(
    db,
    'remove-waiter',
    `WITH gone AS (DELETE FROM waiters WHERE id = $1 RETURNING pool_id)
     SELECT wake_waiters(pool_id) FROM gone`,
    [waiterId],
  );
}

/** Keeps this process's waiters live; a process that stops doing this loses its places. */
export async function heartbeatWaiters(db: Queryable, waiterIds: readonly string[]): Promise<void> {
  await query(db, 'heartbeat-waiters', 'UPDATE waiters SET heartbeat_at = now() WHERE id = ANY($1::bigint[])', [
    waiterIds,
  ]);
}

/** Deletes the places of waiters whose deadline passed or whose process stopped answering. */
export async function purgeDeadWaiters(db: Queryable): Promise<number> {
  const rows = await query<{ id: string }>(
    db,
    'purge-dead-waiters',
    `DELETE FROM waiters WHERE id IN (
       SELECT w.id FROM waiters w WHERE NOT waiter_is_live(w, clock_timestamp()) FOR UPDATE SKIP LOCKED
     ) RETURNING id`,
  );
  return rows.length;
}

// Advisory lock classes: 1 is the per-user lock in activate_lease, 4 applies sql/ at start.
// Class 2: one sweep at a time across every worker process. Released with the transaction, so a
// crashed sweeper frees it.
export async function tryLockSweep(tx: PoolClient): Promise<boolean> {
  const rows = await query<{ locked: boolean }>(
    tx,
    'try-lock-sweep',
    'SELECT pg_try_advisory_xact_lock(2, 0) AS locked',
  );
  return one(rows).locked;
}

// Class 3: one process at a time tops a pool up.
export async function lockPoolSeeding(tx: PoolClient): Promise<void> {
  await query(tx, 'lock-pool-seeding', 'SELECT pg_advisory_xact_lock(3, 0)');
}

/** Creates tokens until the pool holds `size`; never deletes any. Returns how many were made. */
export async function topUpPool(tx: PoolClient, args: { poolId: number; size: number }): Promise<number> {
  const rows = await query<{ created: number }>(
    tx,
    'top-up-pool',
    `WITH made AS (
       INSERT INTO tokens (pool_id)
       SELECT $1 FROM generate_series(1, $2::bigint - (SELECT count(*) FROM tokens WHERE pool_id = $1))
       RETURNING 1
     )
     SELECT count(*)::int AS created FROM made`,
    [args.poolId, args.size],
  );
  return one(rows).created;
}

/** The id of the pool with this name; null when there is none. */
export async function findPoolId(db: Queryable, name: string): Promise<number | null> {
  const row = maybeOne(await query<{ id: number }>(db, 'find-pool-id', 'SELECT id FROM pools WHERE name = $1', [name]));
  return row?.id ?? null;
}

export async function listPoolIds(db: Queryable): Promise<number[]> {
  const rows = await query<{ id: number }>(db, 'list-pool-ids', 'SELECT id FROM pools ORDER BY id');
  return rows.map((row) => row.id);
}

export interface TokenRow {
  id: string;
  pool_id: number;
  /** Taken out of use: never leased again (a held one stays held until its lease ends). */
  retired: boolean;
  lease_id: string | null;
  user_id: string | null;
  fence: string | null;
  started_at: Date | null;
  expires_at: Date | null;
}

// Read from the token row alone, which holds its open lease. A lease past its expiry is not
// shown: it counts as free even before anything ends it.
const TOKEN_COLUMNS = `
  SELECT t.id, t.pool_id, t.retired_at IS NOT NULL AS retired,
         CASE WHEN live THEN t.lease_id END AS lease_id,
         CASE WHEN live THEN t.user_id END AS user_id,
         CASE WHEN live THEN t.last_fence END AS fence,
         CASE WHEN live THEN t.started_at END AS started_at,
         CASE WHEN live THEN t.expires_at END AS expires_at`;
const TOKEN_FROM = `FROM tokens t, LATERAL (SELECT t.expires_at > clock_timestamp() AS live) l`;

export interface ListedTokenRow extends TokenRow {
  /** Until the lease expires, by the database clock, rounded down; null for a free token. */
  remaining_ms: number | null;
}

export async function listTokens(db: Queryable, poolId: number): Promise<ListedTokenRow[]> {
  return query<ListedTokenRow>(
    db,
    'list-tokens',
    `${TOKEN_COLUMNS},
       CASE WHEN live THEN floor(extract(epoch FROM t.expires_at - clock_timestamp()) * 1000)::float8 END AS remaining_ms
     ${TOKEN_FROM}
     WHERE t.pool_id = $1
     ORDER BY t.position`,
    [poolId],
  );
}

export async function findToken(db: Queryable, tokenId: string): Promise<TokenRow | null> {
  return maybeOne(await query<TokenRow>(db, 'find-token', `${TOKEN_COLUMNS} ${TOKEN_FROM} WHERE t.id = $1`, [tokenId]));
}

export async function tokenExists(db: Queryable, tokenId: string): Promise<boolean> {
  const rows = await query(db, 'token-exists', 'SELECT 1 FROM tokens WHERE id = $1', [tokenId]);
  return rows.length > 0;
}

/**
 * A page of a token's usages, newest first, keyed by fence (which grows with start order): its
 * open lease, if any, then the ended ones.
 */
export async function listUsages(
  db: Queryable,
  args: { tokenId: string; beforeFence: number | null; limit: number },
): Promise<UsageRow[]> {
  return query<UsageRow>(
    db,
    'list-usages',
    `SELECT * FROM all_usages
     WHERE token_id = $1 AND ($2::bigint IS NULL OR fence < $2::bigint)
     ORDER BY fence DESC
     LIMIT $3`,
    [args.tokenId, args.beforeFence, args.limit],
  );
}

// Upkeep (domain/maintenance.ts). Class 5: one upkeep at a time across every worker. A session
// lock, not a transaction's: VACUUM cannot run inside a transaction. It goes with the session if
// the process dies.
export async function tryLockMaintenance(client: PoolClient): Promise<boolean> {
  const rows = await query<{ locked: boolean }>(client, 'try-lock-maintenance', 'SELECT pg_try_advisory_lock(5, 0) AS locked');
  return one(rows).locked;
}

export async function unlockMaintenance(client: PoolClient): Promise<void> {
  await query(client, 'unlock-maintenance', 'SELECT pg_advisory_unlock(5, 0)');
}

/**
 * The tables the upkeep vacuums: the ones whose rows every lease change rewrites or deletes.
 * usages and events are insert-only; what retention deletes from them is vacuumed too.
 */
export const HOT_TABLES = ['tokens', 'leases', 'waiters', 'usages', 'events'] as const;
export type HotTable = (typeof HOT_TABLES)[number];

export async function deadRows(db: Queryable): Promise<Array<{ table: HotTable; dead: number; live: number }>> {
  return query(
    db,
    'dead-rows',
    `SELECT relname AS table, n_dead_tup::float8 AS dead, n_live_tup::float8 AS live
     FROM pg_stat_user_tables WHERE schemaname = 'public' AND relname = ANY($1)`,
    [HOT_TABLES],
  );
}

/**
 * VACUUM takes a lock that no lease statement conflicts with; TRUNCATE false keeps it from
 * taking the exclusive lock that giving empty pages back at the end of the table would need.
 */
export async function vacuum(client: PoolClient, table: HotTable): Promise<void> {
  if (!HOT_TABLES.includes(table)) throw new Error(`not a table the upkeep vacuums: ${table}`);
  await client.query(`VACUUM (TRUNCATE false) ${table}`);
}

/**
 * Deletes up to `limit` usages that ended more than `days` days ago, oldest first. Found by
 * their ids, which are UUIDv7 of their start (sql/uuid_v7_floor.sql): a range of the primary
 * key, not a scan of the history. Open leases are never touched: they are not in usages.
 */
export async function deleteOldUsages(db: Queryable, args: { days: number; limit: number }): Promise<number> {
  const rows = await query<{ n: number }>(
    db,
    'delete-old-usages',
    `WITH old AS (
       SELECT id FROM usages
       WHERE id < uuid_v7_floor(now() - $1::float8 * interval '1 day')
         AND ended_at < now() - $1::float8 * interval '1 day'
       ORDER BY id
       LIMIT $2
     ), gone AS (
       DELETE FROM usages u USING old WHERE u.id = old.id RETURNING 1
     )
     SELECT count(*)::int AS n FROM gone`,
    [args.days, args.limit],
  );
  return one(rows).n;
}

/** Sends a notification to every session LISTENing on `channel`, when the transaction commits. */
export async function notify(db: Queryable, args: { channel: string; payload: string }): Promise<void> {
  await query(db, 'notify', 'SELECT pg_notify($1, $2)', [args.channel, args.payload]);
}

export async function ping(db: Queryable): Promise<void> {
  await query(db, 'ping', 'SELECT 1');
}

export function one<R>(rows: R[]): R {
  const [row] = rows;
  if (row === undefined || rows.length > 1) {
    throw new Error(`expected exactly one row, got ${rows.length}`);
  }
  return row;
}

function maybeOne<R>(rows: R[]): R | null {
  if (rows.length > 1) throw new Error(`expected at most one row, got ${rows.length}`);
  return rows[0] ?? null;
}
