// Adding tokens that carry values to a pool: generated ones, and imported ones (from a provider,
// say, through scripts/import-from-provider.sh). Both grow the pool's size by the tokens added,
// so a pool's size stays the number of its tokens. The values are sealed here
// (src/domain/values.ts) and never logged.

import * as sql from '../db/tokenValues.js';
import type { LeasesDeps } from './lease.js';
import { once, requestHash } from './idempotency.js';
import { CLEAR_VALUES, newValue, valueDigest, valueProblem } from './values.js';

/** The most tokens one generate or import adds. */
export const MAX_VALUES_PER_CALL = 10_000;

/** Generates `count` tokens with random values in the pool, in one transaction; their ids. */
export async function generateTokens(
  deps: LeasesDeps,
  args: { count: number; idempotencyKey?: string | undefined },
): Promise<{ tokenIds: string[] }> {
  const sealer = deps.values ?? CLEAR_VALUES;
  return once(
    deps.pool,
    { operation: `generate:${deps.poolId}`, key: args.idempotencyKey, hash: requestHash({ count: args.count }) },
    async () => {
      const values = Array.from({ length: args.count }, newValue);
      const tokenIds = await sql.insertTokensWithValues(deps.pool, {
        poolId: deps.poolId,
        digests: values.map(valueDigest),
        sealed: values.map((value) => sealer.seal(value)),
      });
      deps.log.info({ pool: deps.poolName, count: tokenIds.length }, 'tokens generated');
      return { tokenIds };
    },
    { stored: (answer) => answer, restored: (stored) => stored },
  );
}

/** One value to import: where it was in the input (its line, or place in the list), and what it was. */
export interface ImportInput {
  readonly line: number;
  /** The value as sent; anything but a string is invalid. */
  readonly value: unknown;
}

export type ImportOutcome = 'stored' | 'duplicate' | 'invalid';

export interface ImportItem {
  readonly line: number;
  readonly value: string;
  readonly outcome: ImportOutcome;
  /** Why the value is invalid; null otherwise. */
  readonly reason: string | null;
  /** The token made for a stored value; null otherwise. */
  readonly tokenId: string | null;
}

export interface ImportResult {
  readonly items: readonly ImportItem[];
  readonly totals: Readonly<Record<ImportOutcome, number>>;
}

/** What is kept of an import's answer for a retry: everything but the values, read from the retry. */
type StoredImport = Array<[outcome: ImportOutcome, reason: string | null, tokenId: string | null]>;

/**
 * Imports values into the pool, each in a transaction of its own, in input order: a value is
 * `stored` (a new token), a `duplicate` of a token's value (in any pool, or earlier in the
 * input), or `invalid` with the reason. One bad value never stops the others.
 */
export async function importValues(
  deps: LeasesDeps,
  args: { inputs: readonly ImportInput[]; idempotencyKey?: string | undefined },
): Promise<ImportResult> {
  const sealer = deps.values ?? CLEAR_VALUES;
  const { inputs } = args;
  const shown = (value: unknown) => (typeof value === 'string' ? value : JSON.stringify(value));
  const result = (outcomes: StoredImport): ImportResult => {
    const notImported: StoredImport[number] = ['invalid', 'not imported', null];
    const items = inputs.map((input, i): ImportItem => {
      const [outcome, reason, tokenId] = outcomes[i] ?? notImported;
      return { line: input.line, value: shown(input.value), outcome, reason, tokenId };
    });
    const totals = { stored: 0, duplicate: 0, invalid: 0 };
    for (const item of items) totals[item.outcome] += 1;
    return { items, totals };
  };
  return once(
    deps.pool,
    { operation: `import:${deps.poolId}`, key: args.idempotencyKey, hash: requestHash(inputs) },
    async () => {
      const outcomes: StoredImport = [];
      for (const { value } of inputs) {
        const problem = typeof value === 'string' ? valueProblem(value) : 'not a string';
        if (problem !== null || typeof value !== 'string') {
          outcomes.push(['invalid', problem, null]);
          continue;
        }
        const tokenId = await sql.insertTokenWithValue(deps.pool, {
          poolId: deps.poolId,
          digest: valueDigest(value),
          sealed: sealer.seal(value),
        });
        outcomes.push(tokenId === null ? ['duplicate', null, null] : ['stored', null, tokenId]);
      }
      const imported = result(outcomes);
      deps.log.info({ pool: deps.poolName, ...imported.totals }, 'values imported');
      return imported;
    },
    {
      stored: (answer) => answer.items.map((item): StoredImport[number] => [item.outcome, item.reason, item.tokenId]),
      restored: result,
    },
  );
}
