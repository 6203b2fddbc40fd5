import { randomUUID } from 'node:crypto';
import fc from 'fast-check';
import { expect } from 'vitest';
import { backdate, type TestService } from '../helpers.js';
import * as model from './pool.js';
import type { ModelUsage, PoolModel } from './pool.js';

// The commands of the model-based property tests: each runs one operation against the real
// service (over HTTP, or the domain call a job or the sweep makes) and against the model, then
// compares the answers and the whole state. Their toString is what a shrunk counterexample
// prints, so it reads as a script: activate(u1), advance(60 s), release(u1, t0), ...

export interface Real {
  readonly t: TestService;
  /** User ids by model index. */
  readonly users: readonly string[];
  /** Token ids in pool order by model index, then one id no token has. */
  readonly tokenIds: readonly string[];
  /** Wall time when the run began: the service has seen at most this much real time pass. */
  readonly startedAt: number;
  /** The modelled pool: its id, and its routes (/api/tokens, or /api/pools/<name>/tokens). */
  readonly poolId: number;
  readonly tokensPath: string;
}

/**
 * The model moves its clock in steps of 15 s and leases last 60 s, or up to a cap of 15 s x n +
 * 10 s (70 s in the tests), so any two times it compares are equal or at least 5 s apart, and
 * where real time passing could tip a comparison (a lease with time left, a renewal under the
 * cap) at least 10 s apart. A run must take less real time than that for the model's answers
 * to be the service's.
 */
export const ADVANCE_STEP_MS = 15_000;
const MAX_RUN_WALL_MS = 10_000;

type Command = fc.AsyncCommand<PoolModel, Real>;

interface Answer {
  status: number;
  body: any;
  headers: Headers;
}

async function post(real: Real, path: string, body?: unknown): Promise<Answer> {
  const res = await fetch(`${real.t.url}${path}`, {
    method: 'POST',
    ...(body === undefined ? {} : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }),
  });
  return { status: res.status, body: await res.json(), headers: res.headers };
}

const wallElapsed = (real: Real) => Date.now() - real.startedAt;

/** A token reference: an index into the pool, or the token of the user's latest lease. */
type TokenRef = number | 'own';

function resolveToken(m: PoolModel, user: number, ref: TokenRef): number {
  if (ref !== 'own') return ref;
  return model.latestUsageOf(m, user)?.token ?? 0;
}

const tokenName = (m: PoolModel, token: number) => (token === model.unknownToken(m) ? 'unknown token' : `t${token}`);
const refName = (ref: TokenRef, tokens: number) => (ref === 'own' ? 'own' : ref === tokens ? 'unknown token' : `t${ref}`);

/** What a lease answer should carry; a lease granted now has an id the model learns from it. */
function expectLease(real: Real, answer: Answer, expected: { status: number; usage: ModelUsage }, what: string): void {
  const { usage } = expected;
  const data = answer.body.data ?? answer.body.error;
  expect(
    {
      status: answer.status,
      token: real.tokenIds.indexOf(data.token_id),
      user: real.users.indexOf(data.user_id),
      fence: data.fence,
      leaseId: data.lease_id,
    },
    what,
  ).toEqual({
    status: expected.status,
    token: usage.token,
    user: usage.user,
    fence: usage.fence,
    leaseId: usage.leaseId === '' ? expect.any(String) : usage.leaseId,
  });
  if (usage.leaseId === '') usage.leaseId = data.lease_id;
  // The lease's length: the model's, plus at most the real time that passed between the writes.
  const startedAt = Date.parse(data.activated_at ?? data.started_at);
  const length = Date.parse(data.expires_at) - startedAt;
  const modelLength = usage.expiresAt - usage.startedAt;
  expect(length, `${what}: lease length`).toBeGreaterThanOrEqual(modelLength - 2);
  expect(length, `${what}: lease length`).toBeLessThanOrEqual(modelLength + wallElapsed(real) + 2);
}

