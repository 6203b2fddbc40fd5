import { randomUUID } from 'node:crypto';
import { Writable } from 'node:stream';
import { SignJWT } from 'jose';
import { pino } from 'pino';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { openUsages, startTestService, type TestService } from './helpers.js';

// AUTH_MODE=jwt against the real service, with real tokens: who may do what, what others see.

const SECRET = 'the-shared-secret-of-this-test-0123456789';
const ADMIN_KEY = 'auth-test-admin-key-0123456789';

function token(sub: string, more: { scope?: string; exp?: number; secret?: string } = {}): Promise<string> {
  return new SignJWT({ sub, ...(more.scope === undefined ? {} : { scope: more.scope }) })
    .setProtectedHeader({ alg: 'HS256' })
    .setExpirationTime(more.exp ?? Math.floor(Date.now() / 1000) + 300)
    .sign(new TextEncoder().encode(more.secret ?? SECRET));
}

describe('AUTH_MODE=jwt', () => {
  let t: TestService;
  const lines: string[] = [];
  const users = { alice: randomUUID(), bob: randomUUID(), reader: randomUUID(), admin: randomUUID() };
  const bearer: Record<keyof typeof users, string> = { alice: '', bob: '', reader: '', admin: '' };
  const as = (who: keyof typeof users) => ({ Authorization: `Bearer ${bearer[who]}` });

  beforeAll(async () => {
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(chunk.toString());
        done();
      },
    });
    t = await startTestService(
      { AUTH_MODE: 'jwt', JWT_SECRET: SECRET, ADMIN_API_KEY: ADMIN_KEY, POOL_SIZE: '3', LEASE_TTL_MS: '60000', CORS_ORIGINS: 'https://app.example' },
      { log: pino({ level: 'debug' }, sink) },
    );
    bearer.alice = await token(users.alice);
    bearer.bob = await token(users.bob);
    bearer.reader = await token(users.reader, { scope: 'read' });
    bearer.admin = await token(users.admin, { scope: 'admin' });
  });
  beforeEach(async () => {
    await t.http.post('/api/tokens/clear').set('Authorization', `Bearer ${ADMIN_KEY}`).expect(200);
  });
  afterAll(async () => {
    await t.close();
  });

  async function activate(who: keyof typeof users) {
    const res = await t.http.post('/api/tokens/activate').set(as(who)).send({});
    expect(res.status, res.text).toBe(201);
    return res.body.data as { token_id: string; lease_id: string; user_id: string; fence: number };
  }

  it('refuses every /api/ route without a token, and serves health, metrics and the OpenAPI document', async () => {
    const tokenId = randomUUID();
    const routes: Array<[string, string]> = [
      ['get', '/api/tokens'],
      ['post', '/api/tokens/activate'],
      ['get', `/api/tokens/${tokenId}`],
      ['get', `/api/tokens/${tokenId}/history`],
      ['post', `/api/tokens/${tokenId}/release`],
      ['post', `/api/tokens/${tokenId}/renew`],
      ['post', `/api/tokens/${tokenId}/validate`],
      ['post', '/api/tokens/clear'],
    ];
    for (const [method, path] of routes) {
      const res = await (method === 'get' ? t.http.get(path) : t.http.post(path).send({}));
      expect(res.status, `${method} ${path}`).toBe(401);
      expect(res.body.error.code).toBe('unauthorized');
      expect(res.headers['www-authenticate']).toBe('Bearer realm="token-lease"');
    }
    for (const path of ['/healthz', '/readyz', '/metrics', '/openapi.json']) {
      expect((await t.http.get(path)).status, path).toBe(200);
    }
  });

  it('refuses tokens it cannot verify with 401 invalid_token', async () => {
    const refused = [
      await token(users.alice, { exp: Math.floor(Date.now() / 1000) - 120 }),
      await token(users.alice, { secret: `${SECRET}-not` }),
      'not-a-jwt',
    ];
    for (const bad of refused) {
      const res = await t.http.post('/api/tokens/activate').set('Authorization', `Bearer ${bad}`).send({});
      expect(res.status).toBe(401);
      expect(res.headers['www-authenticate']).toMatch(/^Bearer realm="token-lease", error="invalid_token", error_description="/);
    }
    expect(await openUsages(t.db)).toEqual([]);
  });

  it("acts for the token's sub: user_id may be left out, and another user's is refused with 403", async () => {
    const lease = await activate('alice');
    expect(lease.user_id).toBe(users.alice);

    const forBob = await t.http.post('/api/tokens/activate').set(as('alice')).send({ user_id: users.bob });

    expect(forBob.status).toBe(403);
    expect(forBob.body.error).toMatchObject({ code: 'forbidden', details: { reason: 'not_the_caller' } });
    const same = await t.http.post('/api/tokens/activate').set(as('alice')).send({ user_id: users.alice.toUpperCase() });
    expect(same.status).toBe(200);
  });

  it("a user cannot release or renew another user's lease, and that lease stays valid", async () => {
    const lease = await activate('alice');
    const release = (body: object) => t.http.post(`/api/tokens/${lease.token_id}/release`).set(as('bob')).send(body);
    const renew = (body: object) => t.http.post(`/api/tokens/${lease.token_id}/renew`).set(as('bob')).send(body);

    expect((await release({ user_id: users.alice, lease_id: lease.lease_id })).status).toBe(403);
    expect((await renew({ user_id: users.alice, lease_id: lease.lease_id })).status).toBe(403);
    const asBob = await release({ lease_id: lease.lease_id });
    expect(asBob.status).toBe(409);
    expect(asBob.body.error.code).toBe('not_holder');
    expect((await renew({ lease_id: lease.lease_id })).body.error.code).toBe('not_holder');

    // Any authenticated caller may validate, for any user: that is how a guarded resource asks.
    const valid = await t.http
      .post(`/api/tokens/${lease.token_id}/validate`)
      .set(as('bob'))
      .send({ user_id: users.alice, fence: lease.fence });
    expect(valid.body.data).toMatchObject({ valid: true, lease_id: lease.lease_id });
    const own = await t.http.post(`/api/tokens/${lease.token_id}/release`).set(as('alice')).send({ lease_id: lease.lease_id });
    expect(own.status).toBe(200);
  });

  it('shows holders only to themselves and to read or admin callers, on every read route', async () => {
    const lease = await activate('alice');
    const view = async (who: keyof typeof users | 'key') => {
      const headers = who === 'key' ? { Authorization: `Bearer ${ADMIN_KEY}` } : as(who);
      const list = (await t.http.get('/api/tokens').set(headers)).body.data as Array<{ id: string; current_user_id: string | null }>;
      const details = (await t.http.get(`/api/tokens/${lease.token_id}`).set(headers)).body.data;
      const history = (await t.http.get(`/api/tokens/${lease.token_id}/history`).set(headers)).body.data;
      return {
        list: list.find((entry) => entry.id === lease.token_id)?.current_user_id,
        details: [details.current_user_id, details.active_usage.user_id, details.active_usage.lease_id],
        // The newest usage: this lease (earlier tests used the token too).
        history: [history.usages[0].user_id, history.usages[0].lease_id],
      };
    };
    const hidden = { list: null, details: [null, null, null], history: [null, null] };
    const shown = {
      list: users.alice,
      details: [users.alice, users.alice, lease.lease_id],
      history: [users.alice, lease.lease_id],
    };

    expect(await view('bob')).toEqual(hidden);
    expect(await view('alice')).toEqual(shown);
    expect(await view('reader')).toEqual(shown);
    expect(await view('admin')).toEqual(shown);
    expect(await view('key')).toEqual(shown);
    // Status and times stay public.
    const bobs = (await t.http.get('/api/tokens').set(as('bob'))).body.data.find((e: { id: string }) => e.id === lease.token_id);
    expect(bobs).toMatchObject({ status: 'active', expires_at: expect.any(String) });
  });

  it("shows a value's holder in its check only to them and to read callers; redeem acts for the sub", async () => {
    const key = { Authorization: `Bearer ${ADMIN_KEY}` };
    await t.http.post('/api/admin/pools').set(key).send({ name: 'valued', size: 0 });
    await t.http.post('/api/admin/pools/valued/tokens/import').set(key).set('Content-Type', 'text/plain').send('jwt-value-1\n');
    const lease = (await t.http.post('/api/pools/valued/tokens/activate').set(as('alice')).send({})).body.data;
    expect(lease.value).toBe('jwt-value-1');
    const check = async (who: keyof typeof users) =>
      (await t.http.post('/api/tokens/check').set(as(who)).send({ value: 'jwt-value-1' })).body.data;

    expect(await check('bob')).toEqual({ token_id: lease.token_id, held: true, expires_at: lease.expires_at, fence: lease.fence });
    expect((await check('alice')).user_id).toBe(users.alice);
    expect((await check('reader')).user_id).toBe(users.alice);
    const bobs = await t.http.post('/api/tokens/redeem').set(as('bob')).send({ value: 'jwt-value-1' });
    expect(bobs.status).toBe(409);
    expect(bobs.body.error.code).toBe('not_holder');
    const alices = await t.http.post('/api/tokens/redeem').set(as('alice')).send({ value: 'jwt-value-1' });
    expect(alices.status).toBe(200);
    expect(alices.body.data).toMatchObject({ user_id: users.alice, end_reason: 'redeemed' });
  });

  it('lets admin routes through with the admin scope or key only', async () => {
    expect((await t.http.post('/api/tokens/clear').set(as('alice'))).status).toBe(403);
    expect((await t.http.post('/api/tokens/clear').set(as('reader'))).status).toBe(403);
    expect((await t.http.post('/api/tokens/clear').set('Authorization', 'Bearer wrong-admin-key-0123456789')).status).toBe(401);
    expect((await t.http.post('/api/tokens/clear').set(as('admin'))).status).toBe(200);
  });

  it('sends the security headers on every JSON answer, and CORS only to allowed origins', async () => {
    for (const res of [await t.http.get('/api/tokens').set(as('alice')), await t.http.get('/api/tokens'), await t.http.get('/healthz')]) {
      expect(res.headers).toMatchObject({ 'x-content-type-options': 'nosniff', 'cache-control': 'no-store' });
      expect(res.headers['content-security-policy']?.split(/; */)).toEqual(["default-src 'none'", "frame-ancestors 'none'"]);
    }
    const allowed = await t.http.options('/api/tokens/activate').set('Origin', 'https://app.example').set('Access-Control-Request-Method', 'POST');
    expect(allowed.status).toBe(204);
    expect(allowed.headers['access-control-allow-origin']).toBe('https://app.example');
    expect(allowed.headers['access-control-allow-headers']).toMatch(/Authorization/);
    const other = await t.http.get('/api/tokens').set(as('alice')).set('Origin', 'https://evil.example');
    expect(other.headers['access-control-allow-origin']).toBeUndefined();
  });

  it('never writes a credential to the log', async () => {
    await activate('bob');
    await t.http.post('/api/tokens/activate').set('Authorization', `Bearer ${await token(users.bob, { secret: `${SECRET}x` })}`).send({});
    await t.http.post('/api/tokens/clear').set('Authorization', 'Bearer wrong-admin-key-0123456789');
    const log = lines.join('');
    expect(log).toMatch(/"msg":"request"/);
    for (const secret of [SECRET, ADMIN_KEY, 'wrong-admin-key-0123456789', ...Object.values(bearer)]) {
      expect(log).not.toContain(secret);
    }
    // Nor the signature part of any token sent.
    expect(log).not.toMatch(/eyJ[\w-]+\.[\w-]+\.[\w-]+/);
  });
});

