import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createListCache, type Rendered } from '../src/http/listCache.js';
import { newUserId, openUsages, startTestService, type TestService } from './helpers.js';
import { waitFor } from './harness/waitFor.js';

// GET /api/tokens answers from a cache of its serialised body. The cache's rules on a fake clock
// first, then the guarantees end to end: never a stale holder after a change (in this process at
// once, in another within its notification), and lazy expiry with nothing ending the row.

function fakeChanges() {
  let version = 0;
  let heard = true;
  return {
    version: () => version,
    isHeard: () => heard,
    change: () => {
      version += 1;
    },
    setHeard: (value: boolean) => {
      heard = value;
    },
  };
}

function harness(options: { maxAgeMs?: number } = {}) {
  let clock = 1_000;
  let loads = 0;
  let answer: Rendered = { body: Buffer.from('0'), validForMs: null };
  let during: (() => void) | undefined;
  const changes = fakeChanges();
  const cache = createListCache({
    changes,
    maxAgeMs: options.maxAgeMs ?? 10_000,
    now: () => clock,
    load: async () => {
      loads += 1;
      during?.();
      await Promise.resolve();
      return answer;
    },
  });
  return {
    cache,
    changes,
    loads: () => loads,
    advance: (ms: number) => {
      clock += ms;
    },
    answer: (body: string, validForMs: number | null = null) => {
      answer = { body: Buffer.from(body), validForMs };
    },
    whileLoading: (fn: (() => void) | undefined) => {
      during = fn;
    },
  };
}

describe('the list cache', () => {
  it('answers from memory while nothing changes, and reads again after a change', async () => {
    const h = harness();
    h.answer('a');
    expect((await h.cache.get()).toString()).toBe('a');
    expect((await h.cache.get()).toString()).toBe('a');
    expect(h.loads()).toBe(1);

    h.answer('b');
    h.changes.change();
    expect((await h.cache.get()).toString()).toBe('b');
    expect(h.loads()).toBe(2);
  });

  it('drops an answer when its earliest lease runs out, counting from before the query', async () => {
    const h = harness();
    h.answer('active', 500);
    await h.cache.get();
    h.advance(499);
    await h.cache.get();
    expect(h.loads()).toBe(1);
    h.advance(1);
    h.answer('available');
    expect((await h.cache.get()).toString()).toBe('available');
    expect(h.loads()).toBe(2);
  });

  it('keeps no answer longer than its maximum age', async () => {
    const h = harness({ maxAgeMs: 250 });
    await h.cache.get();
    h.advance(250);
    await h.cache.get();
    expect(h.loads()).toBe(2);
  });

  it('keeps nothing while changes made by other processes are not heard', async () => {
    const h = harness();
    h.changes.setHeard(false);
    await h.cache.get();
    await h.cache.get();
    expect(h.loads()).toBe(2);
  });

  it('does not keep an answer whose query overlapped a change', async () => {
    const h = harness();
    h.answer('before');
    h.whileLoading(() => h.changes.change());
    expect((await h.cache.get()).toString()).toBe('before');
    h.whileLoading(undefined);
    h.answer('after');
    expect((await h.cache.get()).toString()).toBe('after');
  });

  it('shares one query between concurrent requests, but not one that began before a change', async () => {
    const h = harness();
    const [first, second] = await Promise.all([h.cache.get(), h.cache.get()]);
    expect(first).toBe(second);
    expect(h.loads()).toBe(1);

    h.changes.change();
    const pending = h.cache.get();
    h.changes.change();
    h.answer('newer');
    expect((await h.cache.get()).toString()).toBe('newer');
    await pending;
    expect(h.loads()).toBe(3);
  });
});

describe('GET /api/tokens across two API processes', () => {
  let a: TestService;
  let b: TestService;

  beforeAll(async () => {
    a = await startTestService({ POOL_SIZE: '3', LEASE_TTL_MS: '60000' });
    b = await startTestService({ POOL_SIZE: '3', LEASE_TTL_MS: '60000' }, { db: a.db });
    // Both hear each other once their notification connections are up.
    await waitFor(async () => (await a.http.get('/readyz')).status === 200 && (await b.http.get('/readyz')).status === 200);
  });
  afterAll(async () => {
    await b.close();
    await a.close();
  });

  const statusIn = async (t: TestService, tokenId: string) =>
    ((await t.http.get('/api/tokens')).body.data as Array<{ id: string; status: string; current_user_id: string | null }>).find(
      (x) => x.id === tokenId,
    );

  it('shows a lease granted or released through the other process, once its notification arrives', async () => {
    const userId = newUserId();
    const before = (await b.http.get('/api/tokens')).body.data as Array<{ id: string; status: string }>;
    expect(before.every((x) => x.status === 'available')).toBe(true);

    const lease = (await a.http.post('/api/tokens/activate').send({ user_id: userId })).body.data;
    expect(await statusIn(a, lease.token_id)).toMatchObject({ status: 'active', current_user_id: userId });
    await waitFor(async () => (await statusIn(b, lease.token_id))?.status === 'active', {
      timeoutMs: 2_000,
      what: 'the other process to show the lease',
    });

    await a.http.post(`/api/tokens/${lease.token_id}/release`).send({ user_id: userId, lease_id: lease.lease_id });
    await waitFor(async () => (await statusIn(b, lease.token_id))?.status === 'available', {
      timeoutMs: 2_000,
      what: 'the other process to show the token free',
    });
  });
});

describe('GET /api/tokens and lazy expiry', () => {
  let t: TestService;

  beforeAll(async () => {
    // ROLE=api: no release worker and no sweep, so nothing ends the lease's row.
    t = await startTestService({ POOL_SIZE: '1', LEASE_TTL_MS: '300' });
  });
  afterAll(async () => {
    await t.close();
  });

  it('shows a lease whose time ran out as available, with nothing ending its row', async () => {
    const lease = (await t.http.post('/api/tokens/activate').send({ user_id: newUserId() })).body.data;
    await t.http.get('/api/tokens');

    const list = await waitFor(
      async () => {
        const res = await t.http.get('/api/tokens');
        return res.body.data[0].status === 'available' ? res.body.data[0] : undefined;
      },
      { timeoutMs: 3_000, what: 'the expired lease to show as available' },
    );

    expect(list).toMatchObject({ id: lease.token_id, current_user_id: null });
    expect(await openUsages(t.db)).toHaveLength(1); // the row is still open
  });
});
