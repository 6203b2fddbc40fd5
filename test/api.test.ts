import { request as httpRequest, STATUS_CODES } from 'node:http';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sendRaw } from './rawHttp.js';
import {
  backdate,
  newUserId,
  openUsages,
  startTestService,
  usagesOf,
  type TestService,
} from './helpers.js';

// The token API over a real PostgreSQL: each case checks the answer, then reads the rows back.

const ISO_MS = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
const TTL_MS = 60_000;

interface LeaseBody {
  token_id: string;
  user_id: string;
  activated_at: string;
  expires_at: string;
  lease_id: string;
  fence: number;
}

describe('the token API', () => {
  let t: TestService;

  beforeAll(async () => {
    t = await startTestService({ POOL_SIZE: '100', LEASE_TTL_MS: String(TTL_MS) });
  });
  afterAll(async () => {
    await t.close();
  });

  async function activate(userId: string) {
    return t.http.post('/api/tokens/activate').send({ user_id: userId });
  }

  describe('POST /api/tokens/activate', () => {
    it('leases a free token for the TTL and records the usage', async () => {
      const userId = newUserId();
      const res = await activate(userId);

      expect(res.status).toBe(201);
      const lease = res.body.data as LeaseBody;
      expect(lease).toMatchObject({ user_id: userId, fence: 1 });
      expect(lease.activated_at).toMatch(ISO_MS);
      expect(lease.expires_at).toMatch(ISO_MS);
      expect(Date.parse(lease.expires_at) - Date.parse(lease.activated_at)).toBe(TTL_MS);
      expect(res.headers.location).toBe(`/api/tokens/${lease.token_id}`);

      const rows = await usagesOf(t.db, 'user_id = $1', [userId]);
      expect(rows).toHaveLength(1);
      expect(rows[0]).toMatchObject({
        id: lease.lease_id,
        token_id: lease.token_id,
        ended_at: null,
        end_reason: null,
      });
    });

    it('returns the lease a user already holds, unchanged, with 200', async () => {
      const userId = newUserId();
      const first = await activate(userId);
      const second = await activate(userId);

      expect(first.status).toBe(201);
      expect(second.status).toBe(200);
      expect(second.body).toEqual(first.body);
      expect(await usagesOf(t.db, 'user_id = $1', [userId])).toHaveLength(1);
    });

    it('accepts upper-case UUIDs and answers with the canonical form', async () => {
      const userId = newUserId();
      const res = await activate(userId.toUpperCase());
      expect(res.status).toBe(201);
      expect(res.body.data.user_id).toBe(userId);
    });

    it.each([
      ['a missing user_id', {}, 'user_id'],
      ['a user_id that is not a UUID', { user_id: 'alice' }, 'user_id'],
      ['a user_id of the wrong type', { user_id: 42 }, 'user_id'],
      ['a null user_id', { user_id: null }, 'user_id'],
      ['a body that is an array', [], 'body'],
      ['a body that is a string', 'user', 'body'],
    ])('refuses %s with 422 validation_failed naming the field', async (_what, body, field) => {
      const before = await usagesOf(t.db);
      const res = await t.http
        .post('/api/tokens/activate')
        .set('Content-Type', 'application/json')
        .send(JSON.stringify(body));

      expect(res.status).toBe(422);
      expect(res.body.error.code).toBe('validation_failed');
      expect(res.body.error.details.fields).toEqual([
        expect.objectContaining({ field, message: expect.any(String) }),
      ]);
      expect(await usagesOf(t.db)).toHaveLength(before.length);
    });

    it('refuses an empty body with 422', async () => {
      const res = await t.http.post('/api/tokens/activate');
      expect(res.status).toBe(422);
      expect(res.body.error.code).toBe('validation_failed');
    });

    it('refuses malformed JSON with 400 invalid_json', async () => {
      const res = await t.http
        .post('/api/tokens/activate')
        .set('Content-Type', 'application/json')
        .send('{"user_id": ');
      expect(res.status).toBe(400);
      expect(res.body).toEqual({
        error: { code: 'invalid_json', message: expect.any(String), details: {} },
      });
    });

    it('refuses a body over 16 KiB with 413 payload_too_large', async () => {
      const res = await t.http
        .post('/api/tokens/activate')
        .set('Content-Type', 'application/json')
        .send(JSON.stringify({ user_id: newUserId(), padding: 'x'.repeat(17 * 1024) }));
      expect(res.status).toBe(413);
      expect(res.body.error.code).toBe('payload_too_large');
    });

    it('refuses a body that is not JSON with 415 unsupported_media_type', async () => {
      const res = await t.http
        .post('/api/tokens/activate')
        .type('form')
        .send({ user_id: newUserId() });
      expect(res.status).toBe(415);
      expect(res.body.error.code).toBe('unsupported_media_type');
    });

    it('answers other methods with 405 and the allowed ones', async () => {
      const res = await t.http.delete('/api/tokens/activate');
      expect(res.status).toBe(405);
      expect(res.headers.allow).toBe('POST, OPTIONS');
      expect(res.body.error.code).toBe('method_not_allowed');
    });
  });

  describe('GET /api/tokens', () => {
    it('lists the whole pool in a stable order with each token status', async () => {
      const userId = newUserId();
      const leased = (await activate(userId)).body.data as LeaseBody;

      const first = await t.http.get('/api/tokens');
      const second = await t.http.get('/api/tokens');

      expect(first.status).toBe(200);
      expect(first.body.data).toHaveLength(100);
      expect(second.body.data.map((x: { id: string }) => x.id)).toEqual(
        first.body.data.map((x: { id: string }) => x.id),
      );
      const mine = first.body.data.find((x: { id: string }) => x.id === leased.token_id);
      expect(mine).toEqual({
        id: leased.token_id,
        status: 'active',
        current_user_id: userId,
        activated_at: leased.activated_at,
        expires_at: leased.expires_at,
      });
      const free = first.body.data.find((x: { status: string }) => x.status === 'available');
      expect(free).toMatchObject({ current_user_id: null, activated_at: null, expires_at: null });

      const { rows } = await t.db.pool.query<{ n: number }>(
        'SELECT count(*)::int AS n FROM all_usages WHERE ended_at IS NULL AND expires_at > now()',
      );
      const active = first.body.data.filter((x: { status: string }) => x.status === 'active');
      expect(active).toHaveLength(rows[0]?.n ?? -1);
    });
  });

  describe('GET /api/tokens/:id', () => {
    it('shows a held token with its active usage', async () => {
      const userId = newUserId();
      const leased = (await activate(userId)).body.data as LeaseBody;

      const res = await t.http.get(`/api/tokens/${leased.token_id}`);

      expect(res.status).toBe(200);
      expect(res.body.data).toEqual({
        id: leased.token_id,
        status: 'active',
        current_user_id: userId,
        activated_at: leased.activated_at,
        expires_at: leased.expires_at,
        active_usage: {
          user_id: userId,
          started_at: leased.activated_at,
          expires_at: leased.expires_at,
          lease_id: leased.lease_id,
          fence: leased.fence,
        },
      });
    });

    it('shows a free token with a null active usage', async () => {
      const list = await t.http.get('/api/tokens');
      const free = list.body.data.find((x: { status: string }) => x.status === 'available');
      const res = await t.http.get(`/api/tokens/${free.id}`);
      expect(res.status).toBe(200);
      expect(res.body.data).toMatchObject({ id: free.id, status: 'available', active_usage: null });
    });

    it.each([
      ['an unknown token id', '00000000-0000-4000-8000-000000000000'],
      ['a malformed token id', 'not-a-token'],
      ['a token id with a path trick', '..%2f..%2fetc'],
    ])('answers %s with 404 not_found', async (_what, id) => {
      const res = await t.http.get(`/api/tokens/${id}`);
      expect(res.status).toBe(404);
      expect(res.body.error.code).toBe('not_found');
    });
  });

  describe('GET /api/tokens/:id/history', () => {
    it('defaults to 50 usages a page', async () => {
      const list = await t.http.get('/api/tokens');
      const res = await t.http.get(`/api/tokens/${list.body.data[0].id}/history`);
      expect(res.status).toBe(200);
      expect(res.body.data.usages.length).toBeLessThanOrEqual(50);
    });

    it('answers a token with no usages with an empty page', async () => {
      const { rows } = await t.db.pool.query<{ id: string }>(
        'SELECT id FROM tokens WHERE last_fence = 0 ORDER BY position DESC LIMIT 1',
      );
      const res = await t.http.get(`/api/tokens/${rows[0]?.id}/history`);
      expect(res.status).toBe(200);
      expect(res.body.data).toEqual({ token_id: rows[0]?.id, usages: [], next_cursor: null });
    });

    it.each([
      ['limit=0', { limit: '0' }, 'limit'],
      ['limit=501', { limit: '501' }, 'limit'],
      ['limit=abc', { limit: 'abc' }, 'limit'],
      ['limit=1.5', { limit: '1.5' }, 'limit'],
      ['an empty limit', { limit: '' }, 'limit'],
      ['limit=0x10', { limit: '0x10' }, 'limit'],
      ['limit=1e1', { limit: '1e1' }, 'limit'],
      ['a forged cursor', { cursor: 'bm90LWEtY3Vyc29y' }, 'cursor'],
    ])('refuses %s with 422 naming the parameter', async (_what, query, field) => {
      const list = await t.http.get('/api/tokens');
      const res = await t.http.get(`/api/tokens/${list.body.data[0].id}/history`).query(query);
      expect(res.status).toBe(422);
      expect(res.body.error.code).toBe('validation_failed');
      expect(res.body.error.details.fields[0].field).toBe(field);
    });

    it('answers the token id in lower case, however the path spelled it', async () => {
      const list = await t.http.get('/api/tokens');
      const id = list.body.data[0].id as string;
      const res = await t.http.get(`/api/tokens/${id.toUpperCase()}/history`);
      expect(res.status).toBe(200);
      expect(res.body.data.token_id).toBe(id);
    });

    it('answers an unknown token with 404', async () => {
      const res = await t.http.get('/api/tokens/00000000-0000-4000-8000-000000000000/history');
      expect(res.status).toBe(404);
      expect(res.body.error.code).toBe('not_found');
    });
  });

  describe('routing', () => {
    it('answers unknown routes with a JSON 404', async () => {
      const res = await t.http.get('/api/nothing-here');
      expect(res.status).toBe(404);
      expect(res.body).toEqual({
        error: { code: 'not_found', message: expect.any(String), details: expect.any(Object) },
      });
    });

    it('answers a malformed URL encoding with a JSON 400', async () => {
      const res = await t.http.get('/api/tokens/%E0%A4%A');
      expect(res.status).toBeLessThan(500);
      expect(res.body.error.code).toEqual(expect.any(String));
    });

    // Node's parser (or Node itself, for an unmet Expect) refuses these before the app sees them,
    // with Node's own bare answer: a 4xx, never a 5xx, and the connection closed.
    it.each([
      ['a header line that is not HTTP', 'GET /healthz HTTP/1.1\r\nHost: x\r\nnot a header\r\n\r\n', 400],
      ['headers over 16 KiB', `GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`, 431],
      ['an Expect other than 100-continue', 'GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\nConnection: close\r\n\r\n', 417],
      ['an HTTP/1.1 request without Host', 'GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n', 400],
      ['a HEAD with headers over 16 KiB', `HEAD /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`, 431],
      ['a request line that is not HTTP', 'NOT HTTP AT ALL\r\n\r\n', 400],
    ])("answers %s with Node's own %i", async (_what, request, status) => {
      const answer = await rawRequest(t.url, request);
      expect(answer.split('\r\n')[0]).toBe(`HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}`);
    });

    it('serves an HTTP/1.0 request without Host, which that version allows', async () => {
      const answer = await rawRequest(t.url, 'GET /healthz HTTP/1.0\r\n\r\n');
      expect(answer.split('\r\n')[0]).toBe('HTTP/1.1 200 OK');
    });

    it('refuses a body the parser cannot read at once, without waiting for its own answer', async () => {
      // The refused bytes belong to the request being answered: its answer can never finish, so
      // waiting for it (as for an earlier request's) held the connection open for good.
      const request =
        'POST /api/tokens/activate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
        'Transfer-Encoding: chunked\r\n\r\nZZ\r\n';
      const { port } = new URL(t.url);
      const { replies, closedByServer } = await sendRaw(Number(port), Buffer.from(request, 'latin1'), 3_000);
      expect(replies.map((reply) => reply.status)).toEqual([400]);
      expect(closedByServer).toBe(true);
    });

    it("lets Node's HTTP client read the 431 to a HEAD with headers over 16 KiB", async () => {
      const { port } = new URL(t.url);
      const status = await new Promise<number | undefined>((resolve, reject) => {
        const headers = { 'X-Big': 'b'.repeat(20_000) };
        const req = httpRequest({ host: '127.0.0.1', port, method: 'HEAD', path: '/healthz', headers }, (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode));
        });
        req.on('error', reject);
        req.end();
      });
      expect(status).toBe(431);
    });

    it('answers If-None-Match: * on a GET with 304, as RFC 9110 asks, and other conditions in full', async () => {
      const list = await t.http.get('/api/tokens');
      const tokenId = (list.body as { data: Array<{ id: string }> }).data[0]?.id ?? '';
      for (const path of ['/api/tokens', `/api/tokens/${tokenId}`, '/healthz', '/openapi.json']) {
        const plain = await t.http.get(path);
        expect(plain.status, path).toBe(200);
        expect(plain.headers['content-type'], path).toBe('application/json; charset=utf-8');
        expect(Number(plain.headers['content-length']), path).toBe(plain.text.length);
        expect((await t.http.get(path).set('If-None-Match', '*')).status, path).toBe(304);
        const other = await t.http.get(path).set('If-None-Match', '"x"').set('If-Modified-Since', new Date().toUTCString());
        expect(other.status, path).toBe(200);
        expect(other.body, path).toEqual(path === '/api/tokens' || path === '/openapi.json' ? expect.any(Object) : plain.body);
      }
    });

    it('echoes a plain X-Request-Id and replaces a long or odd one', async () => {
      expect((await t.http.get('/healthz').set('X-Request-Id', 'abc-123')).headers['x-request-id']).toBe('abc-123');
      const long = await t.http.get('/healthz').set('X-Request-Id', 'x'.repeat(500));
      expect(long.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
    });

    // The id and the duration are recorded as the answer's head is written (src/http/app.ts):
    // answers written with their headers at once, through Express's res.send, with a 304, an
    // error and no route at all each carry the id once and are counted under their route.
    it('gives every answer a request id and a duration', async () => {
      const tokenId = ((await t.http.get('/api/tokens')).body as { data: Array<{ id: string }> }).data[0]?.id ?? '';
      const answers = [
        await t.http.get('/healthz'),
        await t.http.get('/metrics'),
        await t.http.get('/api/tokens').set('If-None-Match', '*'),
        await t.http.post(`/api/tokens/${tokenId}/release`).send({ user_id: newUserId(), lease_id: newUserId() }),
        await t.http.get('/api/nothing-here'),
        await t.http.delete('/healthz'),
      ];
      expect(answers.map((res) => res.status)).toEqual([200, 200, 304, 409, 404, 405]);
      for (const res of answers) {
        expect(res.headers['x-request-id'], String(res.status)).toMatch(/^[0-9a-f-]{36}$/);
        expect(res.headers['x-request-id'], String(res.status)).not.toContain(',');
      }
      const metrics = (await t.http.get('/metrics')).text;
      for (const labels of [
        'method="GET",route="/healthz",status="200"',
        'method="GET",route="/api/tokens",status="304"',
        'method="POST",route="/api/tokens/:id/release",status="409"',
        'method="GET",route="unmatched",status="404"',
        'method="DELETE",route="/healthz",status="405"',
      ]) {
        expect(metrics, labels).toMatch(new RegExp(`^token_lease_http_request_duration_seconds_count\\{${labels}\\} [1-9]`, 'm'));
      }
    });

    it('serves /healthz and /readyz', async () => {
      expect((await t.http.get('/healthz')).body).toEqual({ data: { status: 'ok' } });
      const ready = await t.http.get('/readyz');
      expect(ready.status).toBe(200);
      expect(ready.body.data.checks.postgres).toBe('up');
    });

    it('serves Prometheus metrics', async () => {
      const res = await t.http.get('/metrics');
      expect(res.status).toBe(200);
      expect(res.text).toContain('token_lease_activations_total');
    });
  });
});

