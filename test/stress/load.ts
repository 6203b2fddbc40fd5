import { randomUUID } from 'node:crypto';
import type { Observation } from '../invariants.js';
import type { Answer, HttpClient } from './http.js';
import { activateBody, releaseBody, renewBody, validateBody } from '../harness/leaseBodies.js';

// The load generator: `clients` virtual clients, each a sequential loop over a few virtual users
// of its own, so concurrency is bounded by the number of clients. A user that holds no lease
// activates (sometimes waiting with ?wait=); a user that holds one follows a plan picked when it
// was granted: use it a little (renew, validate, activate again) then release it, or abandon it
// and let it expire. Every answer is recorded as an Observation for the invariant checker.

export interface LoadOptions {
  readonly apiUrls: readonly string[];
  readonly clients: number;
  readonly usersPerClient: number;
  /** Stop once this many leases were granted (201). */
  readonly activations: number;
  /** Or once this long has passed; null for no limit. */
  readonly durationMs: number | null;
  /** Share of activations sent with ?wait=. */
  readonly waitRatio: number;
  readonly maxWaitSeconds: number;
  /** An admin clears every lease this often; 0 never. */
  readonly clearEveryMs: number;
  readonly adminApiKey: string;
  readonly seed: number;
  readonly signal?: AbortSignal | undefined;
}

export interface LoadCounts {
  requests: number;
  created: number;
  existing: number;
  exhausted: number;
  waits: { sent: number; served: number; timedOut: number; tooMany: number };
  releases: number;
  releaseRefused: Record<string, number>;
  renewals: number;
  renewRefused: Record<string, number>;
  valid: number;
  invalid: Record<string, number>;
  clears: number;
  clearedTokens: number;
  /** Answers the API does not promise for that request, by "METHOD route status code". */
  unexpected: Record<string, number>;
  /** Requests that got no answer (network error or client timeout), by error. */
  lost: Record<string, number>;
}

export interface LoadResult {
  readonly counts: LoadCounts;
  readonly observations: Observation[];
  readonly elapsedMs: number;
}

interface Held {
  readonly tokenId: string;
  readonly leaseId: string;
  readonly fence: number;
  expiresAtMs: number;
  /** release: use it `opsLeft` more times, then release. expire: then leave it to run out. */
  readonly plan: 'release' | 'expire';
  opsLeft: number;
}

interface User {
  readonly id: string;
  held: Held | null;
  /** Leases this user held before, newest first (a few), for stale validations and releases. */
  past: Held[];
  /** An abandoned lease: the user does nothing until it has run out. */
  idleUntil: number;
}

