// Requests made safe to retry by an Idempotency-Key (the admin routes that add tokens): the first
// request with a key claims it and keeps its answer; a retry with the same key and the same
// request answers that, without doing the work again. The same key with another request is
// refused. A claim whose request never answered (its process died) lapses after CLAIM_LAPSE_MS,
// and a retry then runs the request again.

import { createHash } from 'node:crypto';
import type { Pool } from '../db/pool.js';
import * as sql from '../db/tokenValues.js';
import { AppError, ERRORS } from '../errors.js';

/** How long a claim whose request has not answered holds the key. */
export const CLAIM_LAPSE_MS = 5 * 60_000;
/** How long answers are kept (the upkeep deletes older ones). */
export const ANSWER_RETENTION_HOURS = 24;

export const IDEMPOTENCY_KEY_FORMAT = /^[\x21-\x7e]{1,255}$/;

/** A digest of what a request asks for, to tell a retry from another request under the same key. */
export function requestHash(request: unknown): Buffer {
  return createHash('sha256').update(JSON.stringify(request)).digest();
}

/**
 * Runs `work` once per (operation, key): without a key, every time. `stored` is what is kept of
 * the answer (it must not hold secrets), `restored` makes the answer from it again.
 */
export async function once<T, Stored>(
  pool: Pool,
  request: { operation: string; key: string | undefined; hash: Buffer },
  work: () => Promise<T>,
  keep: { stored: (answer: T) => Stored; restored: (stored: Stored) => T },
): Promise<T> {
  const { operation, key, hash } = request;
  if (key === undefined) return work();
  const claim = { operation, key };
  if (!(await sql.claimKey(pool, { ...claim, requestHash: hash }))) {
    const found = await sql.findClaim(pool, { ...claim, lapseMs: CLAIM_LAPSE_MS });
    if (found !== null) {
      if (!found.request_hash.equals(hash)) throw new AppError(ERRORS.idempotency_key_reused);
      if (found.answer !== null) return keep.restored(found.answer as Stored);
      if (!(found.lapsed && (await sql.retakeLapsedClaim(pool, { ...claim, lapseMs: CLAIM_LAPSE_MS })))) {
        throw new AppError(ERRORS.conflict, { reason: 'in_progress' });
      }
    } else if (!(await sql.claimKey(pool, { ...claim, requestHash: hash }))) {
      // Dropped and claimed again meanwhile by a concurrent request.
      throw new AppError(ERRORS.conflict, { reason: 'in_progress' });
    }
  }
  let answer: T;
  try {
    answer = await work();
  } catch (error) {
    await sql.dropClaim(pool, claim).catch(() => undefined);
    throw error;
  }
  await sql.storeAnswer(pool, { ...claim, answer: keep.stored(answer) });
  return answer;
}