describe('expired leases count as free everywhere', () => {
  let t: TestService;

  beforeAll(async () => {
    t = await startTestService({ POOL_SIZE: '1', LEASE_TTL_MS: String(TTL_MS) });
  });
  afterAll(async () => {
    await t.close();
  });

  it('reports a token whose lease ran out as available before anything ends the row', async () => {
    const lease = (await t.http.post('/api/tokens/activate').send({ user_id: newUserId() })).body
      .data as LeaseBody;
    await backdate(t.db, TTL_MS + 1, lease.lease_id);

    const list = await t.http.get('/api/tokens');
    const details = await t.http.get(`/api/tokens/${lease.token_id}`);

    expect(list.body.data[0]).toMatchObject({ id: lease.token_id, status: 'available' });
    expect(details.body.data).toMatchObject({ status: 'available', active_usage: null });
    expect(await openUsages(t.db)).toHaveLength(1); // still open in the table
  });

  it('gives that token to the next user, ending the old usage as expired in the same step', async () => {
    const nextUser = newUserId();
    const res = await t.http.post('/api/tokens/activate').send({ user_id: nextUser });

    expect(res.status).toBe(201);
    const open = await openUsages(t.db);
    expect(open).toHaveLength(1);
    expect(open[0]?.user_id).toBe(nextUser);
    const ended = await usagesOf(t.db, 'ended_at IS NOT NULL');
    expect(ended).toHaveLength(1);
    expect(ended[0]?.end_reason).toBe('expired');
    expect(ended[0]?.ended_at?.getTime()).toBeLessThanOrEqual(open[0]?.started_at.getTime() ?? 0);
  });

  it('gives a user whose own lease ran out a new lease rather than the old one', async () => {
    const [current] = await openUsages(t.db);
    await backdate(t.db, TTL_MS + 1, current?.id);

    const res = await t.http.post('/api/tokens/activate').send({ user_id: current?.user_id });

    expect(res.status).toBe(201);
    expect(res.body.data.lease_id).not.toBe(current?.id);
    expect(res.body.data.fence).toBe(Number(current?.fence) + 1);
    const old = await usagesOf(t.db, 'id = $1', [current?.id]);
    expect(old[0]?.end_reason).toBe('expired');
  });

  it('refuses with 409 pool_exhausted and a Retry-After until the earliest expiry', async () => {
    const [current] = await openUsages(t.db);
    // Leave 2.5 s on the lease: Retry-After rounds up to whole seconds.
    await backdate(t.db, TTL_MS - 2_500, current?.id);

    const res = await t.http.post('/api/tokens/activate').send({ user_id: newUserId() });

    expect(res.status).toBe(409);
    expect(res.body.error.code).toBe('pool_exhausted');
    expect(res.headers['retry-after']).toBe('3');
    expect(res.body.error.details.retry_after_seconds).toBe(3);
    expect(await openUsages(t.db)).toHaveLength(1);
  });

  it('never sends a Retry-After below one second', async () => {
    const [current] = await openUsages(t.db);
    await backdate(t.db, 2_400, current?.id); // 100 ms left
    const res = await t.http.post('/api/tokens/activate').send({ user_id: newUserId() });
    if (res.status === 409) expect(res.headers['retry-after']).toBe('1');
    else expect(res.status).toBe(201); // the lease ran out meanwhile
  });
});