function expectRefusal(answer: Answer, expected: model.Refusal, what: string): void {
  expect(
    { status: answer.status, code: answer.body.error?.code, reason: answer.body.error?.details?.reason },
    what,
  ).toEqual({ status: expected.status, code: expected.code, reason: expected.reason });
}

function expectExhausted(real: Real, answer: Answer, expected: model.Exhausted, what: string): void {
  expect({ status: answer.status, code: answer.body.error?.code }, what).toEqual({ status: 409, code: 'pool_exhausted' });
  // Retry-After: whole seconds until the earliest expiry, of which some real time has passed.
  const seconds = (ms: number) => Math.max(1, Math.ceil(ms / 1000));
  const retryAfter = Number(answer.headers.get('retry-after'));
  expect(retryAfter, `${what}: Retry-After`).toBeGreaterThanOrEqual(seconds(expected.untilExpiryMs - wallElapsed(real)));
  expect(retryAfter, `${what}: Retry-After`).toBeLessThanOrEqual(seconds(expected.untilExpiryMs));
  expect(answer.body.error.details.retry_after_seconds, what).toBe(retryAfter);
}

interface UsageState {
  id: string;
  token_id: string;
  user_id: string;
  fence: string;
  end_reason: string | null;
  started_ago_ms: number;
  expires_in_ms: number;
  ended_ago_ms: number | null;
}

/** The database and GET /api/tokens against the model, after every command. */
export async function expectSameState(m: PoolModel, real: Real, after: string): Promise<void> {
  const db = real.t.db.pool;
  const { rows: usages } = await db.query<UsageState>(
    `SELECT id, token_id, user_id, fence, end_reason,
            (extract(epoch FROM now() - started_at) * 1000)::float8 AS started_ago_ms,
            (extract(epoch FROM expires_at - now()) * 1000)::float8 AS expires_in_ms,
            (extract(epoch FROM now() - ended_at) * 1000)::float8 AS ended_ago_ms
     FROM all_usages WHERE pool_id = $1`,
    [real.poolId],
  );
  const { rows: tokens } = await db.query<{ id: string; last_fence: string; lease_id: string | null }>(
    'SELECT id, last_fence, lease_id FROM tokens WHERE pool_id = $1 ORDER BY position',
    [real.poolId],
  );
  const byId = new Map(usages.map((u) => [u.id, u]));
  // Read after the rows: the real time that had passed when they were read is at most this.
  const elapsed = wallElapsed(real);
  if (elapsed > MAX_RUN_WALL_MS) {
    throw new Error(`this run took ${elapsed} ms of real time, too long for the model's clock steps; the machine is too slow`);
  }

  expect(usages.length, `after ${after}: usages`).toBe(m.usages.length);
  for (const [i, usage] of m.usages.entries()) {
    const row = byId.get(usage.leaseId);
    const what = `after ${after}: usage ${i} (u${usage.user} on t${usage.token}, fence ${usage.fence})`;
    expect(
      row && {
        token: real.tokenIds.indexOf(row.token_id),
        user: real.users.indexOf(row.user_id),
        fence: Number(row.fence),
        endReason: row.end_reason,
      },
      what,
    ).toEqual({ token: usage.token, user: usage.user, fence: usage.fence, endReason: usage.endReason });
    if (row === undefined) continue;
    // Stored times, seen from now: the model's, moved by at most the real time that passed.
    expectWithin(row.started_ago_ms, m.now - usage.startedAt, 0, elapsed, `${what}: started`);
    expectWithin(row.expires_in_ms, usage.expiresAt - m.now, -elapsed, 0, `${what}: expires`);
    if (usage.endedAt !== null) expectWithin(row.ended_ago_ms ?? NaN, m.now - usage.endedAt, 0, elapsed, `${what}: ended`);
  }
  expect(
    tokens.map((t) => ({ lastFence: Number(t.last_fence), lease: t.lease_id })),
    `after ${after}: tokens`,
  ).toEqual(m.tokens.map((t) => ({ lastFence: t.lastFence, lease: t.lease?.leaseId ?? null })));

  const listed = await fetch(`${real.t.url}${real.tokensPath}`).then(async (res) => (await res.json()) as { data: any[] });
  expect(
    listed.data.map((t) => ({ status: t.status, holder: t.current_user_id === null ? null : real.users.indexOf(t.current_user_id) })),
    `after ${after}: GET ${real.tokensPath}`,
  ).toEqual(model.tokenHolders(m).map((u) => ({ status: u === null ? 'available' : 'active', holder: u?.user ?? null })));
}

