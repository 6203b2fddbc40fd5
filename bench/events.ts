import { randomUUID } from 'node:crypto';
import { request, type ClientRequest, type IncomingMessage } from 'node:http';
import { performance } from 'node:perf_hooks';
import { waitFor } from '../test/harness/waitFor.js';
import { percentile } from './stats.js';

// The events group: how long after an activation's answer its event reaches every subscriber of
// GET /api/events/stream. `subscribers` streams are opened against one URL (API_PROCESSES=2
// spreads them over both processes), then activations are made one at a time at a steady rate,
// each released at once (its release is an event too, unmeasured), and each subscriber notes
// when each activation's event arrives. Every (activation, subscriber) pair is one sample.

export interface EventLatency {
  readonly samples: number[];
  /** Pairs whose event never arrived within the deadline, and requests that failed. */
  readonly errors: number;
}

interface Subscriber {
  readonly req: ClientRequest;
  /** lease id -> when its lease.activated event arrived (performance.now()). */
  readonly arrived: Map<string, number>;
}

const LEASE_ID = /"lease_id":"([0-9a-f-]{36})"/;

/**
 * Opens one stream and notes each activation event's arrival; resolves once the stream has
 * started (its first line, sent once it has its starting point).
 */
function subscribe(url: string): Promise<Subscriber> {
  return new Promise((resolve, reject) => {
    const arrived = new Map<string, number>();
    const req = request(`${url}/api/events/stream`, { agent: false }, (res: IncomingMessage) => {
      if (res.statusCode !== 200) {
        reject(new Error(`the stream answered ${res.statusCode ?? '?'}`));
        res.resume();
        return;
      }
      res.setEncoding('utf8');
      let buffer = '';
      res.on('data', (chunk: string) => {
        const now = performance.now();
        buffer += chunk;
        for (let end = buffer.indexOf('\n\n'); end >= 0; end = buffer.indexOf('\n\n')) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          if (frame === ': token-lease events') resolve({ req, arrived });
          if (!frame.includes('\nevent: lease.activated\n')) continue;
          const leaseId = LEASE_ID.exec(frame)?.[1];
          if (leaseId !== undefined) arrived.set(leaseId, now);
        }
      });
      res.on('error', () => undefined);
    });
    req.on('error', reject);
    req.end();
  });
}

async function call(url: string, path: string, body: unknown): Promise<{ status: number; data: Record<string, string> }> {
  const res = await fetch(`${url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const json = (await res.json()) as { data?: Record<string, string> };
  return { status: res.status, data: json.data ?? {} };
}

/** One activation and its release; returns the lease id and when the activation's answer came. */
async function cycle(url: string): Promise<{ leaseId: string; answeredAt: number } | undefined> {
  const userId = randomUUID();
  const activated = await call(url, '/api/tokens/activate', { user_id: userId });
  const answeredAt = performance.now();
  const leaseId = activated.data.lease_id;
  const tokenId = activated.data.token_id;
  if (activated.status !== 201 || leaseId === undefined || tokenId === undefined) return undefined;
  await call(url, `/api/tokens/${tokenId}/release`, { user_id: userId, lease_id: leaseId });
  return { leaseId, answeredAt };
}

export async function measureEventLatency(options: {
  url: string;
  subscribers: number;
  activations: number;
  /** Activations per second. */
  rate: number;
  warmupActivations?: number;
}): Promise<EventLatency> {
  const subscribers: Subscriber[] = [];
  try {
    // A few at a time: a thousand connections at once would queue in the listen backlog.
    for (let i = 0; i < options.subscribers; i += 50) {
      const batch = Math.min(50, options.subscribers - i);
      subscribers.push(...(await Promise.all(Array.from({ length: batch }, () => subscribe(options.url)))));
    }
    const seenByAll = (leaseId: string) => subscribers.every((s) => s.arrived.has(leaseId));
    // Until an activation reaches every subscriber, some streams may still be starting.
    for (let i = 0; i < (options.warmupActivations ?? 5); i += 1) {
      const warm = await cycle(options.url);
      if (warm === undefined) throw new Error('a warm-up activation failed');
      await waitFor(() => seenByAll(warm.leaseId), { timeoutMs: 30_000, what: 'the warm-up event at every subscriber' });
    }

    const made: Array<{ leaseId: string; answeredAt: number }> = [];
    let failed = 0;
    const intervalMs = 1000 / options.rate;
    const startedAt = performance.now();
    for (let i = 0; i < options.activations; i += 1) {
      const due = startedAt + i * intervalMs;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      const done = await cycle(options.url);
      if (done === undefined) failed += 1;
      else made.push(done);
    }
    await waitFor(() => made.every((m) => seenByAll(m.leaseId)), { timeoutMs: 10_000, what: 'every event at every subscriber' }).catch(
      () => undefined,
    );
    const samples: number[] = [];
    let missing = 0;
    for (const { leaseId, answeredAt } of made) {
      for (const s of subscribers) {
        const at = s.arrived.get(leaseId);
        if (at === undefined) missing += 1;
        // An event may reach a stream before the answer reaches its client: no wait, not less.
        else samples.push(Math.max(0, at - answeredAt));
      }
    }
    samples.sort((a, b) => a - b);
    return { samples, errors: failed + missing };
  } finally {
    for (const s of subscribers) s.req.destroy();
  }
}

export function summariseLatency(samples: readonly number[]): { p50: number; p99: number; max: number } {
  return { p50: percentile(samples, 0.5), p99: percentile(samples, 0.99), max: samples.at(-1) ?? 0 };
}
