// The statements on what a token carries (src/domain/values.ts) and on tokens taken out of use:
// adding tokens with values, checking and redeeming a value, retiring a token, and the answers
// kept for requests sent with an Idempotency-Key. Redeem and retire change leases: they are
// functions in sql/, under the token's lock like every lease change.

import type { Queryable } from './pool.js';
import { query } from './pool.js';
import { one, type Outcome } from './queries.js';

/**
 * Adds tokens with these values (digests and sealed forms, in the same order) to the pool, and
 * grows its size by as many, in one transaction: the pool's row first, as a change of its size
 * does. Returns their ids in the order given.
 */
export async function insertTokensWithValues(
  db: Queryable,
  args: { poolId: number; digests: readonly Buffer[]; sealed: readonly Buffer[] },
): Promise<string[]> {
  const rows = await query<{ id: string }>(
    db,
    'insert-tokens-with-values',
    `WITH grown AS (
       UPDATE pools SET size = size + cardinality($2::bytea[]) WHERE id = $1 RETURNING id
     )
     INSERT INTO tokens (pool_id, value_digest, value_sealed)
     SELECT grown.id, v.digest, v.sealed
     FROM grown, unnest($2::bytea[], $3::bytea[]) WITH ORDINALITY AS v (digest, sealed, n)
     ORDER BY v.n
     RETURNING id`,
    [args.poolId, args.digests, args.sealed],
  );
  return rows.map((row) => row.id);
}

/**
 * Adds one token with this value to the pool, in a statement (a transaction) of its own, and
 * grows the pool's size by one; null when a token has this value already (nothing changes).
 */
export async function insertTokenWithValue(
  db: Queryable,
  args: { poolId: number; digest: Buffer; sealed: Buffer },
): Promise<string | null> {
  const rows = await query<{ id: string }>(
    db,
    'insert-token-with-value',
    `WITH made AS (
       INSERT INTO tokens (pool_id, value_digest, value_sealed) VALUES ($1, $2, $3)
       ON CONFLICT (value_digest) DO NOTHING
       RETURNING id
     ), grown AS (
       UPDATE pools SET size = size + 1 WHERE id = $1 AND EXISTS (SELECT 1 FROM made)
     )
     SELECT id FROM made`,
    [args.poolId, args.digest, args.sealed],
  );
  return rows[0]?.id ?? null;
}

export interface CheckRow {
  token_id: string;
  held: boolean;
  user_id: string | null;
  fence: string | null; // int8 arrives as a string
  expires_at: Date | null;
}

/**
 * The token with this value and whether it is held now, by the database clock: one read of the
 * unique index on value_digest, no lock. A lease past its expiry counts as ended, as in every
 * read. Null when no token has this value.
 */
export async function checkValue(db: Queryable, digest: Buffer): Promise<CheckRow | null> {
  const rows = await query<CheckRow>(
    db,
    'check-value',
    `SELECT t.id AS token_id, live AS held,
            CASE WHEN live THEN t.user_id END AS user_id,
            CASE WHEN live THEN t.last_fence END AS fence,
            CASE WHEN live THEN t.expires_at END AS expires_at
     FROM tokens t, LATERAL (SELECT t.expires_at > clock_timestamp() IS TRUE AS live) l
     WHERE t.value_digest = $1`,
    [digest],
  );
  return rows[0] ?? null;
}

export type RedeemRow = Outcome<
  'redeemed' | 'already_redeemed' | 'expired' | 'ended' | 'not_holder' | 'forbidden' | 'no_token'
>;

/** The holder uses the token with this value up (sql/redeem_token.sql). */
export async function redeemToken(
  db: Queryable,
  args: { digest: Buffer; userId: string; clientId: string | null },
): Promise<RedeemRow> {
  const rows = await query<RedeemRow>(db, 'redeem-token', 'SELECT * FROM redeem_token($1, $2, $3)', [
    args.digest,
    args.userId,
    args.clientId,
  ]);
  return one(rows);
}

export type RetireRow = Outcome<'retired' | 'retiring' | 'no_token'>;