function expectWithin(actual: number, modelMs: number, below: number, above: number, what: string): void {
  const slackMs = 5; // timestamps have microseconds; the HTTP answers milliseconds
  expect(actual, what).toBeGreaterThanOrEqual(modelMs + below - slackMs);
  expect(actual, what).toBeLessThanOrEqual(modelMs + above + slackMs);
}

function command(
  name: string,
  run: (m: PoolModel, real: Real) => Promise<void>,
  check: (m: Readonly<PoolModel>) => boolean = () => true,
): Command {
  return {
    check,
    async run(m, real) {
      await run(m, real);
      await expectSameState(m, real, name);
    },
    toString: () => name,
  };
}

export function activate(user: number): Command {
  const name = `activate(u${user})`;
  return command(name, async (m, real) => {
    const answer = await post(real, `${real.tokensPath}/activate`, { user_id: real.users[user] });
    const expected = model.activate(m, user);
    if (expected.status === 409) expectExhausted(real, answer, expected, name);
    else expectLease(real, answer, expected, name);
  });
}

export function release(user: number, ref: TokenRef, tokens: number): Command {
  const name = `release(u${user}, ${refName(ref, tokens)})`;
  return command(name, async (m, real) => {
    const token = resolveToken(m, user, ref);
    const lease = model.namedLease(m, user, token);
    const answer = await post(real, `/api/tokens/${real.tokenIds[token]}/release`, {
      user_id: real.users[user],
      lease_id: lease?.leaseId ?? randomUUID(),
    });
    const expected = model.release(m, token, lease);
    if (expected.status === 200) {
      expectLease(real, answer, expected, `${name} on ${tokenName(m, token)}`);
      expect(answer.body.data.end_reason, name).toBe('released');
    } else {
      expectRefusal(answer, expected, `${name} on ${tokenName(m, token)}`);
    }
  });
}

export function renew(user: number, ref: TokenRef, tokens: number): Command {
  const name = `renew(u${user}, ${refName(ref, tokens)})`;
  return command(name, async (m, real) => {
    const token = resolveToken(m, user, ref);
    const lease = model.namedLease(m, user, token);
    const answer = await post(real, `/api/tokens/${real.tokenIds[token]}/renew`, {
      user_id: real.users[user],
      lease_id: lease?.leaseId ?? randomUUID(),
    });
    const expected = model.renew(m, token, lease);
    if (expected.status === 200) expectLease(real, answer, expected, `${name} on ${tokenName(m, token)}`);
    else expectRefusal(answer, expected, `${name} on ${tokenName(m, token)}`);
  });
}

/** Validates the user's latest lease ('own'), or any token and fence. */
export function validate(user: number, target: 'own' | { token: number; fence: number }, tokens: number): Command {
  const name =
    target === 'own' ? `validate(u${user}, own lease)` : `validate(u${user}, ${refName(target.token, tokens)} fence ${target.fence})`;
  return command(name, async (m, real) => {
    const latest = model.latestUsageOf(m, user);
    const { token, fence } = target === 'own' ? { token: latest?.token ?? 0, fence: latest?.fence ?? 1 } : target;
    const answer = await post(real, `/api/tokens/${real.tokenIds[token]}/validate`, { user_id: real.users[user], fence });
    const expected = model.validate(m, user, token, fence);
    const what = `${name} on ${tokenName(m, token)} fence ${fence}`;
    expect(answer.status, what).toBe(200);
    expect(answer.body.data, what).toEqual(
      expected.valid
        ? { valid: true, lease_id: expected.usage.leaseId, expires_at: expect.any(String) }
        : { valid: false, reason: expected.reason },
    );
  });
}

