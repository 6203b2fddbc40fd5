// Every SQL statement the service runs, so that locking can be reviewed in one file.
// Activation lives in the migrations as activate_lease() (the latest version is in 0005),
// because it needs a few steps with fallbacks and must still cost one round trip; read the
// header in 0001 for the locking order.
//
// The locking order, everywhere: a token row is locked before any usage row of that token.
// Every statement that ends a lease locks the token first and re-checks its conditions in the
// UPDATE itself (on the newest row), so the release job, the sweep, clear and release can race
// with each other and with activation and each lease still ends exactly once.
//
// Decisions (is it due? is it active?) use now(), the statement's time. The times a lease is
// recorded to start and end use clock_timestamp(), read once the row is locked: now() is when
// the transaction began, which can be before the commit that granted the lease being ended (an
// end before its start) or that freed the token being taken (overlapping leases).

import type { PoolClient, Queryable } from './pool.js';
import { query } from './pool.js';

export type EndReason = 'expired' | 'released' | 'cleared' | 'evicted';

export interface UsageRow {
  id: string;
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
  /** Leases this activation ended because their time had run out (migrations/0004). */
  expired_lease_ids: string[];
}

/** `waiterId`: the caller waits in the queue (migrations/0002); null for a plain activation. */
export async function activateLease(
  db: Queryable,
  args: { userId: string; ttlMs: number; evictOldest: boolean; waiterId: string | null },
): Promise<ActivateRow> {
  const rows = await query<ActivateRow>(
    db,
    'activate-lease',
    'SELECT * FROM activate_lease($1, $2, $3, $4)',
    [args.userId, args.ttlMs, args.evictOldest, args.waiterId],
  );
  return one(rows);
}

/** Whole milliseconds from `clock` until `expiry`, rounded up, never negative (a job delay). */
const msUntil = (expiry: string, clock = 'now()') =>
  `greatest(0, ceil(extract(epoch FROM ${expiry} - ${clock}) * 1000))::int`;

// The tail shared by every statement that ends leases. `locked` must select (id, usage_id) of
// the tokens to free, locked FOR UPDATE; `guard` narrows the UPDATE on the newest usage row.
// ended_at is read from the clock once the token is locked, not from now() (the transaction's
// start, possibly before the lease was even granted), so that a usage never ends before it
// started and the token's next lease never starts before it ended (migrations/0003).
// The ended usages are the CTE `ended`.
function endLockedLeasesWith(locked: string, reason: string, guard = ''): string {
  return `
    WITH locked AS (${locked}),
    ended AS (
      UPDATE usages u SET ended_at = clock_timestamp(), end_reason = ${reason}
      FROM locked
      WHERE u.id = locked.usage_id AND u.ended_at IS NULL ${guard}
      RETURNING u.*
    ),
    freed AS (
      UPDATE tokens t SET usage_id = NULL
      FROM ended
      WHERE t.id = ended.token_id AND t.usage_id = ended.id
    )`;
}

function endLockedLeases(locked: string, reason: string, guard = ''): string {
  return `${endLockedLeasesWith(locked, reason, guard)}
    SELECT * FROM ended`;
}

const END_LEASE_IF_DUE = endLockedLeases(
  'SELECT t.id, t.usage_id FROM tokens t WHERE t.usage_id = $1 FOR UPDATE',
  `'expired'`,
  'AND u.expires_at <= now()',
);

// SKIP LOCKED: a token someone else has locked is being ended or taken right now. `limit` is
// the parameter that bounds the batch.
const dueLeases = (limit: string) =>
  `SELECT t.id, t.usage_id FROM usages u JOIN tokens t ON t.usage_id = u.id
   WHERE u.ended_at IS NULL AND u.expires_at <= now()
   ORDER BY u.expires_at
   LIMIT ${limit}
   FOR UPDATE OF t SKIP LOCKED`;

const END_DUE_LEASES = endLockedLeases(dueLeases('$1'), `'expired'`, 'AND u.expires_at <= now()');

/** Ends one lease whose time is up; null when it already ended or is not due (renewed). */
export async function endLeaseIfDue(db: Queryable, leaseId: string): Promise<UsageRow | null> {
  return maybeOne(await query<UsageRow>(db, 'end-lease-if-due', END_LEASE_IF_DUE, [leaseId]));
}

