import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DELIVERY_QUEUE } from '../src/jobs/deliveries.js';
import { RELEASE_QUEUE } from '../src/jobs/queue.js';
import { elsewhere, launchChromium, watch } from './browser.js';
import { newUserId, startTestService, type TestService } from './helpers.js';

// The queue board at /admin/queues: admin credentials (Bearer, or Basic for a browser),
// read-only unless QUEUE_BOARD_WRITE=true, and a page that loads nothing from another origin.

const ADMIN_KEY = 'queue-board-admin-key-0123456789';
const basic = (password: string, user = 'admin') => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
const RETRY_FAILED = `/admin/queues/api/queues/${RELEASE_QUEUE}/retry/failed`;

describe('the queue board', () => {
  let t: TestService;

  beforeAll(async () => {
    t = await startTestService({ POOL_SIZE: '2', ADMIN_API_KEY: ADMIN_KEY });
  });
  afterAll(async () => {
    await t.close();
  });

  it('asks for Basic credentials, refuses a wrong key, and lets the admin key in', async () => {
    for (const auth of [undefined, basic('wrong-admin-key-0123456789'), basic(''), 'Bearer wrong-admin-key-0123456789', 'Basic !!!']) {
      const request = t.http.get('/admin/queues');
      const res = await (auth === undefined ? request : request.set('Authorization', auth));
      expect(res.status, auth).toBe(401);
      expect(res.headers['www-authenticate']).toBe('Basic realm="token-lease"');
      expect(res.body.error.code).toBe('unauthorized');
    }
    for (const auth of [basic(ADMIN_KEY), basic(ADMIN_KEY, ''), `Bearer ${ADMIN_KEY}`]) {
      const page = await t.http.get('/admin/queues').set('Authorization', auth);
      expect(page.status, auth).toBe(200);
      expect(page.headers['content-type']).toMatch(/^text\/html/);
      expect(page.text).not.toContain('fonts.googleapis.com');
      expect(page.headers['content-security-policy']).toContain("script-src 'self'");
      expect(page.headers['x-powered-by']).toBeUndefined();
    }
    const queues = await t.http.get('/admin/queues/api/queues').set('Authorization', basic(ADMIN_KEY));
    expect(queues.status).toBe(200);
    const listed = (queues.body as { queues: Array<{ name: string; readOnlyMode: boolean }> }).queues;
    expect(listed.map((q) => q.name).sort()).toEqual([RELEASE_QUEUE, DELIVERY_QUEUE].sort());
    expect(listed.every((q) => q.readOnlyMode)).toBe(true);
  });

  it('refuses writes with 405 while read-only', async () => {
    const key = { Authorization: basic(ADMIN_KEY) };
    for (const [method, path] of [
      ['put', RETRY_FAILED],
      ['put', `/admin/queues/api/queues/${RELEASE_QUEUE}/clean/completed`],
      ['put', `/admin/queues/api/queues/${RELEASE_QUEUE}/pause`],
      ['post', `/admin/queues/api/queues/${RELEASE_QUEUE}/add`],
    ] as const) {
      const res = await t.http[method](path).set(key).send({});
      expect(res.status, `${method} ${path}`).toBe(405);
      expect(res.body.error.code).toBe('method_not_allowed');
    }
    // Credentials first: without them, a write is 401 like anything else.
    expect((await t.http.put(RETRY_FAILED)).status).toBe(401);
  });

  it('shows both queues in Chromium, with no console error and nothing from another origin', async () => {
    const browser: Browser = await launchChromium();
    try {
      const context = await browser.newContext({ httpCredentials: { username: 'admin', password: ADMIN_KEY } });
      // The page polls its API: a poll in flight when the test moves to another page is aborted.
      const watched = watch(await context.newPage(), (url) => new URL(url).pathname.startsWith('/admin/queues/api/'));
      const { page } = watched;
      await page.goto(`${t.url}/admin/queues`);
      await page.getByText(RELEASE_QUEUE).first().waitFor();
      await page.getByText(DELIVERY_QUEUE).first().waitFor();
      // A lease's release job, delayed until its expiry, in the release queue's page.
      const lease = (await t.http.post('/api/tokens/activate').send({ user_id: newUserId() })).body.data;
      const jobId = `release-${lease.lease_id as string}`;
      const delayed = `/admin/queues/api/queues?activeQueue=${RELEASE_QUEUE}&status=delayed`;
      await expect.poll(async () => (await t.http.get(delayed).set('Authorization', basic(ADMIN_KEY))).text).toContain(jobId);
      await page.goto(`${t.url}/admin/queues/queue/${RELEASE_QUEUE}?status=delayed`);
      await page.getByText(jobId).first().waitFor();

      expect(watched.errors).toEqual([]);
      expect(watched.failed).toEqual([]);
      expect(elsewhere(watched, t.url)).toEqual([]);
      expect(watched.requests.filter((r) => r.method !== 'GET')).toEqual([]);
      await context.close();
    } finally {
      await browser.close();
    }
  });
});

