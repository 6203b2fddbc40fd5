import { randomUUID } from 'node:crypto';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { startTestService, type TestService } from './helpers.js';
import { allCommands, type Real } from './model/commands.js';
import { createModel, type ModelConfig } from './model/pool.js';

// Model-based property tests: random sequences of activate, release, renew, validate, clear,
// sweep, release jobs and clock advances, for a few users on a small pool, run against the real
// service over PostgreSQL and against the model in test/model/pool.ts; every answer and the
// whole state must agree after every step. A failure shrinks to a short script of commands.
//
// PROPERTY_RUNS=1000 runs more sequences per property; PROPERTY_SEED (and PROPERTY_PATH, both
// printed on a failure) replays one.

const runs = Number(process.env.PROPERTY_RUNS ?? 60);
const seed = process.env.PROPERTY_SEED === undefined ? undefined : Number(process.env.PROPERTY_SEED);
const path = process.env.PROPERTY_PATH;
const TTL_MS = 60_000;
const TOKENS = 3;
const USERS = 5;
// Generous: a run of commands takes tens of milliseconds, and shrinking a failure replays many.
const timeoutMs = 120_000 + runs * 2_000;

/**
 * `named`: model a pool made through the admin API with these settings of its own (the service's
 * in `env` then differ), instead of the pool default with the service's settings.
 */
function modelProperty(config: ModelConfig, env: Record<string, string>, named?: Record<string, unknown>) {
  let t: TestService;
  let tokenIds: string[];
  let poolId: number;
  const tokensPath = named === undefined ? '/api/tokens' : '/api/pools/modelled/tokens';
  const users = Array.from({ length: config.users }, () => randomUUID());

  beforeAll(async () => {
    // The model advances the clock by moving stored times back, by hand as far as the service can
    // tell, so GET /api/tokens must not be answered from its cache (whose bound covers exactly that).
    t = await startTestService({
      POOL_SIZE: String(config.tokens),
      LEASE_TTL_MS: String(config.ttlMs),
      LIST_CACHE_MAX_AGE_MS: '0',
      ...env,
    });
    if (named !== undefined) {
      const made = await t.http.post('/api/admin/pools').send({ name: 'modelled', size: config.tokens, ...named });
      if (made.status !== 201) throw new Error(`the modelled pool was not made: ${made.text}`);
    }
    const { rows } = await t.db.pool.query<{ id: number }>('SELECT id FROM pools WHERE name = $1', [
      named === undefined ? 'default' : 'modelled',
    ]);
    poolId = rows[0]?.id ?? NaN;
    const listed = (await (await fetch(`${t.url}${tokensPath}`)).json()) as { data: Array<{ id: string }> };
    tokenIds = [...listed.data.map((token) => token.id), randomUUID()];
  });
  afterAll(async () => {
    await t.close();
  });

  /** Every run starts from an idle pool whose fences start again at 1. */
  async function setup() {
    await t.db.pool.query(`
      UPDATE tokens SET lease_id = NULL, user_id = NULL, started_at = NULL, expires_at = NULL, last_fence = 0;
      DELETE FROM leases;
      DELETE FROM usages;
      DELETE FROM waiters;`);
    const real: Real = { t, users, tokenIds, startedAt: Date.now(), poolId, tokensPath };
    return { model: createModel(config), real };
  }

  return async () => {
    await fc.assert(
      fc.asyncProperty(fc.commands(allCommands(config.tokens, config.users), { size: 'medium', maxCommands: 40 }), (commands) =>
        fc.asyncModelRun(setup, commands),
      ),
      { numRuns: runs, ...(seed === undefined ? {} : { seed }), ...(path === undefined ? {} : { path }) },
    );
  };
}

describe('the service answers as the model of the pool does', () => {
  describe('with POOL_FULL_POLICY=reject and MAX_LEASE_MS', () => {
    const maxLeaseMs = 70_000;
    it(
      'for any sequence of commands',
      modelProperty(
        { tokens: TOKENS, users: USERS, ttlMs: TTL_MS, maxLeaseMs, evictOldest: false },
        { POOL_FULL_POLICY: 'reject', MAX_LEASE_MS: String(maxLeaseMs) },
      ),
      timeoutMs,
    );
  });

  describe('in a named pool whose own settings differ from the service\'s', () => {
    const maxLeaseMs = 70_000;
    it(
      'for any sequence of commands',
      modelProperty(
        { tokens: TOKENS, users: USERS, ttlMs: TTL_MS, maxLeaseMs, evictOldest: true },
        // The default pool (unused) would give 1 s leases, no cap and refusals.
        { POOL_FULL_POLICY: 'reject', LEASE_TTL_MS: '1000' },
        { lease_ttl_ms: TTL_MS, max_lease_ms: maxLeaseMs, full_policy: 'evict_oldest' },
      ),
      timeoutMs,
    );
  });

  describe('with POOL_FULL_POLICY=evict_oldest', () => {
    it(
      'for any sequence of commands',
      modelProperty(
        { tokens: TOKENS, users: USERS, ttlMs: TTL_MS, maxLeaseMs: null, evictOldest: true },
        { POOL_FULL_POLICY: 'evict_oldest' },
      ),
      timeoutMs,
    );
  });
});
