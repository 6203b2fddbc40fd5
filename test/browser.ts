import { chromium, type Browser, type Page } from 'playwright-core';

// The pages in Debian's Chromium, headless (.ci/run installs it; no browser is downloaded), and
// what a page did: console errors, failed requests and every request it made.

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

export function launchChromium(): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--headless=new'] });
}

export interface Watched {
  readonly page: Page;
  /** Console errors (a CSP violation is one) and uncaught exceptions. */
  readonly errors: string[];
  /** Requests that failed or were answered 400 or above. */
  readonly failed: string[];
  readonly requests: Array<{ url: string; method: string; auth: boolean }>;
}

/** Watches `page` from now on; requests for which `aborts` is true may be aborted (a stream left open). */
export function watch(page: Page, aborts: (url: string) => boolean = () => false): Watched {
  const watched: Watched = { page, errors: [], failed: [], requests: [] };
  page.on('console', (m) => {
    if (m.type() === 'error') watched.errors.push(m.text());
  });
  page.on('pageerror', (e) => watched.errors.push(String(e)));
  page.on('requestfailed', (r) => {
    if (!aborts(r.url())) watched.failed.push(`${r.url()} ${r.failure()?.errorText ?? ''}`);
  });
  page.on('response', (r) => {
    if (r.status() >= 400) watched.failed.push(`${r.url()} ${r.status()}`);
  });
  page.on('request', (r) => {
    watched.requests.push({ url: r.url(), method: r.method(), auth: r.headers().authorization !== undefined });
  });
  return watched;
}

/** The requests that went anywhere but `origin`. */
export const elsewhere = (watched: Watched, origin: string) => watched.requests.filter((r) => new URL(r.url).origin !== origin);
