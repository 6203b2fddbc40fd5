import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createTestDatabase, spawnService, type TestDatabase } from './helpers.js';
import type { ServiceProcess } from './harness/processes.js';
import { waitFor } from './harness/waitFor.js';
import { testRedisPrefix } from './redis.js';

// AUTH_MODE=api_key against the real service, as two API processes on one database: clients
// made and revoked through the admin routes, their keys, scopes, and what the logs keep.

const ADMIN_KEY = 'clients-test-admin-key-0123456789';

interface Answer {
  status: number;
  headers: Headers;
  body: { data?: any; error?: { code: string; details: Record<string, unknown> } };
}

describe('AUTH_MODE=api_key', () => {
  let db: TestDatabase;
  const processes: ServiceProcess[] = [];
  let a: string;
  let b: string;
  /** Every key made in this file, to look for in the logs at the end. */
  const keys: string[] = [];

  beforeAll(async () => {
    db = await createTestDatabase();
    const env = {
      DATABASE_URL: db.url,
      REDIS_PREFIX: testRedisPrefix(inject('runId')),
      ROLE: 'api',
      AUTH_MODE: 'api_key',
      ADMIN_API_KEY: ADMIN_KEY,
      POOL_SIZE: '20',
      LEASE_TTL_MS: '60000',
      LOG_LEVEL: 'debug',
    };
    processes.push(spawnService(env), spawnService(env));
    [a, b] = (await Promise.all(processes.map((p) => p.ready()))) as [string, string];
  });
  afterAll(async () => {
    await Promise.all(processes.map((p) => p.stop()));
    await db.drop();
  });

  async function call(base: string, method: string, path: string, key: string | undefined, body?: object): Promise<Answer> {
    const res = await fetch(`${base}${path}`, {
      method,
      headers: {
        ...(key === undefined ? {} : { authorization: `Bearer ${key}` }),
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, headers: res.headers, body: text === '' ? {} : (JSON.parse(text) as Answer['body']) };
  }

  async function makeClient(scopes: string[], name = `client ${randomUUID().slice(0, 8)}`) {
    const res = await call(a, 'POST', '/api/admin/clients', ADMIN_KEY, { name, scopes });
    expect(res.status, JSON.stringify(res.body)).toBe(201);
    const data = res.body.data as { id: string; name: string; scopes: string[]; key: string; created_at: string };
    keys.push(data.key);
    return data;
  }

  const activate = (base: string, key: string, userId = randomUUID()) =>
    call(base, 'POST', '/api/tokens/activate', key, { user_id: userId });

  it("makes a client whose key works at once on every process, shown once and listed without it", async () => {
    const client = await makeClient(['lease'], 'GPU scheduler');

    expect(client).toMatchObject({ name: 'GPU scheduler', scopes: ['lease'] });
    // 256 random bits, base64url, after a prefix that says what it is.
    expect(client.key).toMatch(/^tlk_[A-Za-z0-9_-]{43}$/);
    expect((await activate(a, client.key)).status).toBe(201);
    expect((await activate(b, client.key)).status).toBe(201);

    const listed = await call(b, 'GET', '/api/admin/clients', ADMIN_KEY);
    expect(listed.status).toBe(200);
    expect(JSON.stringify(listed.body)).not.toContain(client.key);
    const entry = (listed.body.data as Array<Record<string, unknown>>).find((c) => c.id === client.id);
    expect(Object.keys(entry ?? {}).sort()).toEqual(['created_at', 'id', 'last_used_at', 'name', 'scopes']);
    // Written after the answer, at most once a minute per client and process.
    await waitFor(async () => {
      const again = await call(a, 'GET', '/api/admin/clients', ADMIN_KEY);
      return (again.body.data as Array<{ id: string; last_used_at: string | null }>).find((c) => c.id === client.id)?.last_used_at ?? false;
    }, { what: 'last_used_at to be written' });
  });

  it("refuses a revoked key in both processes from the revocation's answer on, and lists it no more", async () => {
    const client = await makeClient(['lease']);
    // Both processes have verified it, and keep it.
    expect((await activate(a, client.key)).status).toBe(201);
    expect((await activate(b, client.key)).status).toBe(201);

    const revoked = await call(a, 'DELETE', `/api/admin/clients/${client.id}`, ADMIN_KEY);
    expect(revoked.status).toBe(200);
    expect(revoked.body.data).toMatchObject({ id: client.id, revoked_at: expect.any(String) });

    // The answer waited until both processes had dropped the key (docs/security.md).
    for (const base of [b, a]) {
      const res = await activate(base, client.key);
      expect(res.status, base).toBe(401);
      expect(res.body.error?.code).toBe('unauthorized');
      expect(res.headers.get('www-authenticate')).toMatch(/error="invalid_token"/);
    }
    const listed = await call(b, 'GET', '/api/admin/clients', ADMIN_KEY);
    expect((listed.body.data as Array<{ id: string }>).map((c) => c.id)).not.toContain(client.id);
    // Revoking again answers the same; an unknown client is 404.
    const again = await call(b, 'DELETE', `/api/admin/clients/${client.id}`, ADMIN_KEY);
    expect(again).toMatchObject({ status: 200, body: { data: revoked.body.data } });
    expect((await call(b, 'DELETE', `/api/admin/clients/${randomUUID()}`, ADMIN_KEY)).status).toBe(404);
  });

  it('refuses no key, a malformed or unknown key and a JWT with 401', async () => {
    const forged = `tlk_${'A'.repeat(43)}`;
    const jwt = 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl';
    expect((await activate(a, undefined as unknown as string)).status).toBe(401);
    for (const key of [forged, jwt, 'tlk_short']) {
      const res = await activate(a, key);
      expect(res.status, key).toBe(401);
      expect(res.headers.get('www-authenticate')).toMatch(/^Bearer realm="token-lease", error="invalid_token"/);
    }
  });

  it('enforces scopes: lease for the lease routes, read to see holders, admin for admin routes', async () => {
    const leaser = await makeClient(['lease']);
    const reader = await makeClient(['read']);
    const admin = await makeClient(['admin']);
    const user = randomUUID();
    const lease = (await activate(a, leaser.key, user)).body.data as { token_id: string; lease_id: string; fence: number };

    // read: no lease route, but every holder on every read route.
    for (const [path, body] of [
      ['/api/tokens/activate', { user_id: randomUUID() }],
      [`/api/tokens/${lease.token_id}/validate`, { user_id: user, fence: lease.fence }],
      [`/api/tokens/${lease.token_id}/renew`, { user_id: user, lease_id: lease.lease_id }],
      [`/api/tokens/${lease.token_id}/release`, { user_id: user, lease_id: lease.lease_id }],
    ] as const) {
      const res = await call(b, 'POST', path, reader.key, body);
      expect(res.status, path).toBe(403);
      expect(res.body.error).toMatchObject({ code: 'forbidden', details: { reason: 'missing_scope', scope: 'lease' } });
    }
    const holderOf = async (key: string) =>
      ((await call(b, 'GET', '/api/tokens', key)).body.data as Array<{ id: string; current_user_id: string | null }>).find(
        (t) => t.id === lease.token_id,
      )?.current_user_id;
    expect(await holderOf(reader.key)).toBe(user);
    expect(await holderOf(admin.key)).toBe(user);
    // lease: acts for any user it names, validates any, but sees no holder and no admin route.
    expect(await holderOf(leaser.key)).toBeNull();
    const details = (await call(b, 'GET', `/api/tokens/${lease.token_id}`, leaser.key)).body.data;
    expect(details.active_usage).toMatchObject({ user_id: null, lease_id: null });
    const valid = await call(b, 'POST', `/api/tokens/${lease.token_id}/validate`, leaser.key, { user_id: user, fence: lease.fence });
    expect(valid.body.data).toMatchObject({ valid: true, lease_id: lease.lease_id });
    for (const [method, path] of [
      ['POST', '/api/tokens/clear'],
      ['GET', '/api/admin/clients'],
    ] as const) {
      expect((await call(a, method, path, leaser.key)).status, path).toBe(403);
      expect((await call(a, method, path, reader.key)).status, path).toBe(403);
    }
    // A lease client must name the user: it is nobody itself.
    const nobody = await call(a, 'POST', '/api/tokens/activate', leaser.key, {});
    expect(nobody.status).toBe(422);
    // admin: admin routes, lease routes and every holder.
    const made = await call(a, 'POST', '/api/admin/clients', admin.key, { name: 'made by a client', scopes: ['read'] });
    expect(made.status).toBe(201);
    keys.push((made.body.data as { key: string }).key);
    expect((await activate(a, admin.key)).status).toBe(201);
    expect((await call(a, 'POST', '/api/tokens/clear', admin.key)).status).toBe(200);
  });

  it('refuses a client body that is not a name and known scopes', async () => {
    for (const body of [{ name: '', scopes: ['lease'] }, { name: 'x', scopes: [] }, { name: 'x', scopes: ['write'] }, { scopes: ['lease'] }]) {
      const res = await call(a, 'POST', '/api/admin/clients', ADMIN_KEY, body);
      expect(res.status, JSON.stringify(body)).toBe(422);
    }
  });

  it("lets no client release or renew another client's lease, which stays valid; admin may", async () => {
    const mine = await makeClient(['lease']);
    const theirs = await makeClient(['lease']);
    const admin = await makeClient(['lease', 'admin']);
    const user = randomUUID();
    const made = await activate(a, mine.key, user);
    expect(made.status).toBe(201);
    const lease = made.body.data as { token_id: string; lease_id: string; fence: number; expires_at: string };
    const act = (base: string, key: string, what: 'release' | 'renew') =>
      call(base, 'POST', `/api/tokens/${lease.token_id}/${what}`, key, { user_id: user, lease_id: lease.lease_id });

    for (const what of ['release', 'renew'] as const) {
      const res = await act(b, theirs.key, what);
      expect(res.status, what).toBe(403);
      expect(res.body.error).toMatchObject({ code: 'forbidden', details: { reason: 'another_client' } });
    }
    const open = await db.pool.query<{ client_id: string; expires_at: Date }>('SELECT client_id, expires_at FROM leases WHERE id = $1', [lease.lease_id]);
    expect(open.rows).toEqual([{ client_id: mine.id, expires_at: new Date(lease.expires_at) }]);
    const valid = await call(a, 'POST', `/api/tokens/${lease.token_id}/validate`, theirs.key, { user_id: user, fence: lease.fence });
    expect(valid.body.data).toMatchObject({ valid: true, lease_id: lease.lease_id, expires_at: lease.expires_at });

    expect((await act(b, mine.key, 'renew')).status).toBe(200);
    expect((await act(a, admin.key, 'release')).status).toBe(200);
    // Ended: its maker is kept in the history, and another client learns nothing of it.
    const ended = await db.pool.query<{ client_id: string; end_reason: string }>('SELECT client_id, end_reason FROM usages WHERE id = $1', [lease.lease_id]);
    expect(ended.rows).toEqual([{ client_id: mine.id, end_reason: 'released' }]);
    expect((await act(b, theirs.key, 'release')).status).toBe(403);
    const retried = await act(a, mine.key, 'release');
    expect(retried.status).toBe(200);
    expect(retried.body.data).toMatchObject({ lease_id: lease.lease_id, end_reason: 'released' });

    // The admin key may end a client's lease too.
    const another = (await activate(a, mine.key)).body.data as { token_id: string; lease_id: string; user_id: string };
    const byKey = await call(b, 'POST', `/api/tokens/${another.token_id}/release`, ADMIN_KEY, { user_id: another.user_id, lease_id: another.lease_id });
    expect(byKey.status).toBe(200);
  });

  it('never writes a key to the log', () => {
    expect(keys.length).toBeGreaterThan(3);
    const log = processes.map((p) => JSON.stringify(p.logs)).join('\n');
    expect(log).toMatch(/"msg":"request"/);
    expect(log).toMatch(/api\/admin\/clients/);
    for (const key of [ADMIN_KEY, ...keys]) expect(log).not.toContain(key);
    expect(log).not.toMatch(/tlk_[A-Za-z0-9_-]{20}/);
    // Every revocation was acknowledged by both processes, none waited out its time.
    expect(log).not.toContain('did not acknowledge');
  });
});