describe('guesses at the admin key', () => {
  // TRUST_PROXY=1: each request names the address it comes from in X-Forwarded-For.
  const from = (address: string) => ({ 'X-Forwarded-For': address });
  const env = { ADMIN_API_KEY: ADMIN_KEY, ADMIN_KEY_GUESSES_PER_MINUTE: '3', TRUST_PROXY: '1', POOL_SIZE: '1' };

  it('stop being compared once an address has sent too many wrong keys, whatever route or form they take', async () => {
    const t = await startTestService({ ...env, ROLE: 'all' });
    try {
      const clear = (address: string, key: string) => t.http.post('/api/tokens/clear').set(from(address)).set('Authorization', `Bearer ${key}`);
      for (let i = 0; i < 3; i += 1) expect((await clear('198.51.100.7', `a-wrong-guess-at-the-key-000${i}`)).status).toBe(401);
      // The right key, from that address, is refused like a wrong one; from another, it works.
      expect((await clear('198.51.100.7', ADMIN_KEY)).status).toBe(401);
      expect((await clear('198.51.100.8', ADMIN_KEY)).status).toBe(200);
      // The queue board's Basic password is the same key, refused from that address too.
      const basic = `Basic ${Buffer.from(`admin:${ADMIN_KEY}`).toString('base64')}`;
      expect((await t.http.get('/admin/queues/api/queues').set(from('198.51.100.7')).set('Authorization', basic)).status).toBe(401);
      expect((await t.http.get('/admin/queues/api/queues').set(from('198.51.100.8')).set('Authorization', basic)).status).toBe(200);
      // Wrong Basic passwords count as well.
      for (let i = 0; i < 3; i += 1) {
        const wrong = `Basic ${Buffer.from(`admin:a-wrong-guess-${i}`).toString('base64')}`;
        expect((await t.http.get('/admin/queues/api/queues').set(from('198.51.100.9')).set('Authorization', wrong)).status).toBe(401);
      }
      expect((await clear('198.51.100.9', ADMIN_KEY)).status).toBe(401);
    } finally {
      await t.close();
    }
  });

  it('under AUTH_MODE=jwt, count invalid JWTs on any route, and leave the address its valid ones', async () => {
    const t = await startTestService({ ...env, AUTH_MODE: 'jwt', JWT_SECRET: SECRET });
    try {
      const address = '203.0.113.50';
      for (let i = 0; i < 3; i += 1) {
        expect((await t.http.get('/api/tokens').set(from(address)).set('Authorization', `Bearer not-a-jwt-${i}`)).status).toBe(401);
      }
      const admin = (at: string) => t.http.post('/api/tokens/clear').set(from(at)).set('Authorization', `Bearer ${ADMIN_KEY}`);
      expect((await admin(address)).status).toBe(401);
      expect((await admin('203.0.113.51')).status).toBe(200);
      const user = await token(randomUUID());
      expect((await t.http.get('/api/tokens').set(from(address)).set('Authorization', `Bearer ${user}`)).status).toBe(200);
    } finally {
      await t.close();
    }
  });

  it('are counted per address and minute, and compared again once the minute is over', async () => {
    const { createGuessGuard } = await import('../src/http/guesses.js');
    let now = 1_000_000;
    const guard = createGuessGuard({ perMinute: 2, log: pino({ level: 'silent' }), now: () => now });
    if (guard === undefined) throw new Error('no guard');
    const req = (ip: string) => ({ ip });
    expect(guard.mayCompare(req('192.0.2.1'))).toBe(true);
    guard.refused(req('192.0.2.1'));
    expect(guard.mayCompare(req('192.0.2.1'))).toBe(true);
    guard.refused(req('192.0.2.1'));
    expect(guard.mayCompare(req('192.0.2.1'))).toBe(false);
    expect(guard.mayCompare(req('192.0.2.2'))).toBe(true);
    now += 60_000;
    expect(guard.mayCompare(req('192.0.2.1'))).toBe(true);
    expect(createGuessGuard({ perMinute: 0, log: pino({ level: 'silent' }) })).toBeUndefined();
  });
});
