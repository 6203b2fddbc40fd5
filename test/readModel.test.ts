import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createChangeCounter, createListCache, createReadModel, type ChangeChannel, type Rendered } from '../src/http/readModel.js';
import { newUserId, openUsages, startTestService, testLogger, type TestService } from './helpers.js';
import { waitFor } from './harness/waitFor.js';

// GET /api/tokens answers from a cache of its serialised body. The cache's rules on a fake clock
// first, then the guarantees end to end: never a stale holder after a change (in this process at
// once, in another within its notification), and lazy expiry with nothing ending the row.

// How one process announces its changes to the others (NOTIFY token_lease_changes), with a
// channel standing in for the connection, to make it fail in ways a real one rarely does.

function channel(publish: () => Promise<void>): ChangeChannel & { published: number } {
  const fake = {
    published: 0,
    subscribe: () => () => undefined,
    publish: () => {
      fake.published += 1;
      return publish();
    },
    isListening: () => true,
  };
  return fake;
}

describe('change announcements', () => {
  it('give up on a connection that never answers, so that a shutdown is not held up', async () => {
    const silent = channel(() => new Promise<void>(() => undefined));
    const changes = createChangeCounter({ channel: silent, processId: 'p', log: testLogger() });
    changes.changed();
    await waitFor(() => silent.published === 1, { what: 'the announcement' });

    const started = Date.now();
    await changes.close();
    expect(Date.now() - started).toBeLessThan(3_000);
  });

  it('are sent again after one failed, instead of being dropped', async () => {
    let failing = true;
    const flaky = channel(() => (failing ? Promise.reject(new Error('connection down')) : Promise.resolve()));
    const changes = createChangeCounter({ channel: flaky, processId: 'p', log: testLogger() });
    changes.changed();
    await waitFor(() => flaky.published === 1, { what: 'the first announcement' });
    failing = false;
    await waitFor(() => flaky.published === 2, { what: 'the announcement to be sent again' });
    await changes.close();
  });
});

describe('writes counted by the read model', () => {
  const listTokens = () => Promise.resolve({ tokens: [], nextExpiryInMs: null });

  it('count a write whose answer was lost, since it may have committed', async () => {
    // The statement commits and then its answer goes missing, as when the connection drops
    // between the two: the caller gets an error, and its retry must still read its own write.
    const announcements = channel(() => Promise.resolve());
    const model = createReadModel({ listTokens, channel: announcements, processId: 'p', log: testLogger(), maxAgeMs: 1_000 });
    await expect(model.write(Promise.reject(new Error('Connection terminated unexpectedly')))).rejects.toThrow();
    await waitFor(() => announcements.published === 1, { what: 'the announcement' });
    await model.close();
  });

  it('do not count an outcome the route says changed nothing', async () => {
    const announcements = channel(() => Promise.resolve());
    const model = createReadModel({ listTokens, channel: announcements, processId: 'p', log: testLogger(), maxAgeMs: 1_000 });
    await model.write(Promise.resolve({ created: false }), (outcome) => !(outcome instanceof Error) && !outcome.created);
    await model.close();
    expect(announcements.published).toBe(0);
  });
});

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

  it("does the same for a named pool's list", async () => {
    await a.http.post('/api/admin/pools').send({ name: 'gpus', size: 2 }).expect(201);
    const listed = async (t: TestService) => (await t.http.get('/api/pools/gpus/tokens').expect(200)).body.data as Array<{ id: string; status: string }>;
    expect((await listed(b)).map((x) => x.status)).toEqual(['available', 'available']);
    expect((await listed(a)).map((x) => x.status)).toEqual(['available', 'available']);

    const userId = newUserId();
    const lease = (await a.http.post('/api/pools/gpus/tokens/activate').send({ user_id: userId }).expect(201)).body.data;
    // Read your writes in the process that made it; the other within its notification.
    expect((await listed(a)).find((x) => x.id === lease.token_id)?.status).toBe('active');
    await waitFor(async () => (await listed(b)).find((x) => x.id === lease.token_id)?.status === 'active', {
      timeoutMs: 2_000,
      what: "the other process to show the named pool's lease",
    });

    await b.http.post(`/api/tokens/${lease.token_id}/release`).send({ user_id: userId, lease_id: lease.lease_id }).expect(200);
    expect((await listed(b)).find((x) => x.id === lease.token_id)?.status).toBe('available');
    await waitFor(async () => (await listed(a)).find((x) => x.id === lease.token_id)?.status === 'available', {
      timeoutMs: 2_000,
      what: "the first process to show the named pool's token free",
    });
  });
});

describe("a named pool's list", () => {
  it("is kept per pool, and any change empties every pool's", async () => {
    const model = createReadModel({
      listTokens: () => Promise.reject(new Error('not read')),
      channel: channel(() => Promise.resolve()),
      processId: 'p',
      log: testLogger(),
      maxAgeMs: 60_000,
    });
    const reads = { a: 0, b: 0 };
    const lister = (pool: 'a' | 'b') => () => {
      reads[pool] += 1;
      return Promise.resolve({ tokens: [], nextExpiryInMs: null });
    };
    const list = (id: number, pool: 'a' | 'b') => model.listOf(id, lister(pool)).get();
    await list(1, 'a');
    await list(1, 'a');
    await list(2, 'b');
    await list(2, 'b');
    expect(reads).toEqual({ a: 1, b: 1 });

    await model.write(Promise.resolve('a write'));
    await list(1, 'a');
    await list(2, 'b');
    expect(reads).toEqual({ a: 2, b: 2 });
    await model.close();
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
