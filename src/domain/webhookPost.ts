// One attempt of a delivery over HTTP: a POST that never follows a redirect and gives up after
// ATTEMPT_TIMEOUT_MS. Unless private addresses are allowed, the address is checked as the
// connection is made (src/domain/webhookAddresses.ts).

import http from 'node:http';
import https from 'node:https';
import { isIP } from 'node:net';
import { guardedLookup, hostOf, isPrivateAddress } from './webhookAddresses.js';

/** No answer within this is a failed attempt. */
export const ATTEMPT_TIMEOUT_MS = 10_000;

export interface PostOutcome {
  /** The answer's status; null when there was none. */
  readonly status: number | null;
  /** Retry-After, in milliseconds, when the answer had a usable one. */
  readonly retryAfterMs: number | null;
  /** What went wrong; null for a 2xx. */
  readonly error: string | null;
}

export interface WebhookPoster {
  post(url: string, headers: Record<string, string>, body: string): Promise<PostOutcome>;
  close(): void;
}

/** Retry-After as seconds or an HTTP date, in milliseconds from `now`; null if absent or unreadable. */
export function retryAfterMs(value: string | undefined, now = Date.now()): number | null {
  if (value === undefined) return null;
  const trimmed = value.trim();
  if (/^[0-9]{1,10}$/.test(trimmed)) return Number(trimmed) * 1000;
  const at = Date.parse(trimmed);
  return Number.isNaN(at) ? null : Math.max(0, at - now);
}

export function createWebhookPoster(options: { allowPrivate: boolean; timeoutMs?: number }): WebhookPoster {
  const timeoutMs = options.timeoutMs ?? ATTEMPT_TIMEOUT_MS;
  const lookup = options.allowPrivate ? undefined : guardedLookup;
  // Connections are kept for the next delivery to the same endpoint; each was checked as it was made.
  const agents = {
    'http:': new http.Agent({ keepAlive: true, maxSockets: 64, timeout: timeoutMs, ...(lookup && { lookup }) }),
    'https:': new https.Agent({ keepAlive: true, maxSockets: 64, timeout: timeoutMs, ...(lookup && { lookup }) }),
  };

  function post(url: string, headers: Record<string, string>, body: string): Promise<PostOutcome> {
    let target: URL;
    try {
      target = new URL(url);
    } catch {
      return Promise.resolve({ status: null, retryAfterMs: null, error: 'the URL cannot be read' });
    }
    if (target.protocol !== 'http:' && target.protocol !== 'https:') {
      return Promise.resolve({ status: null, retryAfterMs: null, error: 'not an http or https URL' });
    }
    // An address written in the URL is never looked up: check it here.
    const host = hostOf(target);
    if (!options.allowPrivate && isIP(host) !== 0 && isPrivateAddress(host)) {
      return Promise.resolve({ status: null, retryAfterMs: null, error: `${host} is an address inside the network` });
    }
    const send = target.protocol === 'https:' ? https.request : http.request;
    return new Promise((resolve) => {
      let settled = false;
      const done = (outcome: PostOutcome) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve(outcome);
      };
      const req = send(target, {
        method: 'POST',
        agent: agents[target.protocol as 'http:' | 'https:'],
        headers: { ...headers, 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) },
      });
      const timer = setTimeout(() => {
        req.destroy(new Error(`no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      req.on('response', (res) => {
        const status = res.statusCode ?? 0;
        const retryAfter = retryAfterMs(res.headers['retry-after']);
        // The body is not kept; reading it to the end lets the connection serve the next attempt.
        res.resume();
        const outcome: PostOutcome = {
          status,
          retryAfterMs: retryAfter,
          error:
            status >= 200 && status < 300
              ? null
              : status >= 300 && status < 400
                ? `redirect to ${res.headers.location ?? '(no location)'} not followed`
                : `answered ${status}`,
        };
        res.on('end', () => {
          done(outcome);
        });
        res.on('error', () => {
          done(outcome);
        });
      });
      req.on('error', (err) => {
        done({ status: null, retryAfterMs: null, error: err.message });
      });
      req.end(body);
    });
  }

  return {
    post,
    close() {
      agents['http:'].destroy();
      agents['https:'].destroy();
    },
  };
}