describe('history', () => {
  let t: TestService;

  beforeAll(async () => {
    t = await startTestService({ POOL_SIZE: '1', LEASE_TTL_MS: String(TTL_MS) });
  });
  afterAll(async () => {
    await t.close();
  });

  it('pages through every usage of a token, newest first', async () => {
    const users: string[] = [];
    for (let i = 0; i < 5; i += 1) {
      users.push(newUserId());
      expect((await t.http.post('/api/tokens/activate').send({ user_id: users[i] })).status).toBe(201);
      if (i < 4) expect((await t.http.post('/api/tokens/clear')).body.data.cleared_tokens).toBe(1);
    }
    const tokenId = (await t.http.get('/api/tokens')).body.data[0].id as string;

    const page1 = await t.http.get(`/api/tokens/${tokenId}/history?limit=2`);
    const page2 = await t.http
      .get(`/api/tokens/${tokenId}/history`)
      .query({ limit: 2, cursor: page1.body.data.next_cursor });
    const page3 = await t.http
      .get(`/api/tokens/${tokenId}/history`)
      .query({ limit: 2, cursor: page2.body.data.next_cursor });

    expect(page1.status).toBe(200);
    expect(page1.body.data.token_id).toBe(tokenId);
    expect(page1.body.data.next_cursor).toEqual(expect.any(String));
    expect(page3.body.data.next_cursor).toBeNull();
    const usages = [
      ...page1.body.data.usages,
      ...page2.body.data.usages,
      ...page3.body.data.usages,
    ] as Array<Record<string, unknown>>;
    expect(usages.map((u) => u.user_id)).toEqual([...users].reverse());
    expect(usages.map((u) => u.fence)).toEqual([5, 4, 3, 2, 1]);
    expect(usages[0]).toMatchObject({ ended_at: null, end_reason: null });
    for (const usage of usages.slice(1)) {
      expect(usage).toMatchObject({ end_reason: 'cleared', ended_at: expect.stringMatching(ISO_MS) });
      expect(usage.started_at).toMatch(ISO_MS);
      expect(usage.expires_at).toMatch(ISO_MS);
    }
    const rows = await usagesOf(t.db, 'token_id = $1', [tokenId]);
    expect(usages.map((u) => u.lease_id)).toEqual(rows.map((r) => r.id).reverse());
  });
});

/** Writes `request` as is on a new connection and reads the answer until the server closes it. */
function rawRequest(baseUrl: string, request: string): Promise<string> {
  const { port } = new URL(baseUrl);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), '127.0.0.1', () => socket.write(request));
    let answer = '';
    socket.on('data', (chunk: Buffer) => (answer += chunk.toString()));
    socket.on('end', () => resolve(answer));
    socket.on('error', reject);
  });
}