/** mulberry32: a small seeded generator, so a run's choices can be repeated. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function emptyCounts(): LoadCounts {
  return {
    requests: 0,
    created: 0,
    existing: 0,
    exhausted: 0,
    waits: { sent: 0, served: 0, timedOut: 0, tooMany: 0 },
    releases: 0,
    releaseRefused: {},
    renewals: 0,
    renewRefused: {},
    valid: 0,
    invalid: {},
    clears: 0,
    clearedTokens: 0,
    unexpected: {},
    lost: {},
  };
}

const bump = (record: Record<string, number>, key: string) => {
  record[key] = (record[key] ?? 0) + 1;
};

export async function generateLoad(http: HttpClient, options: LoadOptions, counts = emptyCounts()): Promise<LoadResult> {
  const observations: Observation[] = [];
  const started = Date.now();
  const done = () =>
    counts.created >= options.activations ||
    (options.durationMs !== null && Date.now() - started >= options.durationMs) ||
    options.signal?.aborted === true;

  const clients = Array.from({ length: options.clients }, (_, i) =>
    runClient(http, options, counts, observations, seededRandom(options.seed * 7919 + i), done),
  );
  const admin = options.clearEveryMs > 0 ? runAdmin(http, options, counts, done) : Promise.resolve();
  await Promise.all([...clients, admin]);
  return { counts, observations, elapsedMs: Date.now() - started };
}

async function runAdmin(http: HttpClient, options: LoadOptions, counts: LoadCounts, done: () => boolean) {
  const random = seededRandom(options.seed);
  let next = Date.now() + options.clearEveryMs;
  while (!done()) {
    // A timer, not a condition: the admin clears on a schedule.
    await new Promise((resolve) => setTimeout(resolve, Math.min(250, Math.max(0, next - Date.now()))));
    if (Date.now() < next || done()) continue;
    next += options.clearEveryMs;
    const url = options.apiUrls[Math.floor(random() * options.apiUrls.length)] ?? '';
    counts.requests += 1;
    try {
      const answer = await http.request('POST', `${url}/api/tokens/clear`, {
        headers: { authorization: `Bearer ${options.adminApiKey}` },
      });
      if (answer.status === 200) {
        counts.clears += 1;
        counts.clearedTokens += Number(answer.body.data.cleared_tokens);
      } else {
        bump(counts.unexpected, describeAnswer('POST', 'clear', answer));
      }
    } catch (error) {
      bump(counts.lost, errorName(error));
    }
  }
}

function errorName(error: unknown): string {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === 'string') return code;
  return error instanceof Error ? error.message : String(error);
}

function describeAnswer(method: string, route: string, answer: Answer): string {
  const code = typeof answer.body === 'object' && answer.body !== null ? answer.body.error?.code : undefined;
  return `${method} ${route} ${answer.status} ${code ?? ''}`.trim();
}

async function runClient(
  http: HttpClient,
  options: LoadOptions,
  counts: LoadCounts,
  observations: Observation[],
  random: () => number,
  done: () => boolean,
): Promise<void> {
  const users: User[] = Array.from({ length: options.usersPerClient }, () => ({
    id: randomUUID(),
    held: null,
    past: [],
    idleUntil: 0,
  }));
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)] as T;
  const apiUrl = () => pick(options.apiUrls);

  async function post(path: string, body: unknown, timeoutMs = 30_000): Promise<Answer | null> {
    counts.requests += 1;
    try {
      return await http.request('POST', `${apiUrl()}${path}`, { body, timeoutMs });
    } catch (error) {
      bump(counts.lost, errorName(error));
      return null;
    }
  }

  function forget(user: User, lease: Held): void {
    if (user.held?.leaseId === lease.leaseId) user.held = null;
    user.past = [lease, ...user.past.filter((p) => p.leaseId !== lease.leaseId)].slice(0, 3);
  }

  async function activate(user: User): Promise<void> {
    const wait = random() < options.waitRatio ? Math.max(0.05, random() * options.maxWaitSeconds) : 0;
    const path = wait > 0 ? `/api/tokens/activate?wait=${wait.toFixed(2)}` : '/api/tokens/activate';
    if (wait > 0) counts.waits.sent += 1;
    const sentAt = Date.now();
    const answer = await post(path, activateBody(user.id), wait * 1000 + 30_000);
    const receivedAt = Date.now();
    if (answer === null) return;
    const lease = answer.status === 200 || answer.status === 201 ? answer.body.data : undefined;
    observations.push({
      op: 'activate',
      userId: user.id,
      sentAt,
      receivedAt,
      status: answer.status,
      lease: lease === undefined ? undefined : { leaseId: lease.lease_id, tokenId: lease.token_id, fence: lease.fence },
    });
    if (answer.status === 201 || answer.status === 200) {
      if (answer.status === 201) counts.created += 1;
      else counts.existing += 1;
      if (wait > 0) counts.waits.served += 1;
      const known = user.held;
      if (known !== null && known.leaseId === lease.lease_id) {
        known.expiresAtMs = Date.parse(lease.expires_at);
        return;
      }
      if (known !== null) forget(user, known);
      user.held = {
        tokenId: lease.token_id,
        leaseId: lease.lease_id,
        fence: lease.fence,
        expiresAtMs: Date.parse(lease.expires_at),
        plan: random() < 0.6 ? 'release' : 'expire',
        opsLeft: Math.floor(random() * 3),
      };
    } else if (answer.status === 409 && answer.body.error?.code === 'pool_exhausted') {
      counts.exhausted += 1;
      if (wait > 0) counts.waits.timedOut += 1;
    } else if (answer.status === 503 && answer.body.error?.code === 'too_many_waiters') {
      counts.waits.tooMany += 1;
    } else {
      bump(counts.unexpected, describeAnswer('POST', 'activate', answer));
    }
  }

  async function release(user: User, lease: Held): Promise<void> {
    const answer = await post(`/api/tokens/${lease.tokenId}/release`, releaseBody(user.id, lease.leaseId));
    if (answer === null) return;
    observations.push({
      op: 'release',
      userId: user.id,
      tokenId: lease.tokenId,
      status: answer.status,
      leaseId: answer.status === 200 ? answer.body.data.lease_id : undefined,
    });
    if (answer.status === 200) counts.releases += 1;
    else if (answer.status === 409 && ['lease_ended', 'lease_expired'].includes(answer.body.error?.code)) {
      bump(counts.releaseRefused, String(answer.body.error.details?.reason));
    } else bump(counts.unexpected, describeAnswer('POST', 'release', answer));
    forget(user, lease);
  }

  async function renew(user: User, lease: Held): Promise<void> {
    const answer = await post(`/api/tokens/${lease.tokenId}/renew`, renewBody(user.id, lease.leaseId));
    if (answer === null) return;
    const renewed = answer.status === 200 ? answer.body.data : undefined;
    observations.push({
      op: 'renew',
      userId: user.id,
      tokenId: lease.tokenId,
      status: answer.status,
      lease: renewed === undefined ? undefined : { leaseId: renewed.lease_id, expiresAt: renewed.expires_at },
    });
    if (renewed !== undefined && renewed.lease_id === lease.leaseId) {
      counts.renewals += 1;
      lease.expiresAtMs = Date.parse(renewed.expires_at);
      return;
    }
    if (answer.status === 409) bump(counts.renewRefused, String(answer.body.error?.code));
    else bump(counts.unexpected, describeAnswer('POST', 'renew', answer));
    forget(user, lease);
  }

  async function validate(user: User, lease: Held): Promise<void> {
    const sentAt = Date.now();
    const answer = await post(`/api/tokens/${lease.tokenId}/validate`, validateBody(user.id, lease.fence));
    const receivedAt = Date.now();
    if (answer === null) return;
    const result = answer.status === 200 ? answer.body.data : undefined;
    observations.push({
      op: 'validate',
      userId: user.id,
      tokenId: lease.tokenId,
      fence: lease.fence,
      sentAt,
      receivedAt,
      status: answer.status,
      valid: result?.valid,
      leaseId: result?.lease_id,
      reason: result?.reason,
    });
    if (result === undefined) bump(counts.unexpected, describeAnswer('POST', 'validate', answer));
    else if (result.valid === true) counts.valid += 1;
    else {
      bump(counts.invalid, String(result.reason));
      forget(user, lease);
    }
  }

  /** One request for one user, chosen by what the user believes it holds. */
  async function step(user: User): Promise<void> {
    const held = user.held;
    const stale = user.past.length > 0 ? pick(user.past) : undefined;
    if (held === null) {
      const r = random();
      if (stale !== undefined && r < 0.08) return validate(user, stale);
      if (stale !== undefined && r < 0.1) return release(user, stale);
      return activate(user);
    }
    if (held.expiresAtMs <= Date.now()) {
      // Believed run out: sometimes ask, then move on.
      if (random() < 0.5) return validate(user, held);
      forget(user, held);
      return activate(user);
    }
    if (held.opsLeft > 0) {
      held.opsLeft -= 1;
      const r = random();
      if (r < 0.3) return renew(user, held);
      if (r < 0.75) return validate(user, held);
      if (r < 0.9) return activate(user);
      return stale === undefined ? validate(user, held) : validate(user, stale);
    }
    if (held.plan === 'release') return release(user, held);
    user.idleUntil = held.expiresAtMs + Math.floor(random() * 200);
    return undefined;
  }

  while (!done()) {
    const now = Date.now();
    const ready = users.filter((u) => u.idleUntil <= now);
    if (ready.length === 0) {
      // Every user of this client left its lease to run out: wait for the first to be free.
      const next = Math.min(...users.map((u) => u.idleUntil));
      await new Promise((resolve) => setTimeout(resolve, Math.min(250, next - now)));
      continue;
    }
    await step(pick(ready));
  }
}
