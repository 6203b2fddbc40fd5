import pg from 'pg';
import { afterAll, afterEach, describe, expect, inject, it } from 'vitest';
import { releaseLease } from '../src/db/queries.js';
import { dropDatabase, testDatabasePrefix, uniqueName, withDatabase } from './harness/databases.js';
import { createTestDatabase, lockWaits, newUserId, startTestService, usagesOf, type TestDatabase, type TestService, spawnService } from './helpers.js';
import { waitFor } from './harness/waitFor.js';
import type { ServiceProcess } from './harness/processes.js';

// POST /api/tokens/activate?wait=N: waiters on a full pool, served first come first served
// across processes, woken by PostgreSQL notifications.

interface Answer {
  status: number;
  body: Record<string, any>;
  headers: Headers;
}

function post(baseUrl: string, path: string, body: unknown, signal?: AbortSignal): Promise<Answer> {
  return fetch(`${baseUrl}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    ...(signal === undefined ? {} : { signal }),
  }).then(async (res) => ({ status: res.status, body: (await res.json()) as Record<string, any>, headers: res.headers }));
}

const waitingCount = async (db: TestDatabase) =>
  Number((await db.pool.query<{ n: string }>('SELECT count(*) AS n FROM waiters')).rows[0]?.n);

const services: TestService[] = [];
afterEach(async () => {
  for (const s of services.splice(0)) await s.close();
});

async function start(env: Record<string, string>, db?: TestDatabase): Promise<TestService> {
  const t = await startTestService({ LEASE_TTL_MS: '60000', ...env }, db === undefined ? {} : { db });
  services.push(t);
  return t;
}

describe('waiting for a token', () => {
  it('serves 20 waiters in arrival order as tokens are released one by one', async () => {
    const t = await start({ POOL_SIZE: '1' });
    const holder = newUserId();
    const first = await post(t.url, '/api/tokens/activate', { user_id: holder });
    const tokenId = first.body.data.token_id as string;

    const users = Array.from({ length: 20 }, () => newUserId());
    const answers: Array<Promise<Answer>> = [];
    for (const [i, user] of users.entries()) {
      answers.push(post(t.url, '/api/tokens/activate?wait=30', { user_id: user }));
      await waitFor(async () => (await waitingCount(t.db)) === i + 1, { what: `waiter ${i} to queue` });
    }

    const served: string[] = [];
    let current = { user_id: holder, lease_id: first.body.data.lease_id as string };
    for (const [i, answer] of answers.entries()) {
      expect((await post(t.url, `/api/tokens/${tokenId}/release`, current)).status).toBe(200);
      const res = await answer;
      expect(res.status, `waiter ${i}`).toBe(201);
      served.push(res.body.data.user_id as string);
      current = { user_id: res.body.data.user_id as string, lease_id: res.body.data.lease_id as string };
    }

    expect(served).toEqual(users);
    const rows = await usagesOf(t.db, 'token_id = $1', [tokenId]);
    expect(rows.map((r) => r.user_id)).toEqual([holder, ...users]);
    expect(await waitingCount(t.db)).toBe(0);
  });

  it('answers 409 pool_exhausted with Retry-After when the wait runs out', async () => {
    const t = await start({ POOL_SIZE: '1' });
    await post(t.url, '/api/tokens/activate', { user_id: newUserId() });

    const started = Date.now();
    const res = await post(t.url, '/api/tokens/activate?wait=0.5', { user_id: newUserId() });

    expect(res.status).toBe(409);
    expect(res.body.error.code).toBe('pool_exhausted');
    expect(Number(res.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect(Date.now() - started).toBeGreaterThanOrEqual(450);
    expect(await waitingCount(t.db)).toBe(0);
    const metrics = await (await fetch(`${t.url}/metrics`)).text();
    expect(metrics).toMatch(/^token_lease_activations_total\{pool="default",outcome="exhausted"\} 1$/m);
  });

  it('a waiter that disconnects gives up its place and consumes no token', async () => {
    const t = await start({ POOL_SIZE: '1' });
    const holder = newUserId();
    const held = (await post(t.url, '/api/tokens/activate', { user_id: holder })).body.data;
    const tokenId = held.token_id as string;
    const quitter = newUserId();
    const patient = newUserId();

    const abort = new AbortController();
    const gone = post(t.url, '/api/tokens/activate?wait=30', { user_id: quitter }, abort.signal).catch(
      (error: unknown) => error,
    );
    await waitFor(async () => (await waitingCount(t.db)) === 1, { what: 'the first waiter' });
    const next = post(t.url, '/api/tokens/activate?wait=30', { user_id: patient });
    await waitFor(async () => (await waitingCount(t.db)) === 2, { what: 'the second waiter' });

    abort.abort();
    await gone;
    await waitFor(async () => (await waitingCount(t.db)) === 1, { what: 'the quitter to leave' });
    await post(t.url, `/api/tokens/${tokenId}/release`, { user_id: holder, lease_id: held.lease_id });

    expect((await next).body.data.user_id).toBe(patient);
    expect(await usagesOf(t.db, 'user_id = $1', [quitter])).toEqual([]);
  });

  it('a plain activation cannot overtake a live waiter', async () => {
    const t = await start({ POOL_SIZE: '1' });
    const holder = newUserId();
    const held = (await post(t.url, '/api/tokens/activate', { user_id: holder })).body.data;
    const tokenId = held.token_id as string;
    // A waiter of another process, live for the next few seconds.
    await t.db.pool.query(
      "INSERT INTO waiters (pool_id, user_id, deadline) VALUES (1, $1, now() + interval '30 seconds')",
      [newUserId()],
    );
    await post(t.url, `/api/tokens/${tokenId}/release`, { user_id: holder, lease_id: held.lease_id });

    const res = await post(t.url, '/api/tokens/activate', { user_id: newUserId() });

    expect(res.status).toBe(409);
    expect(res.body.error.code).toBe('pool_exhausted');
  });

  it('gets a token freed by expiry, without any event', async () => {
    const t = await start({ POOL_SIZE: '1', LEASE_TTL_MS: '800' });
    await post(t.url, '/api/tokens/activate', { user_id: newUserId() });

    const res = await post(t.url, '/api/tokens/activate?wait=5', { user_id: newUserId() });

    expect(res.status).toBe(201);
  });

  it('gets a token freed by clear', async () => {
    const t = await start({ POOL_SIZE: '2' });
    await post(t.url, '/api/tokens/activate', { user_id: newUserId() });
    await post(t.url, '/api/tokens/activate', { user_id: newUserId() });
    const waiting = post(t.url, '/api/tokens/activate?wait=10', { user_id: newUserId() });
    await waitFor(async () => (await waitingCount(t.db)) === 1, { what: 'the waiter' });

    await post(t.url, '/api/tokens/clear', {});

    expect((await waiting).status).toBe(201);
  });

  it('answers 503 too_many_waiters beyond MAX_WAITERS', async () => {
    const t = await start({ POOL_SIZE: '1', MAX_WAITERS: '1' });
    await post(t.url, '/api/tokens/activate', { user_id: newUserId() });
    const first = post(t.url, '/api/tokens/activate?wait=1', { user_id: newUserId() });
    await waitFor(async () => (await waitingCount(t.db)) === 1, { what: 'the waiter' });

    const second = await post(t.url, '/api/tokens/activate?wait=1', { user_id: newUserId() });

    expect(second.status).toBe(503);
    expect(second.body.error.code).toBe('too_many_waiters');
    expect((await first).status).toBe(409);
  });

  it('serves a waiter who joins as a token is freed at once, not at its next re-check', async () => {
    // The freeing statement looked for waiters before the waiter joined, and the waiter's first
    // attempt skipped the token still locked by it: no notification comes, and the waiter gets
    // the token at its look shortly after joining, not at its periodic re-check a second later.
    const t = await start({ POOL_SIZE: '1' });
    const holder = newUserId();
    const held = await post(t.url, '/api/tokens/activate', { user_id: holder });
    const release = await t.db.pool.connect();
    let waited: Promise<Answer>;
    let committedAt: number;
    try {
      await release.query('BEGIN');
      const lease = held.body.data as { token_id: string; lease_id: string };
      expect((await releaseLease(release, { tokenId: lease.token_id, userId: holder, leaseId: lease.lease_id })).outcome).toBe('released');
      waited = post(t.url, '/api/tokens/activate?wait=5', { user_id: newUserId() });
      await waitFor(async () => (await waitingCount(t.db)) > 0, { what: 'the waiter to join', intervalMs: 5 });
      expect(await lockWaits(t.db.pool)).toBe(0);
      await release.query('COMMIT');
      committedAt = Date.now();
    } finally {
      release.release();
    }
    const res = await waited;
    expect(res.status).toBe(201);
    // Its re-check is a second away; a waiter served by its first attempt takes milliseconds.
    expect(Date.now() - committedAt).toBeLessThan(800);
  });

  it('tells a plain activation refused for the sake of waiters, with a token free, to retry soon', async () => {
    // A place whose process crashed counts for 5 s more; the refusal used to say to come back
    // at the earliest expiry, a minute away here.
    const t = await start({ POOL_SIZE: '2' });
    await post(t.url, '/api/tokens/activate', { user_id: newUserId() });
    await t.db.pool.query(
      `INSERT INTO waiters (pool_id, user_id, deadline) VALUES (1, gen_random_uuid(), now() + interval '30 seconds')`,
    );

    const res = await post(t.url, '/api/tokens/activate', { user_id: newUserId() });

    expect(res.status).toBe(409);
    expect(res.body.error.code).toBe('pool_exhausted');
    expect(res.headers.get('retry-after')).toBe('1');
  });

  it('holds to MAX_WAITERS when many ask to wait at once', async () => {
    // The limit was checked before each place was added and counted only after: a burst all
    // passed it (29 of 30 waited with MAX_WAITERS=2).
    const t = await start({ POOL_SIZE: '1', MAX_WAITERS: '2' });
    await post(t.url, '/api/tokens/activate', { user_id: newUserId() });
    // Hold every insert of a place, so that all 30 reach the check while none is counted yet.
    const holder = await t.db.pool.connect();
    let answered = 0;
    let answers: Answer[];
    try {
      await holder.query('BEGIN');
      await holder.query('LOCK TABLE waiters IN SHARE MODE');
      const all = Promise.all(
        Array.from({ length: 30 }, () =>
          post(t.url, '/api/tokens/activate?wait=0.3', { user_id: newUserId() }).finally(() => {
            answered += 1;
          }),
        ),
      );
      await waitFor(async () => (await lockWaits(t.db.pool)) + answered === 30, {
        what: 'every request to be answered or to wait for its place',
      });
      await holder.query('COMMIT');
      answers = await all;
    } finally {
      holder.release();
    }
    const codes = answers.map((answer) => answer.body.error.code as string);
    expect(codes.filter((code) => code === 'pool_exhausted')).toHaveLength(2);
    expect(codes.filter((code) => code === 'too_many_waiters')).toHaveLength(28);
  });

  it('refuses a wait over 60 seconds, or not written as a plain number, with 422', async () => {
    const t = await start({ POOL_SIZE: '1' });
    for (const wait of ['61', '', '%20', '0x1E', '3e1', '-1', '1,5']) {
      const res = await post(t.url, `/api/tokens/activate?wait=${wait}`, { user_id: newUserId() });
      expect(res.status, `wait=${wait}`).toBe(422);
      expect(res.body.error.details.fields[0].field).toBe('wait');
    }
  });

  it('answers waiters 503 at shutdown instead of holding it up', async () => {
    const db = await createTestDatabase();
    try {
      const t = await startTestService({ POOL_SIZE: '1', LEASE_TTL_MS: '60000' }, { db });
      await post(t.url, '/api/tokens/activate', { user_id: newUserId() });
      const waiting = post(t.url, '/api/tokens/activate?wait=30', { user_id: newUserId() });
      await waitFor(async () => (await waitingCount(db)) === 1, { what: 'the waiter' });

      const started = Date.now();
      await t.close();

      expect((await waiting).status).toBe(503);
      expect(Date.now() - started).toBeLessThan(5_000);
      expect(await waitingCount(db)).toBe(0);
    } finally {
      await db.drop();
    }
  });
});

describe('waiters in two API processes', () => {
  const procs: ServiceProcess[] = [];
  const database = `${testDatabasePrefix(inject('runId'))}${uniqueName()}`;
  const observer = new pg.Pool({ connectionString: withDatabase(database), max: 1 });
  // Its last connection may still be closing when the database is dropped (see test/helpers.ts).
  observer.on('error', () => undefined);
  afterAll(async () => {
    for (const p of procs) p.kill('SIGKILL');
    await Promise.all(procs.map((p) => p.exited()));
    await observer.end();
    await dropDatabase(database);
  });

  it('are both served, in arrival order across processes', async () => {
    const env = { ROLE: 'api', DATABASE_URL: withDatabase(database), POOL_SIZE: '1', LEASE_TTL_MS: '60000' };
    const a = spawnService(env);
    procs.push(a);
    const portA = await a.port();
    const b = spawnService(env);
    procs.push(b);
    const portB = await b.port();
    const urlA = `http://127.0.0.1:${portA}`;
    const urlB = `http://127.0.0.1:${portB}`;

    const holder = newUserId();
    const held = (await post(urlA, '/api/tokens/activate', { user_id: holder })).body.data;
    const tokenId = held.token_id as string;
    const inB = newUserId();
    const inA = newUserId();
    const queued = (n: number) =>
      waitFor(
        async () => {
          const { rows } = await observer.query<{ n: string }>('SELECT count(*) AS n FROM waiters');
          return Number(rows[0]?.n) === n;
        },
        { what: `${n} waiters` },
      );
    const first = post(urlB, '/api/tokens/activate?wait=20', { user_id: inB });
    await queued(1);
    const second = post(urlA, '/api/tokens/activate?wait=20', { user_id: inA });
    await queued(2);

    await post(urlA, `/api/tokens/${tokenId}/release`, { user_id: holder, lease_id: held.lease_id });
    const firstAnswer = await first;
    expect(firstAnswer.status).toBe(201);
    expect(firstAnswer.body.data.user_id).toBe(inB);

    await post(urlB, `/api/tokens/${tokenId}/release`, { user_id: inB, lease_id: firstAnswer.body.data.lease_id });
    const secondAnswer = await second;
    expect(secondAnswer.status).toBe(201);
    expect(secondAnswer.body.data.user_id).toBe(inA);
  });
});
