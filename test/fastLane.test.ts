import { randomUUID } from 'node:crypto';
import { SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { laneRouteOf } from '../src/http/fastLane.js';
import { createTestDatabase, startTestService, type TestDatabase, type TestService } from './helpers.js';
import { waitFor } from './harness/waitFor.js';

// The fast lane (src/http/fastLane.ts) serves activate, release and the token list without
// Express. Here the same requests go to two services on one database, one with the lane
// (HTTP_FAST_LANE=true, the default, as in the rest of the suite) and one without it, and their
// answers must be the same: status, headers and body, but for what differs by nature (ids,
// times, the date).

const SECRET = 'the-shared-secret-of-the-fast-lane-test';
const ID = '0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b';
const json = { 'content-type': 'application/json' };

describe('which requests the lane takes', () => {
  const post = (url: string, headers: Record<string, string | undefined> = {}) => ({
    method: 'POST',
    url,
    headers: { 'content-type': 'application/json', 'content-length': '50', ...headers },
  });
  it.each([
    ['GET /api/tokens', { method: 'GET', url: '/api/tokens', headers: {} }, '/api/tokens'],
    ['an activation', post('/api/tokens/activate'), '/api/tokens/activate'],
    ['a release', post(`/api/tokens/${ID}/release`), '/api/tokens/:id/release'],
    ['a release of a token id that is not one', post('/api/tokens/abc/release'), '/api/tokens/:id/release'],
    ['JSON with its charset', post('/api/tokens/activate', { 'content-type': 'Application/JSON; charset=UTF-8' }), '/api/tokens/activate'],
  ])('takes %s', (_what, req, route) => {
    expect(laneRouteOf(req)).toBe(route);
  });

  it.each([
    ['a conditional GET', { method: 'GET', url: '/api/tokens', headers: { 'if-none-match': '*' } }],
    ['HEAD', { method: 'HEAD', url: '/api/tokens', headers: {} }],
    ['a query string', { method: 'GET', url: '/api/tokens?x=1', headers: {} }],
    ['another spelling of the path', post('/API/tokens/activate')],
    ['a trailing slash', post('/api/tokens/activate/')],
    ['a queue wait', post('/api/tokens/activate?wait=1000')],
    ['an encoded path', post(`/api/tokens/${ID.replace('a', '%61')}/release`)],
    ['a renewal', post(`/api/tokens/${ID}/renew`)],
    ['a named pool', post('/api/pools/default/activate')],
    ['another type', post('/api/tokens/activate', { 'content-type': 'text/plain' })],
    ['another charset', post('/api/tokens/activate', { 'content-type': 'application/json; charset=latin1' })],
    ['a chunked body', post('/api/tokens/activate', { 'content-length': undefined, 'transfer-encoding': 'chunked' })],
    ['an encoded body', post('/api/tokens/activate', { 'content-encoding': 'gzip' })],
    ['an empty body', post('/api/tokens/activate', { 'content-length': '0' })],
    ['a body over 16 KiB', post('/api/tokens/activate', { 'content-length': String(16 * 1024 + 1) })],
    ['GET on activate', { method: 'GET', url: '/api/tokens/activate', headers: {} }],
    ['OPTIONS', { method: 'OPTIONS', url: '/api/tokens', headers: {} }],
  ])('leaves %s to Express', (_what, req) => {
    expect(laneRouteOf(req)).toBeUndefined();
  });
});

interface Reply {
  readonly status: number;
  readonly headers: Record<string, string>;
  readonly body: unknown;
}

const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/gi;
const TIME = /\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z/g;

/** What may differ between two answers to the same request: ids, times, the date, seconds left. */
function normalised(reply: Reply): Reply {
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(reply.headers)) {
    if (name === 'date' || name === 'keep-alive' || name === 'connection') continue;
    headers[name] = value
      .replace(UUID, 'ID')
      .replace(/r=\d+/, 'r=R')
      .replace(/t=\d+/, 't=T')
      .replace(/pk=:[^:]*:/, 'pk=:K:');
  }
  if (headers['retry-after'] !== undefined) headers['retry-after'] = 'N';
  if (headers['content-length'] !== undefined) headers['content-length'] = 'L';
  const text = JSON.stringify(reply.body)
    .replace(UUID, 'ID')
    .replace(TIME, 'TIME')
    .replace(/"retry_after_seconds":\d+/, '"retry_after_seconds":"N"');
  return { status: reply.status, headers, body: JSON.parse(text) as unknown };
}

async function send(base: string, method: string, path: string, options: { headers?: Record<string, string>; body?: string | Buffer } = {}): Promise<Reply> {
  const res = await fetch(`${base}${path}`, { method, headers: options.headers, body: options.body });
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: compared as text
  }
  return { status: res.status, headers: Object.fromEntries(res.headers), body };
}

