import { randomUUID } from 'node:crypto';
import { Writable } from 'node:stream';
import { SignJWT } from 'jose';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createApp } from '../src/http/app.js';
import { createMetrics } from '../src/metrics.js';
import { createTestDatabase, spawnService, startTestService, type TestDatabase, type TestService } from './helpers.js';
import type { ServiceProcess } from './harness/processes.js';
import { waitFor } from './harness/waitFor.js';
import { testRedisPrefix } from './redis.js';
import { startRedisServer, type RedisServer } from './redisServer.js';

// RATE_LIMIT_PER_MINUTE and ADMIN_RATE_LIMIT_PER_MINUTE against the real service: one budget per
// caller shared by every API process, 429 with its headers, other callers untouched, and the
// limiter failing open while Redis is down.

const ADMIN_KEY = 'rate-limit-admin-key-0123456789';
const PER_MINUTE = 5;

/** A validation: a lease route that changes nothing, answered 200 for any well-formed body. */
function validate(base: string, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(`${base}/api/tokens/${randomUUID()}/validate`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ user_id: randomUUID(), fence: 1 }),
  });
}

/** The caller's address, as a proxy in front of the service (TRUST_PROXY=1) reports it. */
const from = (address: string) => ({ 'x-forwarded-for': address });

/**
 * Until the limiter's Redis connection is up, requests pass uncounted (as while Redis is down):
 * waits for a counted answer, spending the budget of `headers`, a caller of its own.
 */
async function limiterCounts(base: string, headers: Record<string, string>): Promise<void> {
  await waitFor(async () => (await validate(base, headers)).headers.get('ratelimit') !== null, {
    timeoutMs: 10_000,
    what: `the limiter of ${base} to reach Redis`,
  });
}

describe('rate limits across two API processes', () => {
  let db: TestDatabase;
  const processes: ServiceProcess[] = [];
  let a: string;
  let b: string;

  beforeAll(async () => {
    db = await createTestDatabase();
    const env = {
      DATABASE_URL: db.url,
      REDIS_PREFIX: testRedisPrefix(inject('runId')),
      ROLE: 'api',
      POOL_SIZE: '3',
      TRUST_PROXY: '1',
      ADMIN_API_KEY: ADMIN_KEY,
      RATE_LIMIT_PER_MINUTE: String(PER_MINUTE),
      ADMIN_RATE_LIMIT_PER_MINUTE: '2',
    };
    processes.push(spawnService(env), spawnService(env));
    [a, b] = (await Promise.all(processes.map((p) => p.ready()))) as [string, string];
    await limiterCounts(a, from('198.51.100.1'));
    await limiterCounts(b, from('198.51.100.2'));
  });
  afterAll(async () => {
    await Promise.all(processes.map((p) => p.stop()));
    await db.drop();
  });

  it('counts one budget per caller across both processes, then answers 429 rate_limited with its headers', async () => {
    const caller = from('203.0.113.10');
    for (let i = 0; i < PER_MINUTE; i += 1) {
      const res = await validate(i % 2 === 0 ? a : b, caller);
      expect(res.status, `request ${i + 1}`).toBe(200);
      expect(res.headers.get('ratelimit')).toMatch(new RegExp(`^"lease"; r=${PER_MINUTE - 1 - i}; t=\\d+$`));
      expect(res.headers.get('ratelimit-policy')).toMatch(new RegExp(`^"lease"; q=${PER_MINUTE}; w=60; pk=:[\\w+/=]+:$`));
    }
    for (const base of [a, b]) {
      const res = await validate(base, caller);
      expect(res.status).toBe(429);
      expect(await res.json()).toEqual({
        error: {
          code: 'rate_limited',
          message: 'this caller has used its requests for this minute; retry after Retry-After seconds',
          details: { budget: 'lease', limit_per_minute: PER_MINUTE },
        },
      });
      const retryAfter = Number(res.headers.get('retry-after'));
      expect(retryAfter).toBeGreaterThanOrEqual(1);
      expect(retryAfter).toBeLessThanOrEqual(60);
      expect(res.headers.get('ratelimit')).toMatch(/^"lease"; r=0; t=\d+$/);
      expect(res.headers.get('ratelimit-policy')).toMatch(/^"lease"; q=5; w=60; /);
    }
  });

  it('leaves other callers their whole budget while one runs far over its own', async () => {
    const flooder = from('203.0.113.20');
    const flood = Promise.all(Array.from({ length: 60 }, (_, i) => validate(i % 2 === 0 ? a : b, flooder)));
    const others = await Promise.all(
      ['203.0.113.21', '2001:db8:1::1'].flatMap((address) =>
        Array.from({ length: PER_MINUTE }, (_, i) => validate(i % 2 === 0 ? a : b, from(address))),
      ),
    );
    const flooded = await flood;

    expect(others.map((res) => res.status)).toEqual(others.map(() => 200));
    expect(flooded.filter((res) => res.status === 200)).toHaveLength(PER_MINUTE);
    expect(flooded.filter((res) => res.status === 429)).toHaveLength(60 - PER_MINUTE);
  });

  it('gives admin routes a budget of their own, which guesses at the admin key spend too', async () => {
    const caller = from('203.0.113.30');
    const clear = (base: string, key: string) =>
      fetch(`${base}/api/tokens/clear`, { method: 'POST', headers: { authorization: `Bearer ${key}`, ...caller } });

    // Guesses count against the address they come from.
    expect((await clear(a, 'a-wrong-guess-at-the-key-0001')).status).toBe(401);
    expect((await clear(b, 'a-wrong-guess-at-the-key-0002')).status).toBe(401);
    const guess = await clear(a, 'a-wrong-guess-at-the-key-0003');
    expect(guess.status).toBe(429);
    expect(((await guess.json()) as { error: { details: object } }).error.details).toEqual({ budget: 'admin', limit_per_minute: 2 });
    expect(guess.headers.get('ratelimit-policy')).toMatch(/^"admin"; q=2; w=60; /);
    // The admin key is a caller of its own, wherever it calls from.
    expect((await clear(b, ADMIN_KEY)).status).toBe(200);
    expect((await clear(a, ADMIN_KEY)).status).toBe(200);
    expect((await clear(b, ADMIN_KEY)).status).toBe(429);
    // The lease budget of the same address is untouched.
    expect((await validate(b, caller)).status).toBe(200);
  });
});

