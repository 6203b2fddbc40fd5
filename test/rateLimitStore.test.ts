import { Redis } from 'ioredis';
import type { Options } from 'express-rate-limit';
import { RedisStore } from 'rate-limit-redis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { BatchedRedisStore, type RedisReply, type SendCommandFn } from '../src/http/rateLimitStore.js';
import { waitFor } from './harness/waitFor.js';
import { testRedisPrefix, testRedisUrl } from './redis.js';
import { startRedisServer, type RedisServer } from './redisServer.js';

// The rate limiter's store on its own, against real Redis: the increments of one turn of the
// event loop go as one command, and each caller still gets the count it would have got alone,
// whatever the number of stores (API processes) counting the same key at once.

const options = (windowMs: number) => ({ windowMs }) as Options;

function connect(url: string) {
  const redis = new Redis(url, { maxRetriesPerRequest: 0 });
  redis.on('error', () => undefined); // the commands reject with it
  const commands: string[] = [];
  const send: SendCommandFn = (command, ...args) => {
    commands.push(command);
    return redis.call(command, ...args) as Promise<RedisReply>;
  };
  return { redis, send, commands };
}

describe('the batched rate limit store', () => {
  const { redis, send, commands } = connect(testRedisUrl);
  const prefix = `${testRedisPrefix(inject('runId'))}:rate-limit:`;
  let store: BatchedRedisStore;

  beforeAll(async () => {
    store = new BatchedRedisStore({ sendCommand: send, prefix });
    await store.init(options(60_000));
  });
  afterAll(() => redis.disconnect());

  it('sends the increments of one turn as one command, and gives each the count it would have had alone', async () => {
    commands.length = 0;
    const a = Array.from({ length: 30 }, () => store.increment('a'));
    const b = Array.from({ length: 10 }, () => store.increment('b'));
    const [countedA, countedB] = await Promise.all([Promise.all(a), Promise.all(b)]);
    expect(commands).toEqual(['EVALSHA']);
    expect(countedA.map((c) => c.totalHits)).toEqual(Array.from({ length: 30 }, (_, i) => i + 1));
    expect(countedB.map((c) => c.totalHits)).toEqual(Array.from({ length: 10 }, (_, i) => i + 1));
    expect(await redis.get(`${prefix}a`)).toBe('30');
    const ttl = await redis.pttl(`${prefix}a`);
    expect(ttl).toBeGreaterThan(50_000);
    expect(ttl).toBeLessThanOrEqual(60_000);
    for (const c of countedA) {
      expect(c.resetTime!.getTime() - Date.now()).toBeGreaterThan(50_000);
      expect(c.resetTime!.getTime() - Date.now()).toBeLessThanOrEqual(60_000);
    }

    // The next turn goes on from there.
    expect((await store.increment('a')).totalHits).toBe(31);
  });

  it('never gives two requests the same count, with four stores counting one key at once', async () => {
    const key = 'shared';
    const stores = await Promise.all(
      Array.from({ length: 4 }, async () => {
        const own = connect(testRedisUrl);
        const s = new BatchedRedisStore({ sendCommand: own.send, prefix });
        await s.init(options(60_000));
        return { s, own };
      }),
    );
    // Bursts in several turns, from every store.
    const counts: number[] = [];
    for (let turn = 0; turn < 10; turn += 1) {
      const burst = stores.flatMap(({ s }) => Array.from({ length: 1 + ((turn * 7) % 13) }, () => s.increment(key)));
      counts.push(...(await Promise.all(burst)).map((c) => c.totalHits));
    }
    for (const { own } of stores) own.redis.disconnect();
    expect([...counts].sort((x, y) => x - y)).toEqual(Array.from({ length: counts.length }, (_, i) => i + 1));
    expect(Number(await redis.get(`${prefix}${key}`))).toBe(counts.length);
  });

  it("goes on from rate-limit-redis's count on the same key, and starts again when the window is over", async () => {
    const key = 'window';
    const windowMs = 300;
    const earlier = new RedisStore({ sendCommand: (...args) => send(...args) as Promise<never>, prefix });
    await earlier.init(options(windowMs));
    await earlier.increment(key);
    await earlier.increment(key);
    const short = new BatchedRedisStore({ sendCommand: send, prefix });
    await short.init(options(windowMs));
    expect((await short.increment(key)).totalHits).toBe(3);
    await waitFor(async () => (await redis.exists(`${prefix}${key}`)) === 0, { timeoutMs: 5_000, what: 'the window to end' });
    const fresh = await short.increment(key);
    expect(fresh.totalHits).toBe(1);
    expect(fresh.resetTime!.getTime() - Date.now()).toBeLessThanOrEqual(windowMs);
    expect(await redis.pttl(`${prefix}${key}`)).toBeGreaterThan(0);
  });

  it('takes a request back (decrement) and forgets a caller (resetKey)', async () => {
    await Promise.all([store.increment('back'), store.increment('back')]);
    await store.decrement('back');
    expect(await redis.get(`${prefix}back`)).toBe('1');
    await store.resetKey('back');
    expect((await store.increment('back')).totalHits).toBe(1);
  });
});

describe('the batched store and a Redis that loses its scripts or goes away', () => {
  let server: RedisServer;
  let client: ReturnType<typeof connect>;

  beforeAll(async () => {
    server = await startRedisServer();
    client = connect(server.url);
  });
  afterAll(async () => {
    client.redis.disconnect();
    await server.stop();
  });

  it('loads its script again after SCRIPT FLUSH, and fails every waiter of a batch while Redis is down', async () => {
    const store = new BatchedRedisStore({ sendCommand: client.send, prefix: 'rl:' });
    await store.init(options(60_000));
    expect((await store.increment('k')).totalHits).toBe(1);

    await server.command('SCRIPT', 'FLUSH');
    client.commands.length = 0;
    const again = await Promise.all([store.increment('k'), store.increment('k')]);
    expect(again.map((c) => c.totalHits)).toEqual([2, 3]);
    expect(client.commands).toEqual(['EVALSHA', 'SCRIPT', 'EVALSHA']);

    await server.stop();
    const failed = await Promise.allSettled([store.increment('k'), store.increment('j')]);
    expect(failed.map((r) => r.status)).toEqual(['rejected', 'rejected']);

    // Back, and empty: counting starts again, the script loaded anew.
    await server.start();
    await waitFor(
      async () => {
        try {
          return (await store.increment('k')).totalHits === 1;
        } catch {
          return false;
        }
      },
      { timeoutMs: 10_000, what: 'counting again after the restart' },
    );
  });
});
