import { expect } from 'vitest';
import { type TestDatabase } from './helpers.js';
import { waitFor } from './harness/waitFor.js';
import { checkInvariants, describeViolations } from './invariants.js';
import { everyActivationAnswered, type Answer, type Load } from './harness/load.js';

// What the fault and crash tests check once a fault has passed: the answers the clients got,
// and, after the run has drained, the invariants and that nothing was left behind.

export const granted = (a: Answer) => (a.op === 'activate' || a.op === 'wait') && a.status >= 200 && a.status < 300;
export const unavailable = (a: Answer) => a.status === 503 && a.code === 'unavailable';

// The refusals the load clients' requests can meet (they send only valid requests).
const REFUSALS = new Set(['pool_exhausted', 'not_holder', 'lease_expired', 'lease_ended']);

/**
 * Answers other than success, a documented refusal, or (when `unavailableAllowed`) 503
 * unavailable, each with its JSON body. No answer at all (status 0) is undocumented too.
 */
export function undocumentedAnswers(answers: readonly Answer[], unavailableAllowed = true): Answer[] {
  return answers.filter(
    (a) =>
      !a.wellFormed ||
      !(
        (a.status >= 200 && a.status < 300) ||
        (a.status === 409 && REFUSALS.has(a.code ?? '')) ||
        (unavailableAllowed && unavailable(a))
      ),
  );
}

export const count = async (db: TestDatabase, sql: string, values: unknown[] = []) =>
  Number((await db.pool.query<{ n: string }>(sql, values)).rows[0]?.n);

/**
 * Stops the load, waits for the run to drain (every lease ended by its job or the sweep, every
 * waiter gone), then checks the invariants against what the clients saw. A lease still open
 * after its TTL, the sweep interval and a margin is reported by the checker as a leak.
 */
export async function drainAndCheck(
  db: TestDatabase,
  load: Load,
  timing: { leaseTtlMs: number; sweepIntervalMs: number },
): Promise<void> {
  await load.stop();
  const marginMs = 3_000;
  await waitFor(async () => (await count(db, 'SELECT count(*) AS n FROM all_usages WHERE ended_at IS NULL')) === 0, {
    timeoutMs: timing.leaseTtlMs + timing.sweepIntervalMs + marginMs,
    what: 'every lease to end',
  }).catch(() => undefined);
  const violations = await checkInvariants(db.url, {
    drained: { sweepIntervalMs: timing.sweepIntervalMs, marginMs },
    observations: load.observations,
    everyAnswerSeen: everyActivationAnswered(load.answers),
  });
  expect(violations, describeViolations(violations)).toEqual([]);
  expect(await count(db, 'SELECT count(*) AS n FROM all_usages WHERE ended_at IS NULL'), 'open leases after draining').toBe(0);
  await waitFor(async () => (await count(db, 'SELECT count(*) AS n FROM waiters')) === 0, {
    timeoutMs: 10_000,
    what: 'the waiting queue to empty',
  });
}

/** One line per run: answers by status and code, the waiters' apart, and the slowest request. */
export function report(name: string, answers: readonly Answer[]): void {
  const slowest = Math.max(0, ...answers.filter((a) => a.op !== 'wait').map((a) => a.receivedAt - a.sentAt));
  const waiters = answers.filter((a) => a.op === 'wait');
  console.log(
    `${name}: ${answers.length} answers ${JSON.stringify(tally(answers))}; ` +
      `waiters ${JSON.stringify(tally(waiters))}; slowest non-waiter ${slowest} ms`,
  );
}

/** Answers by status and error code, or by failure when none came. */
function tally(answers: readonly Answer[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const a of answers) {
    const key = a.status === 0 ? `no answer (${a.failure ?? '?'})` : `${a.status}${a.code === undefined ? '' : ` ${a.code}`}`;
    counts[key] = (counts[key] ?? 0) + 1;
  }
  return counts;
}