export function clear(): Command {
  return command('clear()', async (m, real) => {
    const answer = await post(real, `${real.tokensPath}/clear`);
    expect({ status: answer.status, data: answer.body.data }, 'clear()').toEqual({
      status: 200,
      data: { cleared_tokens: model.clear(m) },
    });
  });
}

/**
 * Moves the clock on by `ms`: every stored time moves back instead, which is the same to the
 * service, whose every comparison is between now() and stored times.
 */
export function advance(ms: number): Command {
  return command(`advance(${ms / 1000} s)`, async (m, real) => {
    await backdate(real.t.db, ms);
    await real.t.db.pool.query(
      `UPDATE waiters SET created_at = created_at - $1 * interval '1 millisecond',
                          deadline = deadline - $1 * interval '1 millisecond',
                          heartbeat_at = heartbeat_at - $1 * interval '1 millisecond'`,
      [ms],
    );
    model.advance(m, ms);
  });
}

/** The sweep, as a worker's timer runs it. */
export function sweep(): Command {
  return command('sweep()', async (m, real) => {
    const ended = await real.t.service.leases.sweep();
    expect(ended, 'sweep()').toBe(model.sweep(m));
  });
}

/** The release job of the user's latest lease, as a worker runs it (late, early or twice). */
export function releaseJob(user: number): Command {
  const name = `releaseJob(latest lease of u${user})`;
  return command(
    name,
    async (m, real) => {
      const usage = model.latestUsageOf(m, user);
      if (usage === undefined) throw new Error('checked: the user has a lease');
      const outcome = await real.t.service.leases.expireLease(usage.leaseId);
      expect(outcome.outcome, name).toBe(model.runReleaseJob(m, usage));
    },
    (m) => model.latestUsageOf(m, user) !== undefined,
  );
}

/** Every command, with weights, for a pool of `tokens` tokens and `users` users. */
export function allCommands(tokens: number, users: number) {
  const user = fc.nat({ max: users - 1 });
  // An index of `tokens` names a token that does not exist.
  const tokenRef = fc.oneof(
    { weight: 4, arbitrary: fc.constant('own' as const) },
    { weight: 1, arbitrary: fc.nat({ max: tokens }) },
  );
  const target = fc.oneof(
    { weight: 3, arbitrary: fc.constant('own' as const) },
    { weight: 1, arbitrary: fc.record({ token: fc.nat({ max: tokens }), fence: fc.integer({ min: 1, max: 4 }) }) },
  );
  const weighted = (weight: number, arbitrary: fc.Arbitrary<Command>) => ({ weight, arbitrary });
  // One weighted choice: fc.commands picks uniformly among the arbitraries it is given.
  return [
    fc.oneof(
      weighted(8, user.map(activate)),
      weighted(4, fc.tuple(user, tokenRef).map(([u, ref]) => release(u, ref, tokens))),
      weighted(3, fc.tuple(user, tokenRef).map(([u, ref]) => renew(u, ref, tokens))),
      weighted(3, fc.tuple(user, target).map(([u, t]) => validate(u, t, tokens))),
      weighted(1, fc.constant(null).map(() => clear())),
      weighted(4, fc.integer({ min: 1, max: 6 }).map((k) => advance(k * ADVANCE_STEP_MS))),
      weighted(1, fc.constant(null).map(() => sweep())),
      weighted(1, user.map(releaseJob)),
    ),
  ];
}