describe.each([
  ['AUTH_MODE=none', {}],
  ['AUTH_MODE=none, CORS and rate limits on', { CORS_ORIGINS: 'https://app.example', RATE_LIMIT_PER_MINUTE: '1000' }],
  ['AUTH_MODE=jwt, rate limits on', { AUTH_MODE: 'jwt', JWT_SECRET: SECRET, RATE_LIMIT_PER_MINUTE: '1000' }],
])('the lane answers as Express does, %s', (_what, env: Record<string, string>) => {
  const jwt = env.AUTH_MODE === 'jwt';
  let db: TestDatabase;
  let lane: TestService;
  let express: TestService;

  beforeAll(async () => {
    db = await createTestDatabase();
    const common = { ...env, POOL_SIZE: '2', LEASE_TTL_MS: '60000' };
    lane = await startTestService({ ...common, HTTP_FAST_LANE: 'true' }, { db });
    express = await startTestService({ ...common, HTTP_FAST_LANE: 'false' }, { db });
  });
  afterAll(async () => {
    await lane.close();
    await express.close();
    await db.drop();
  });

  const bearer = async (sub: string): Promise<Record<string, string>> =>
    jwt
      ? {
          authorization: `Bearer ${await new SignJWT({ sub })
            .setProtectedHeader({ alg: 'HS256' })
            .setExpirationTime('5m')
            .sign(new TextEncoder().encode(SECRET))}`,
        }
      : {};

  /**
   * Sends `request(side)` to both services, each for a user of its own (so that both find the
   * same state), and checks that the answers are the same; returns them.
   */
  async function same(
    request: (user: string) => Promise<{ method: string; path: string; headers?: Record<string, string>; body?: string | Buffer }>,
    users: [string, string] = [randomUUID(), randomUUID()],
  ): Promise<[Reply, Reply]> {
    const a = await request(users[0]);
    const b = await request(users[1]);
    const replies: [Reply, Reply] = [await send(lane.url, a.method, a.path, a), await send(express.url, b.method, b.path, b)];
    expect(normalised(replies[0])).toEqual(normalised(replies[1]));
    return replies;
  }

  const activate = (more: { body?: (user: string) => string | Buffer; headers?: Record<string, string> } = {}) =>
    async (user: string) => ({
      method: 'POST',
      path: '/api/tokens/activate',
      headers: { ...json, ...(await bearer(user)), ...more.headers },
      body: more.body?.(user) ?? JSON.stringify({ user_id: user }),
    });

  it('activations, the lease held, the list, releases and their retries, and a full pool', async () => {
    if (env.RATE_LIMIT_PER_MINUTE !== undefined) {
      // The limiter loads its scripts into Redis once it first counts.
      for (const t of [lane, express]) {
        await waitFor(async () => (await send(t.url, 'POST', '/api/tokens/activate', { headers: { ...json, ...(await bearer(randomUUID())) }, body: '{' })).headers.ratelimit !== undefined, {
          timeoutMs: 10_000,
          what: 'the limiter to reach Redis',
        });
      }
    }
    const users: [string, string] = [randomUUID(), randomUUID()];
    const [first, firstOfExpress] = await same(activate(), users);
    expect(first.status).toBe(201);
    expect(first.headers.location).toMatch(/^\/api\/tokens\//);
    const [again] = await same(activate(), users);
    expect(again.status).toBe(200);

    // Both services' read models hear of both leases, then list the same tokens.
    const list = async (t: TestService) => send(t.url, 'GET', '/api/tokens', { headers: await bearer(users[0]) });
    await waitFor(async () => JSON.stringify((await list(lane)).body) === JSON.stringify((await list(express)).body), {
      timeoutMs: 5_000,
      what: 'both lists to show both leases',
    });
    const lists = [await list(lane), await list(express)];
    expect(lists[0]?.status).toBe(200);
    expect(lists[0]?.headers).toEqual({ ...lists[1]?.headers, date: lists[0]?.headers.date, 'x-request-id': lists[0]?.headers['x-request-id'] });

    const [full] = await same(activate());
    expect(full.status).toBe(409);
    expect(full.headers['retry-after']).toBeDefined();

    const leaseOf = (reply: Reply) => (reply.body as { data: { lease_id: string; token_id: string } }).data;
    const held = { [users[0]]: leaseOf(first), [users[1]]: leaseOf(firstOfExpress) };
    const releaseOf = (body: (user: string) => unknown) => async (user: string) => ({
      method: 'POST',
      path: `/api/tokens/${held[user]?.token_id ?? ID}/release`,
      headers: { ...json, ...(await bearer(user)) },
      body: JSON.stringify(body(user)),
    });
    expect((await same(releaseOf((user) => ({ user_id: user, lease_id: randomUUID() })), users))[0].status).toBe(409);
    expect((await same(releaseOf((user) => ({ user_id: user })), users))[0].status).toBe(422);
    const [released] = await same(releaseOf((user) => ({ user_id: user, lease_id: held[user]?.lease_id })), users);
    expect(released.status).toBe(200);
    const [retried] = await same(releaseOf((user) => ({ user_id: user, lease_id: held[user]?.lease_id })), users);
    expect(retried).toMatchObject({ status: 200, body: released.body });
  });

  interface Case {
    readonly body?: (user: string) => string | Buffer;
    readonly headers?: Record<string, string>;
  }
  it.each<[string, Case, number]>([
    ['invalid JSON', { body: () => '{"user_id":' }, 400],
    ['JSON that is not an object', { body: () => '5' }, 422],
    ['a body without user_id', { body: () => '{}' }, jwt ? 201 : 422],
    ['a byte order mark before the JSON', { body: (user: string) => Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(JSON.stringify({ user_id: user }))]) }, 201],
    ['another type (left to Express)', { headers: { 'content-type': 'text/plain' } }, 415],
    ['another charset (left to Express)', { headers: { 'content-type': 'application/json; charset=latin1' } }, 415],
    ['a body over 16 KiB (left to Express)', { body: (user: string) => JSON.stringify({ user_id: user, pad: 'x'.repeat(17_000) }) }, 413],
    ['a plain request id, echoed', { headers: { 'x-request-id': 'req-42' } }, 201],
    ['a request id that is not plain, replaced', { headers: { 'x-request-id': 'not plain!' } }, 201],
    ['a browser origin (CORS)', { headers: { origin: 'https://app.example' } }, 201],
  ])('%s', async (_what, more, status) => {
    const users: [string, string] = [randomUUID(), randomUUID()];
    const replies = await same(activate(more), users);
    expect(replies[0].status).toBe(status);
    if (more.headers?.['x-request-id'] === 'req-42') expect(replies[0].headers['x-request-id']).toBe('req-42');
    // Each side gives its token back, leaving room for the next case.
    for (const [i, reply] of replies.entries()) {
      if (reply.status !== 201) continue;
      const { token_id: tokenId, lease_id: leaseId } = (reply.body as { data: { token_id: string; lease_id: string } }).data;
      const user = users[i] ?? '';
      const released = await send([lane, express][i]?.url ?? '', 'POST', `/api/tokens/${tokenId}/release`, {
        headers: { ...json, ...(await bearer(user)) },
        body: JSON.stringify({ user_id: user, lease_id: leaseId }),
      });
      expect(released.status).toBe(200);
    }
  });

  it('a release of a token id that is not one, and of a token that does not exist', async () => {
    const release = (id: string) => async (user: string) => ({
      method: 'POST',
      path: `/api/tokens/${id}/release`,
      headers: { ...json, ...(await bearer(user)) },
      body: JSON.stringify({ user_id: user, lease_id: randomUUID() }),
    });
    expect((await same(release('abc')))[0].status).toBe(404);
    expect([404, 409]).toContain((await same(release(randomUUID())))[0].status);
  });

  it.runIf(jwt)('callers without a valid JWT, and a JWT acting for another user', async () => {
    const without = (headers: Record<string, string>) => (user: string) =>
      Promise.resolve({ method: 'POST', path: '/api/tokens/activate', headers: { ...json, ...headers }, body: JSON.stringify({ user_id: user }) });
    expect((await same(without({})))[0].status).toBe(401);
    expect((await same(without({ authorization: 'Basic abc' })))[0].status).toBe(401);
    expect((await same(without({ authorization: 'Bearer not.a.jwt' })))[0].status).toBe(401);
    const [other] = await same(activate({ body: () => JSON.stringify({ user_id: randomUUID() }) }));
    expect(other.status).toBe(403);
    const list = async (t: TestService) => send(t.url, 'GET', '/api/tokens');
    expect(normalised(await list(lane))).toEqual(normalised(await list(express)));
  });
});