// A release job ends every lease that is due, its own among them, in one statement: under a
// burst of expiries the first job to run ends them all, and the jobs queued behind it find their
// lease already ended, so lateness does not grow with the job backlog. SKIP LOCKED as in the
// sweep: a token someone else has locked is being ended or taken right now. `own` is the job's
// lease as it was before this statement (a CTE's changes are invisible to the rest of it).
const END_DUE_LEASES_WITH = `
  ${endLockedLeasesWith(dueLeases('$2'), `'expired'`, 'AND u.expires_at <= now()')}
  SELECT 'ended' AS kind, e.*, NULL::boolean AS due, NULL::int AS remaining_ms FROM ended e
  UNION ALL
  SELECT 'own', o.*, o.expires_at <= now(),
         ${msUntil('o.expires_at')}
  FROM usages o WHERE o.id = $1`;

export interface OwnLeaseRow extends UsageRow {
  /** Its time is up (by the database clock, at the statement). */
  due: boolean;
  remaining_ms: number;
}

/**
 * Ends up to `limit` leases whose time is up, oldest expiry first, and reads `leaseId` as it was
 * before (null if there is no such lease).
 */
export async function endDueLeasesWith(
  db: Queryable,
  args: { leaseId: string; limit: number },
): Promise<{ ended: UsageRow[]; own: OwnLeaseRow | null }> {
  const rows = await query<OwnLeaseRow & { kind: 'ended' | 'own' }>(
    db,
    'end-due-leases-with',
    END_DUE_LEASES_WITH,
    [args.leaseId, args.limit],
  );
  return {
    ended: rows.filter((row) => row.kind === 'ended'),
    own: rows.find((row) => row.kind === 'own') ?? null,
  };
}

/** An open lease's expiry and the time left until it, by the database clock; null once ended. */
export async function findOpenLeaseExpiry(
  db: Queryable,
  leaseId: string,
): Promise<{ expires_at: Date; remaining_ms: number } | null> {
  return maybeOne(
    await query<{ expires_at: Date; remaining_ms: number }>(
      db,
      'find-open-lease-expiry',
      `SELECT expires_at,
              ${msUntil('expires_at')} AS remaining_ms
       FROM usages WHERE id = $1 AND ended_at IS NULL`,
      [leaseId],
    ),
  );
}

export interface OpenLeaseRow extends UsageRow {
  remaining_ms: number;
}

/**
 * A page of open leases in token order (the partial index of open usages per token), with the
 * time left on each, for re-adding release jobs.
 */
export async function listOpenLeases(
  db: Queryable,
  args: { afterTokenId: string | null; limit: number },
): Promise<OpenLeaseRow[]> {
  return query<OpenLeaseRow>(
    db,
    'list-open-leases',
    `SELECT u.*,
            ${msUntil('u.expires_at')} AS remaining_ms
     FROM usages u
     WHERE u.ended_at IS NULL AND ($1::uuid IS NULL OR u.token_id > $1::uuid)
     ORDER BY u.token_id
     LIMIT $2`,
    [args.afterTokenId, args.limit],
  );
}

/** Ends up to `limit` leases whose time is up, oldest expiry first. */
export async function endDueLeases(db: Queryable, limit: number): Promise<UsageRow[]> {
  return query<UsageRow>(db, 'end-due-leases', END_DUE_LEASES, [limit]);
}

// A lease that ran out before the release is ended as expired: it was no longer the caller's.
const RELEASE_LEASE = endLockedLeases(
  `SELECT t.id, t.usage_id FROM tokens t JOIN usages u ON u.id = t.usage_id
   WHERE t.id = $1 AND u.user_id = $2
   FOR UPDATE OF t`,
  `CASE WHEN u.expires_at <= now() THEN 'expired' ELSE 'released' END`,
  'AND u.user_id = $2',
);

/** Ends the caller's open lease of a token; null when the caller holds no open lease of it. */
export async function releaseLease(
  db: Queryable,
  args: { tokenId: string; userId: string },
): Promise<UsageRow | null> {
  return maybeOne(
    await query<UsageRow>(db, 'release-lease', RELEASE_LEASE, [args.tokenId, args.userId]),
  );
}

export interface RenewedRow extends UsageRow {
  remaining_ms: number;
}