/** Takes the token out of use, now or when its lease ends (sql/retire_token.sql). */
export async function retireToken(db: Queryable, args: { tokenId: string; now: boolean }): Promise<RetireRow> {
  return one(await query<RetireRow>(db, 'retire-token', 'SELECT * FROM retire_token($1, $2)', [args.tokenId, args.now]));
}

/**
 * Whether any token's value is sealed under a key other than `keyId` (or under any key, when
 * `keyId` is null): such a value could not be opened. Read once at start.
 */
export async function valueSealedElsewhere(db: Queryable, keyId: Buffer | null): Promise<boolean> {
  const rows = await query(
    db,
    'value-sealed-elsewhere',
    `SELECT 1 FROM tokens
     WHERE get_byte(value_sealed, 0) = 1 AND ($1::bytea IS NULL OR substring(value_sealed FROM 2 FOR 4) <> $1::bytea)
     LIMIT 1`,
    [keyId],
  );
  return rows.length > 0;
}

// ---- requests sent with an Idempotency-Key ------------------------------------------------------

export interface IdempotentRow {
  request_hash: Buffer;
  answer: unknown;
  /** Whether the request that claimed the key began longer ago than the claim is kept. */
  lapsed: boolean;
}

/** Claims `key` for `operation`; false when it is claimed already (then read it with findClaim). */
export async function claimKey(
  db: Queryable,
  args: { operation: string; key: string; requestHash: Buffer },
): Promise<boolean> {
  const rows = await query(
    db,
    'claim-idempotency-key',
    `INSERT INTO idempotent_requests (operation, key, request_hash) VALUES ($1, $2, $3)
     ON CONFLICT DO NOTHING RETURNING 1`,
    [args.operation, args.key, args.requestHash],
  );
  return rows.length > 0;
}

export async function findClaim(
  db: Queryable,
  args: { operation: string; key: string; lapseMs: number },
): Promise<IdempotentRow | null> {
  const rows = await query<IdempotentRow>(
    db,
    'find-idempotency-key',
    `SELECT request_hash, answer, created_at < clock_timestamp() - $3::int * interval '1 millisecond' AS lapsed
     FROM idempotent_requests WHERE operation = $1 AND key = $2`,
    [args.operation, args.key, args.lapseMs],
  );
  return rows[0] ?? null;
}

/** Takes over a claim whose request never answered (its process died): true if this call got it. */
export async function retakeLapsedClaim(
  db: Queryable,
  args: { operation: string; key: string; lapseMs: number },
): Promise<boolean> {
  const rows = await query(
    db,
    'retake-idempotency-key',
    `UPDATE idempotent_requests SET created_at = clock_timestamp()
     WHERE operation = $1 AND key = $2 AND answer IS NULL
       AND created_at < clock_timestamp() - $3::int * interval '1 millisecond'
     RETURNING 1`,
    [args.operation, args.key, args.lapseMs],
  );
  return rows.length > 0;
}

export async function storeAnswer(db: Queryable, args: { operation: string; key: string; answer: unknown }): Promise<void> {
  await query(db, 'store-idempotent-answer', 'UPDATE idempotent_requests SET answer = $3 WHERE operation = $1 AND key = $2', [
    args.operation,
    args.key,
    JSON.stringify(args.answer),
  ]);
}

/** Gives a claim up when its request failed, so that a retry runs it again. */
export async function dropClaim(db: Queryable, args: { operation: string; key: string }): Promise<void> {
  await query(db, 'drop-idempotency-key', 'DELETE FROM idempotent_requests WHERE operation = $1 AND key = $2 AND answer IS NULL', [
    args.operation,
    args.key,
  ]);
}

/** Deletes the answers kept longer than `hours`. */
export async function deleteOldAnswers(db: Queryable, hours: number): Promise<number> {
  const rows = await query(
    db,
    'delete-old-idempotent-answers',
    `DELETE FROM idempotent_requests WHERE created_at < now() - $1::int * interval '1 hour' RETURNING 1`,
    [hours],
  );
  return rows.length;
}
