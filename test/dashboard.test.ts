import { mkdtempSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { elsewhere, launchChromium, watch, type Watched } from './browser.js';
import { newUserId, startTestService, type TestService } from './helpers.js';

// The dashboard in Chromium (test/browser.ts). One browser for the file; each test opens its own
// page and watches every request it makes.

const ADMIN_KEY = 'dashboard-admin-key-0123456789';
const axePath = createRequire(import.meta.url).resolve('axe-core/axe.min.js');
const shots = mkdtempSync(join(tmpdir(), 'tl-dashboard-'));

describe('the dashboard in a browser', () => {
  let t: TestService;
  let browser: Browser;
  let streamServed = false;

  beforeAll(async () => {
    t = await startTestService({ POOL_SIZE: '24', ADMIN_API_KEY: ADMIN_KEY, LEASE_TTL_MS: '600000' });
    const big = await t.http.post('/api/admin/pools').set('Authorization', `Bearer ${ADMIN_KEY}`).send({ name: 'big', size: 10_000 });
    expect(big.status).toBe(201);
    streamServed = Boolean((await t.http.get('/openapi.json')).body.paths['/api/events/stream']);
    browser = await launchChromium();
    console.log(`dashboard screenshots: ${shots}`);
  });
  afterAll(async () => {
    await browser.close();
    await t.close();
  });

  async function open(width = 1280, options: { bypassCSP?: boolean } = {}): Promise<Watched> {
    const context = await browser.newContext({ viewport: { width, height: 900 }, ...options });
    const page = await context.newPage();
    // A page closed while its stream was open aborts that request: not a failure.
    const watched = watch(page, (url) => url.endsWith('/api/events/stream'));
    await page.goto(`${t.url}/dashboard`);
    await page.locator('[data-token-id]').first().waitFor();
    return watched;
  }

  const cell = (page: Page, id: string) => page.locator(`[data-token-id="${id}"]`);

  it('loads without console errors, failed requests, other origins or admin calls, and fits 390 px', async () => {
    const desktop = await open();
    const { page } = desktop;
    await expect.poll(() => page.locator('[data-token-id]').count()).toBe(24);
    // Only the token cells carry the attributes, each with one of the three states.
    expect(await page.locator('[data-status]').count()).toBe(24);
    expect(await page.locator('[data-status="available"]').count()).toBe(24);
    await page.locator('#chart-held canvas').waitFor();
    await page.screenshot({ path: join(shots, 'desktop.png'), fullPage: true });

    const phone = await open(390);
    await phone.page.locator('#chart-held canvas').waitFor();
    // Page functions are given as strings: the tests are compiled without the DOM's types.
    const sideways = await phone.page.evaluate('document.documentElement.scrollWidth - document.documentElement.clientWidth');
    expect(sideways).toBe(0);
    await phone.page.screenshot({ path: join(shots, 'phone.png'), fullPage: true });

    for (const w of [desktop, phone]) {
      expect(w.errors).toEqual([]);
      expect(w.failed).toEqual([]);
      expect(elsewhere(w, t.url)).toEqual([]);
      expect(w.requests.filter((r) => r.url.includes('/api/admin/') || r.method !== 'GET' || r.auth)).toEqual([]);
      await w.page.context().close();
    }
  });

  it('shows a lease activated through the API as active within a second, and as available after release', async (ctx) => {
    // Live updates follow GET /api/events/stream (docs/events.md); without it there is nothing to follow.
    if (!streamServed) ctx.skip('this build serves no GET /api/events/stream');
    const { page } = await open();
    await expect.poll(() => page.locator('#live').textContent()).toBe('live');
    const user = newUserId();
    const lease = (await t.http.post('/api/tokens/activate').send({ user_id: user })).body.data;
    await expect.poll(() => cell(page, lease.token_id).getAttribute('data-status'), { timeout: 1_000 }).toBe('active');
    await t.http.post(`/api/tokens/${lease.token_id}/release`).send({ user_id: user, lease_id: lease.lease_id });
    await expect.poll(() => cell(page, lease.token_id).getAttribute('data-status'), { timeout: 1_000 }).toBe('available');
    await page.context().close();
  });

  it("opens a token's history, by mouse and by keyboard", async () => {
    const user = newUserId();
    const lease = (await t.http.post('/api/tokens/activate').send({ user_id: user })).body.data;
    await t.http.post(`/api/tokens/${lease.token_id}/release`).send({ user_id: user, lease_id: lease.lease_id });
    const { page } = await open();
    await cell(page, lease.token_id).click();
    const rows = page.locator('#history tbody tr');
    await expect.poll(() => rows.first().textContent()).toContain('released');

    // Keyboard: Tab reaches the grid once, arrows move, Enter opens.
    await page.locator('[data-token-id]').first().focus();
    await page.keyboard.press('ArrowRight');
    const focused = await page.evaluate('document.activeElement.dataset.tokenId');
    expect(focused).toBe(await page.locator('[data-token-id]').nth(1).getAttribute('data-token-id'));
    await page.keyboard.press('Enter');
    await expect.poll(() => page.locator('#token-title').textContent()).toBe('Token 2');
    await page.context().close();
  });

  it('draws the charts from GET /api/stats', async () => {
    const { page, requests } = await open();
    await page.locator('#chart-counts canvas').waitFor();
    expect(requests.some((r) => new URL(r.url).pathname === '/api/stats')).toBe(true);
    await expect.poll(() => page.locator('#stats-summary').textContent()).toMatch(/In the last hour: \d+ activations/);
    await page.context().close();
  });

  it('asks for credentials before the admin actions, and clears the pool with them', async () => {
    const lease = (await t.http.post('/api/tokens/activate').send({ user_id: newUserId() })).body.data;
    const { page, requests } = await open();
    expect(await page.locator('#admin').isVisible()).toBe(false);
    expect(await page.locator('#clear').isVisible()).toBe(false);
    await page.getByLabel('Bearer credential').fill(ADMIN_KEY);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('button', { name: 'Clear the pool…' }).click();
    await page.getByRole('button', { name: 'Yes, end every lease of this pool' }).click();
    await expect.poll(() => page.locator('#status').textContent()).toMatch(/^Cleared \d+ leases of default\.$/);
    await expect.poll(() => cell(page, lease.token_id).getAttribute('data-status')).toBe('available');
    expect((await t.http.get(`/api/tokens/${lease.token_id}`)).body.data.status).toBe('available');
    // The credential went in the Authorization header only, never in a URL.
    const clear = requests.find((r) => r.url.endsWith('/api/pools/default/tokens/clear'));
    expect(clear).toMatchObject({ method: 'POST', auth: true });
    expect(requests.some((r) => r.url.includes(ADMIN_KEY))).toBe(false);
    // Retire, where the service has the route: the cell turns retired.
    const retiring = (await t.http.get('/api/tokens')).body.data.find((x: { status: string }) => x.status === 'available').id;
    await cell(page, retiring).click();
    await page.getByRole('button', { name: 'Retire this token' }).click();
    await expect.poll(() => cell(page, retiring).getAttribute('data-status')).toBe('retired');
    expect((await t.http.get(`/api/tokens/${retiring}`)).body.data.status).toBe('retired');
    const kept = await page.evaluate('JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }) + document.cookie');
    expect(kept).not.toContain(ADMIN_KEY);
    await page.context().close();
  });

  it('asks for a credential first when the service wants one, and then shows holders', async () => {
    const keyed = await startTestService({ POOL_SIZE: '4', ADMIN_API_KEY: ADMIN_KEY, AUTH_MODE: 'api_key' });
    try {
      const made = await keyed.http.post('/api/admin/clients').set('Authorization', `Bearer ${ADMIN_KEY}`).send({ name: 'viewer', scopes: ['read'] });
      const user = newUserId();
      await keyed.http.post('/api/tokens/activate').set('Authorization', `Bearer ${ADMIN_KEY}`).send({ user_id: user });
      const context = await browser.newContext();
      const page = await context.newPage();
      const sent: string[] = [];
      page.on('request', (r) => {
        if (r.url().includes('/api/')) sent.push(`${r.method()} ${new URL(r.url()).pathname} ${r.headers().authorization === undefined ? 'anonymous' : 'bearer'}`);
      });
      await page.goto(`${keyed.url}/dashboard`);
      await expect.poll(() => page.locator('#signin-why').textContent()).toContain('asks for a credential');
      expect(await page.locator('[data-token-id]').count()).toBe(0);
      await page.getByLabel('Bearer credential').fill(made.body.data.key);
      await page.getByRole('button', { name: 'Sign in' }).click();
      await expect.poll(() => page.locator('[data-status="active"]').count()).toBe(1);
      expect(await page.locator('[data-status="active"]').getAttribute('aria-label')).toContain(user);
      // A read credential: no admin actions.
      expect(await page.locator('#admin').isVisible()).toBe(false);
      // Before the credential, only the pool list was asked for.
      expect(sent[0]).toBe('GET /api/pools anonymous');
      expect(sent.slice(1).every((line) => line.endsWith(' bearer'))).toBe(true);
      await context.close();
    } finally {
      await keyed.close();
    }
  });

  it('renders a pool of 10,000 tokens and stays responsive', async () => {
    const { page } = await open();
    await page.getByLabel('Pool', { exact: true }).selectOption('big');
    await expect.poll(() => page.locator('[data-token-id]').count(), { timeout: 20_000 }).toBe(10_000);
    const last = page.locator('[data-token-id]').last();
    await last.click();
    await expect.poll(() => page.locator('#token-title').textContent()).toBe('Token 10000');
    await expect.poll(() => page.locator('#history tbody').textContent()).toContain('Never leased.');
    await page.screenshot({ path: join(shots, 'big-pool.png') });
    await page.context().close();
  });

  it('has no accessibility violations of serious or critical impact', async () => {
    // axe is injected by the test, so this page is opened without the page's CSP.
    for (const width of [1280, 390]) {
      const { page } = await open(width, { bypassCSP: true });
      await page.locator('#chart-held canvas').waitFor();
      await page.locator('[data-token-id]').first().click();
      await page.addScriptTag({ path: axePath });
      const violations: Array<{ id: string; impact: string; nodes: number }> = await page.evaluate(
        'axe.run().then((r) => r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length })))',
      );
      expect(violations.filter((v) => v.impact === 'serious' || v.impact === 'critical')).toEqual([]);
      await page.context().close();
    }
  });
});