// Only the usage row changes, so no token lock is needed: the conditions are re-checked on the
// newest row, and a lease that has run out (or been ended) can never be brought back.
// $4 caps the lease's whole life (MAX_LEASE_MS); a lease already at its cap is not renewed.
// Decided and stamped by the clock as the row is reached, not by now(), the statement's start:
// a renewal that waited for the row (behind another renewal, or a statement ending the lease)
// would otherwise bring back a lease that had run out meanwhile, after reads had reported it
// expired, and the earlier of two concurrent renewals could shorten what the later one had
// answered. The expiry never moves back.
const RENEW_LEASE = `
  UPDATE usages u
  SET expires_at = greatest(u.expires_at, CASE
    WHEN $4::int IS NULL THEN clock_timestamp() + $3::int * interval '1 millisecond'
    ELSE least(clock_timestamp() + $3::int * interval '1 millisecond', u.started_at + $4::int * interval '1 millisecond')
  END)
  WHERE u.token_id = $1 AND u.user_id = $2 AND u.ended_at IS NULL AND u.expires_at > clock_timestamp()
    AND ($4::int IS NULL OR u.started_at + $4::int * interval '1 millisecond' > u.expires_at)
  RETURNING u.*,
    ${msUntil('u.expires_at', 'clock_timestamp()')} AS remaining_ms`;

export async function renewLease(
  db: Queryable,
  args: { tokenId: string; userId: string; ttlMs: number; maxLeaseMs: number | null },
): Promise<RenewedRow | null> {
  return maybeOne(
    await query<RenewedRow>(db, 'renew-lease', RENEW_LEASE, [
      args.tokenId,
      args.userId,
      args.ttlMs,
      args.maxLeaseMs,
    ]),
  );
}

/** The caller's most recent usage of a token (open or ended), to explain a refused release or renewal. */
export async function findLatestUsage(
  db: Queryable,
  args: { tokenId: string; userId: string },
): Promise<(UsageRow & { active: boolean }) | null> {
  return maybeOne(
    await query<UsageRow & { active: boolean }>(
      db,
      'find-latest-usage',
      `SELECT u.*, (u.ended_at IS NULL AND u.expires_at > now()) AS active
       FROM usages u WHERE u.user_id = $2 AND u.token_id = $1
       ORDER BY u.fence DESC LIMIT 1`,
      [args.tokenId, args.userId],
    ),
  );
}

/** One lease of a token by its fence: a single read of the (token_id, fence) unique index, no lock. */
export async function findUsageByFence(
  db: Queryable,
  args: { tokenId: string; fence: number },
): Promise<(UsageRow & { active: boolean }) | null> {
  return maybeOne(
    await query<UsageRow & { active: boolean }>(
      db,
      'find-usage-by-fence',
      `SELECT u.*, (u.ended_at IS NULL AND u.expires_at > now()) AS active
       FROM usages u WHERE u.token_id = $1 AND u.fence = $2`,
      [args.tokenId, args.fence],
    ),
  );
}

/** Joins the waiting queue; the id is the place in it. The deadline is kept by the database clock. */
export async function addWaiter(
  db: Queryable,
  args: { userId: string; timeoutMs: number },
): Promise<string> {
  const rows = await query<{ id: string }>(
    db,
    'add-waiter',
    // Ordered with the statements that free tokens, so that no wake-up is lost, unless the lock
    // that orders them cannot be had within a second (migrations/0006 and 0007).
    'SELECT add_waiter($1, $2) AS id',
    [args.userId, args.timeoutMs],
  );
  return one(rows).id;
}

export async function removeWaiter(db: Queryable, waiterId: string): Promise<void> {
  await query(db, 'remove-waiter', 'DELETE FROM waiters WHERE id = $1', [waiterId]);
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
    'DELETE FROM waiters w WHERE NOT waiter_is_live(w) RETURNING id',
  );
  return rows.length;
}

// In pool order, so that two clears lock the same rows in the same order and never deadlock.
// A lease that ran out is ended as expired, not cleared: that is what happened to it.
const CLEAR_LEASES = endLockedLeases(
  'SELECT t.id, t.usage_id FROM tokens t WHERE t.usage_id IS NOT NULL ORDER BY t.position FOR UPDATE',
  `CASE WHEN u.expires_at <= now() THEN 'expired' ELSE 'cleared' END`,
);

