import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backdate, newUserId, openUsages, startTestService, usagesOf, type TestService } from './helpers.js';

const ADMIN_KEY = 'test-admin-key-0123456789';

describe('POST /api/tokens/clear', () => {
  let t: TestService;

  beforeAll(async () => {
    t = await startTestService({ POOL_SIZE: '10', ADMIN_API_KEY: ADMIN_KEY });
  });
  afterAll(async () => {
    await t.close();
  });

  const clear = () => t.http.post('/api/tokens/clear').set('Authorization', `Bearer ${ADMIN_KEY}`);

  it('clears 0 on an idle pool', async () => {
    const res = await clear();
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ data: { cleared_tokens: 0 } });
  });

  it('ends every active lease as cleared and frees every token', async () => {
    const users = [newUserId(), newUserId(), newUserId()];
    for (const user_id of users) {
      expect((await t.http.post('/api/tokens/activate').send({ user_id })).status).toBe(201);
    }

    const res = await clear();

    expect(res.body).toEqual({ data: { cleared_tokens: 3 } });
    expect(await openUsages(t.db)).toEqual([]);
    const ended = await usagesOf(t.db, 'user_id = ANY($1)', [users]);
    expect(ended.map((u) => u.end_reason)).toEqual(['cleared', 'cleared', 'cleared']);
    const list = await t.http.get('/api/tokens');
    expect(list.body.data.every((x: { status: string }) => x.status === 'available')).toBe(true);
  });

  it('ends a lease that had already run out as expired and does not count it', async () => {
    const late = (await t.http.post('/api/tokens/activate').send({ user_id: newUserId() })).body.data;
    await t.http.post('/api/tokens/activate').send({ user_id: newUserId() });
    await backdate(t.db, 10 * 60_000, late.lease_id);

    const res = await clear();

    expect(res.body.data.cleared_tokens).toBe(1);
    const [row] = await usagesOf(t.db, 'id = $1', [late.lease_id]);
    expect(row?.end_reason).toBe('expired');
  });

  it('lets the same user lease again after a clear', async () => {
    const userId = newUserId();
    await t.http.post('/api/tokens/activate').send({ user_id: userId });
    await clear();
    const again = await t.http.post('/api/tokens/activate').send({ user_id: userId });
    expect(again.status).toBe(201);
  });

  describe('admin access', () => {
    it('answers 401 without credentials, asking for a bearer token', async () => {
      const res = await t.http.post('/api/tokens/clear');
      expect(res.status).toBe(401);
      expect(res.body.error.code).toBe('unauthorized');
      expect(res.headers['www-authenticate']).toMatch(/^Bearer/);
    });

    it('checks the key before anything it was sent, and reads no body', async () => {
      for (const [type, body] of [
        ['application/json', '{bad'],
        ['text/plain', 'clear'],
        ['application/json', JSON.stringify({ pad: 'x'.repeat(20_000) })],
      ] as const) {
        const res = await t.http.post('/api/tokens/clear').set('Content-Type', type).send(body);
        expect(res.status, `${type} ${body.slice(0, 10)}`).toBe(401);
      }
      const res = await t.http
        .post('/api/tokens/clear')
        .set('Authorization', `Bearer ${ADMIN_KEY}`)
        .set('Content-Type', 'text/plain')
        .send('whatever');
      expect(res.status).toBe(200);
    });

    it('answers 401 for a malformed Authorization header', async () => {
      const res = await t.http.post('/api/tokens/clear').set('Authorization', ADMIN_KEY);
      expect(res.status).toBe(401);
    });

    it.each([
      ['a wrong key', 'test-admin-key-0123456780'],
      ['a prefix of the key', ADMIN_KEY.slice(0, 10)],
      ['a longer key', `${ADMIN_KEY}x`],
    ])('answers 401 for %s and clears nothing', async (_what, key) => {
      await t.http.post('/api/tokens/activate').send({ user_id: newUserId() });
      const before = await openUsages(t.db);

      const res = await t.http.post('/api/tokens/clear').set('Authorization', `Bearer ${key}`);

      expect(res.status).toBe(401);
      expect(res.body.error.code).toBe('unauthorized');
      expect(res.headers['www-authenticate']).toMatch(/^Bearer realm="token-lease", error="invalid_token"/);
      expect(await openUsages(t.db)).toEqual(before);
    });

    it('does not guard the user routes', async () => {
      expect((await t.http.get('/api/tokens')).status).toBe(200);
    });
  });
});

describe('POST /api/tokens/clear without ADMIN_API_KEY', () => {
  it('is open', async () => {
    const t = await startTestService({ POOL_SIZE: '2' });
    try {
      await t.http.post('/api/tokens/activate').send({ user_id: newUserId() });
      const res = await t.http.post('/api/tokens/clear');
      expect(res.body).toEqual({ data: { cleared_tokens: 1 } });
    } finally {
      await t.close();
    }
  });
});