describe('the lane counts the lease budget as express-rate-limit does', () => {
  let db: TestDatabase;
  let lane: TestService;
  let express: TestService;

  beforeAll(async () => {
    db = await createTestDatabase();
    const env = { RATE_LIMIT_PER_MINUTE: '3', POOL_SIZE: '2' };
    lane = await startTestService({ ...env, HTTP_FAST_LANE: 'true' }, { db });
    express = await startTestService({ ...env, HTTP_FAST_LANE: 'false' }, { db });
  });
  afterAll(async () => {
    await lane.close();
    await express.close();
    await db.drop();
  });

  it('the same headers on each count, and the same 429 past the limit', async () => {
    // An invalid body is counted and changes nothing. Each service counts this address under a
    // Redis prefix of its own, so both have counted the same requests each time.
    const one = (t: TestService) => send(t.url, 'POST', '/api/tokens/activate', { headers: json, body: '{' });
    for (;;) {
      const [a, b] = [await one(lane), await one(express)];
      expect(normalised(a)).toEqual(normalised(b));
      expect(a.headers.ratelimit?.replace(/t=\d+/, '')).toBe(b.headers.ratelimit?.replace(/t=\d+/, ''));
      expect(a.headers.ratelimit).toBeDefined();
      if (a.status === 429) {
        expect(a.headers['retry-after']).toMatch(/^\d+$/);
        expect(a.headers.ratelimit).toMatch(/^"lease"; r=0; t=\d+$/);
        break;
      }
      expect(a.status).toBe(400);
    }
  });
});