describe('the queue board with QUEUE_BOARD_WRITE=true, and in other modes and roles', () => {
  it('lets the admin act on jobs', async () => {
    const t = await startTestService({ POOL_SIZE: '2', ADMIN_API_KEY: ADMIN_KEY, QUEUE_BOARD_WRITE: 'true' });
    try {
      const queues = await t.http.get('/admin/queues/api/queues').set('Authorization', basic(ADMIN_KEY));
      expect((queues.body as { queues: Array<{ readOnlyMode: boolean }> }).queues.every((q) => !q.readOnlyMode)).toBe(true);
      expect((await t.http.put(RETRY_FAILED).set('Authorization', basic(ADMIN_KEY)).send({})).status).toBe(200);
      expect((await t.http.put(RETRY_FAILED).set('Authorization', basic('wrong-admin-key-0123456789')).send({})).status).toBe(401);
    } finally {
      await t.close();
    }
  });

  it('takes an API client with the admin scope in AUTH_MODE=api_key, and no other client', async () => {
    const t = await startTestService({ POOL_SIZE: '2', ADMIN_API_KEY: ADMIN_KEY, AUTH_MODE: 'api_key' });
    try {
      const make = async (scopes: string[]) =>
        (await t.http.post('/api/admin/clients').set('Authorization', `Bearer ${ADMIN_KEY}`).send({ name: scopes.join(' '), scopes })).body.data
          .key as string;
      const [admin, reader] = [await make(['admin']), await make(['read', 'lease'])];
      expect((await t.http.get('/admin/queues').set('Authorization', `Bearer ${admin}`)).status).toBe(200);
      expect((await t.http.get('/admin/queues').set('Authorization', `Bearer ${reader}`)).status).toBe(403);
      const unknown = await t.http.get('/admin/queues').set('Authorization', 'Bearer tlk_unknown');
      expect(unknown.status).toBe(401);
      expect(unknown.headers['www-authenticate']).toBe('Basic realm="token-lease"');
      expect((await t.http.get('/admin/queues').set('Authorization', basic(ADMIN_KEY))).status).toBe(200);
    } finally {
      await t.close();
    }
  });

  it('spends the admin budget on refusals only: the page polls, guesses at the key are limited', async () => {
    const t = await startTestService({ POOL_SIZE: '2', ADMIN_API_KEY: ADMIN_KEY, ADMIN_RATE_LIMIT_PER_MINUTE: '3' });
    try {
      const get = (password: string) => t.http.get('/admin/queues/api/queues').set('Authorization', basic(password));
      for (let i = 0; i < 6; i++) expect((await get(ADMIN_KEY)).status).toBe(200);
      for (let i = 0; i < 3; i++) expect((await get('wrong-admin-key-0123456789')).status).toBe(401);
      expect((await get('wrong-admin-key-0123456789')).status).toBe(429);
      // The guesses spent their address's budget, shared with the admin routes; the admin key has its own.
      expect((await t.http.post('/api/tokens/clear').set('Authorization', 'Bearer wrong-admin-key-0123456789')).status).toBe(429);
      expect((await get(ADMIN_KEY)).status).toBe(200);
    } finally {
      await t.close();
    }
  });

  it('is not served by a worker process', async () => {
    const t = await startTestService({ POOL_SIZE: '2', ADMIN_API_KEY: ADMIN_KEY, ROLE: 'worker' });
    try {
      expect((await t.http.get('/admin/queues').set('Authorization', basic(ADMIN_KEY))).status).toBe(404);
    } finally {
      await t.close();
    }
  });
});