/** Ends every open lease; returns the ended usages. */
export async function clearLeases(db: Queryable): Promise<UsageRow[]> {
  return query<UsageRow>(db, 'clear-leases', CLEAR_LEASES);
}

// Advisory lock class 2 (class 1 is the per-user lock in activate_lease): one sweep at a time
// across every worker process. Released with the transaction, so a crashed sweeper frees it.
export async function tryLockSweep(tx: PoolClient): Promise<boolean> {
  const rows = await query<{ locked: boolean }>(
    tx,
    'try-lock-sweep',
    'SELECT pg_try_advisory_xact_lock(2, 0) AS locked',
  );
  return one(rows).locked;
}

// Class 3: one process at a time tops the pool up.
export async function lockPoolSeeding(tx: PoolClient): Promise<void> {
  await query(tx, 'lock-pool-seeding', 'SELECT pg_advisory_xact_lock(3, 0)');
}

/** Creates tokens until the pool holds `size`; never deletes any. Returns how many were made. */
export async function topUpPool(tx: PoolClient, size: number): Promise<number> {
  const rows = await query<{ created: number }>(
    tx,
    'top-up-pool',
    `WITH made AS (
       INSERT INTO tokens (created_at)
       SELECT now() FROM generate_series(1, $1::bigint - (SELECT count(*) FROM tokens))
       RETURNING 1
     )
     SELECT count(*)::int AS created FROM made`,
    [size],
  );
  return one(rows).created;
}

export interface TokenRow {
  id: string;
  lease_id: string | null;
  user_id: string | null;
  fence: string | null;
  started_at: Date | null;
  expires_at: Date | null;
}

// A lease past its expiry is not joined: it counts as free even before anything ends the row.
const TOKEN_COLUMNS = `
  SELECT t.id, u.id AS lease_id, u.user_id, u.fence, u.started_at, u.expires_at
  FROM tokens t
  LEFT JOIN usages u ON u.id = t.usage_id AND u.expires_at > now()`;

export interface ListedTokenRow extends TokenRow {
  /** Until the lease expires, by the database clock, rounded down; null for a free token. */
  remaining_ms: number | null;
}

export async function listTokens(db: Queryable): Promise<ListedTokenRow[]> {
  return query<ListedTokenRow>(
    db,
    'list-tokens',
    `SELECT t.id, u.id AS lease_id, u.user_id, u.fence, u.started_at, u.expires_at,
            floor(extract(epoch FROM u.expires_at - now()) * 1000)::float8 AS remaining_ms
     FROM tokens t
     LEFT JOIN usages u ON u.id = t.usage_id AND u.expires_at > now()
     ORDER BY t.position`,
  );
}

export async function findToken(db: Queryable, tokenId: string): Promise<TokenRow | null> {
  return maybeOne(
    await query<TokenRow>(db, 'find-token', `${TOKEN_COLUMNS} WHERE t.id = $1`, [tokenId]),
  );
}

export async function tokenExists(db: Queryable, tokenId: string): Promise<boolean> {
  const rows = await query(db, 'token-exists', 'SELECT 1 FROM tokens WHERE id = $1', [tokenId]);
  return rows.length > 0;
}

/** A page of a token's usages, newest first, keyed by fence (which grows with start order). */
export async function listUsages(
  db: Queryable,
  args: { tokenId: string; beforeFence: number | null; limit: number },
): Promise<UsageRow[]> {
  return query<UsageRow>(
    db,
    'list-usages',
    `SELECT * FROM usages
     WHERE token_id = $1 AND ($2::bigint IS NULL OR fence < $2::bigint)
     ORDER BY fence DESC
     LIMIT $3`,
    [args.tokenId, args.beforeFence, args.limit],
  );
}

/** Sends a notification to every session LISTENing on `channel`, when the transaction commits. */
export async function notify(db: Queryable, args: { channel: string; payload: string }): Promise<void> {
  await query(db, 'notify', 'SELECT pg_notify($1, $2)', [args.channel, args.payload]);
}

export async function ping(db: Queryable): Promise<void> {
  await query(db, 'ping', 'SELECT 1');
}

function one<R>(rows: R[]): R {
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
