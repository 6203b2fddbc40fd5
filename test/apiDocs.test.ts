import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { elsewhere, launchChromium, watch } from './browser.js';
import { startTestService, type TestService } from './helpers.js';

// GET /docs: swagger-ui, served by the service, rendering GET /openapi.json in Chromium.

const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];

describe('the API reference at /docs', () => {
  let t: TestService;
  let browser: Browser;

  beforeAll(async () => {
    t = await startTestService({ POOL_SIZE: '2' });
    browser = await launchChromium();
  });
  afterAll(async () => {
    await browser.close();
    await t.close();
  });

  it('renders every operation of /openapi.json, with no console error and nothing from another origin', async () => {
    const document = (await t.http.get('/openapi.json')).body as { paths: Record<string, Record<string, unknown>> };
    const operations = Object.entries(document.paths)
      .flatMap(([path, item]) => Object.keys(item).filter((key) => METHODS.includes(key)).map((method) => `${method.toUpperCase()} ${path}`))
      .sort();
    expect(operations.length).toBeGreaterThan(10);

    const context = await browser.newContext();
    const watched = watch(await context.newPage());
    const { page } = watched;
    await page.goto(`${t.url}/docs`);
    expect(new URL(page.url()).pathname).toBe('/docs/');
    await page.locator('.opblock').first().waitFor();
    // Each operation is a block with its method and its path (data-path: the path as written).
    // Page functions are given as strings: the tests are compiled without the DOM's types.
    const rendered: string[] = await page.evaluate(`[...document.querySelectorAll('.opblock')].map((block) =>
      block.querySelector('.opblock-summary-method').textContent.trim() + ' ' +
      block.querySelector('.opblock-summary-path').getAttribute('data-path'))`);
    expect(rendered.sort()).toEqual(operations);

    expect(watched.errors).toEqual([]);
    expect(watched.failed).toEqual([]);
    expect(elsewhere(watched, t.url)).toEqual([]);
    expect(watched.requests.some((r) => new URL(r.url).pathname === '/openapi.json')).toBe(true);
    await context.close();
  });

  it("gives the page a policy of its own and the API's answers the strict one", async () => {
    const page = await t.http.get('/docs/');
    expect(page.status).toBe(200);
    expect(page.headers['content-type']).toMatch(/^text\/html/);
    const policy = directives(page.headers['content-security-policy']);
    expect(policy).toMatchObject({ 'default-src': "'none'", 'script-src': "'self'", 'connect-src': "'self'", 'frame-ancestors': "'none'" });
    const asset = await t.http.get('/docs/swagger-ui-bundle.js');
    expect(asset.status).toBe(200);
    expect(asset.headers['content-security-policy']).toBe(page.headers['content-security-policy']);

    const api = await t.http.get('/openapi.json');
    expect(directives(api.headers['content-security-policy'])).toEqual({ 'default-src': "'none'", 'frame-ancestors': "'none'" });
    for (const res of [page, api]) {
      expect(res.headers).toMatchObject({ 'x-content-type-options': 'nosniff', 'cache-control': 'no-store', 'x-frame-options': 'DENY' });
      expect(res.headers['strict-transport-security']).toBeUndefined();
      expect(res.headers['x-powered-by']).toBeUndefined();
    }
  });
});

/** A Content-Security-Policy as directive name -> value. */
function directives(header: string | undefined): Record<string, string> {
  return Object.fromEntries(
    (header ?? '')
      .split(';')
      .map((d) => d.trim())
      .filter((d) => d !== '')
      .map((d) => {
        const [name = '', ...values] = d.split(/\s+/);
        return [name, values.join(' ')];
      }),
  );
}