describe('rate limits per caller', () => {
  const SECRET = 'the-shared-secret-of-the-rate-limit-test';
  let t: TestService;

  beforeAll(async () => {
    t = await startTestService({ AUTH_MODE: 'jwt', JWT_SECRET: SECRET, RATE_LIMIT_PER_MINUTE: '3' });
    await limiterCounts(t.url, await bearer(randomUUID()));
  });
  afterAll(async () => {
    await t.close();
  });

  const bearer = async (sub: string) => ({
    authorization: `Bearer ${await new SignJWT({ sub })
      .setProtectedHeader({ alg: 'HS256' })
      .setExpirationTime('5m')
      .sign(new TextEncoder().encode(SECRET))}`,
  });

  it("counts a JWT's sub, not the address it calls from", async () => {
    const alice = await bearer(randomUUID());
    const bob = await bearer(randomUUID());
    const statuses = async (headers: Record<string, string>, n: number) => {
      const answers: number[] = [];
      for (let i = 0; i < n; i += 1) answers.push((await validate(t.url, headers)).status);
      return answers;
    };

    expect(await statuses(alice, 4)).toEqual([200, 200, 200, 429]);
    expect(await statuses(bob, 3)).toEqual([200, 200, 200]);
  });

  it('does not limit reads, health or metrics', async () => {
    const carol = await bearer(randomUUID());
    for (let i = 0; i < 5; i += 1) {
      const res = await fetch(`${t.url}/api/tokens`, { headers: carol });
      expect(res.status).toBe(200);
      expect(res.headers.get('ratelimit')).toBeNull();
    }
  });
});

describe('rate limits off', () => {
  it('put no middleware at all on the routes', () => {
    const metrics = createMetrics();
    const log = pino({ level: 'silent' });
    const routeStack = (perMinute: number | undefined): Record<string, number> => {
      const app = createApp({
        leases: {} as never,
        log,
        metrics,
        adminApiKey: undefined,
        rateLimits:
          perMinute === undefined
            ? undefined
            : { leasePerMinute: perMinute, adminPerMinute: perMinute, sendCommand: () => Promise.reject(new Error('unused')), redisPrefix: 'x' },
      });
      type Layer = { route?: { path: string; stack: unknown[] } };
      const layers = (app as unknown as { router: { stack: Layer[] } }).router.stack;
      return Object.fromEntries(layers.flatMap((l) => (l.route === undefined ? [] : [[l.route.path, l.route.stack.length]])));
    };

    const without = routeStack(undefined);
    expect(routeStack(0)).toEqual(without);
    const on = routeStack(10);
    for (const path of ['/api/tokens/activate', '/api/tokens/:id/release', '/api/tokens/:id/renew', '/api/tokens/:id/validate', '/api/tokens/clear']) {
      expect(on[path], path).toBe((without[path] ?? 0) + 1);
    }
    expect(on['/api/tokens']).toBe(without['/api/tokens']);
  });
});

describe('the limiter with Redis down', () => {
  let redis: RedisServer;
  let t: TestService;
  const lines: Array<{ msg?: string; budget?: string }> = [];

  beforeAll(async () => {
    redis = await startRedisServer();
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        for (const line of chunk.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(line) as { msg?: string });
        done();
      },
    });
    t = await startTestService(
      { REDIS_URL: redis.url, RATE_LIMIT_PER_MINUTE: '2' },
      { log: pino({ level: 'info' }, sink) },
    );
  });
  afterAll(async () => {
    await t.close();
    await redis.stop();
  });

  const failures = async () => {
    const text = await t.service.metrics.registry.getSingleMetricAsString('token_lease_rate_limit_store_failures_total');
    return Number(/budget="lease"\} (\d+)/.exec(text)?.[1] ?? 0);
  };
  const logged = (msg: string) => lines.filter((line) => line.msg === msg);

  it('lets requests through uncounted, logs that once and counts each in a metric, and limits again once Redis is back', async () => {
    await limiterCounts(t.url, {});
    expect((await validate(t.url)).status).toBe(200);
    expect((await validate(t.url)).status).toBe(429);

    await redis.stop();
    const before = await failures();
    lines.length = 0;
    for (let i = 0; i < 6; i += 1) {
      const res = await validate(t.url);
      expect(res.status).toBe(200);
      expect(res.headers.get('ratelimit')).toBeNull();
    }
    expect((await failures()) - before).toBe(6);
    expect(logged('rate limiter cannot reach Redis: requests pass uncounted')).toHaveLength(1);

    // Back, and empty: the budget starts again, and the scripts are loaded again.
    await redis.start();
    await limiterCounts(t.url, {});
    expect((await validate(t.url)).status).toBe(200);
    expect((await validate(t.url)).status).toBe(429);
    expect(logged('rate limiter reaches Redis again')).toHaveLength(1);
  });
});
