import { randomUUID } from 'node:crypto';
import http from 'node:http';
import { setTimeout as delay } from 'node:timers/promises';
import type { Observation } from '../invariants.js';
import { activateBody, releaseBody, renewBody, validateBody } from './leaseBodies.js';

// The load client of the fault tests and the stress run: `clients` virtual clients, each a
// sequential loop over a few virtual users of its own, so concurrency is bounded by the number of
// clients. A user that holds no lease activates (some with ?wait=); a user that holds one follows
// a plan picked when it was granted: use it a little (renew, validate, activate again) then release
// it, or abandon it and let it expire. Now and then a user reads the token list or a token, or
// validates or releases a lease it held before. Every answer is recorded (status, error code, time
// taken) and counted, and what each user was told about its leases is kept as Observations for
// the invariant checker.

export type Operation = 'activate' | 'wait' | 'renew' | 'release' | 'validate' | 'read' | 'clear';

export interface Answer {
  readonly op: Operation;
  readonly baseUrl: string;
  readonly sentAt: number;
  readonly receivedAt: number;
  /** 0 when no answer came: connection refused or reset, or the client's deadline passed. */
  readonly status: number;
  /** `error.code` of an error answer. */
  readonly code?: string | undefined;
  /** The body was JSON of the documented shape: `{"data":...}` or `{"error":{code,message,details}}`. */
  readonly wellFormed: boolean;
  /** Why no answer came: `deadline` (the request hung past its bound) or the network error. */
  readonly failure?: string | undefined;
}

export interface LoadOptions {
  /** Each request goes to one of these, picked at random; the array may be changed while the load runs. */
  readonly baseUrls: readonly string[];
  readonly clients: number;
  /** Default 3. */
  readonly usersPerClient?: number;
  /** The longest `?wait=`, in seconds: a waiting activation waits a random time up to it. 0 (default): none. */
  readonly waitSeconds?: number;
  /** Share of activations that wait (default 0.2). */
  readonly waitShare?: number;
  /** A request unanswered after this many ms (plus its wait) counts as hung. */
  readonly deadlineMs: number;
  /** Pause between one client's requests: a random time up to this (default 10 ms; 0 for none). */
  readonly thinkMs?: number;
  /** An admin clears every lease of one of the pools this often (with `adminApiKey`); 0 (default): never. */
  readonly clearEveryMs?: number;
  /**
   * The pools the clients lease from: client i from pools[i % length] (default: the pool
   * `default` alone, through /api/tokens/activate).
   */
  readonly pools?: readonly string[];
  readonly adminApiKey?: string;
  /** Seed of the clients' random choices (default: a random one). */
  readonly seed?: number;
  /** The clients stop once this many leases were granted (201), this long has passed, or `signal` aborts. */
  readonly activations?: number;
  readonly durationMs?: number | null;
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
  reads: number;
  clears: number;
  clearedTokens: number;
  /** Answers the API does not promise for that request, by "METHOD route status code". */
  unexpected: Record<string, number>;
  /** Requests that got no answer, by `Answer.failure`. */
  lost: Record<string, number>;
}

export interface Load {
  readonly answers: Answer[];
  readonly observations: Observation[];
  readonly counts: LoadCounts;
  /** Resolves once every client has stopped: at a limit of LoadOptions, or after stop(). */
  readonly finished: Promise<void>;
  /**
   * One activation for a new user who never touches the lease again, as a client that takes a
   * lease and goes away would: only expiry ends it. Recorded like the clients' own requests.
   */
  abandon(): Promise<void>;
  /** Stops every client after its request in flight and resolves when all have stopped. */
  stop(): Promise<void>;
  /** Resolves once `count` answers received after `since` satisfy `match`. */
  until(what: string, match: (a: Answer) => boolean, options?: { count?: number; since?: number; timeoutMs?: number }): Promise<void>;
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

const newUser = (): User => ({ id: randomUUID(), held: null, past: [], idleUntil: 0 });

/** mulberry32: a small seeded generator, so a run's choices can be repeated. */
function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Whether a parsed body has the documented shape: data, or an error with code, message, details. */
export function isWellFormedBody(body: unknown): boolean {
  if (typeof body !== 'object' || body === null) return false;
  if ('data' in body) return true;
  const error = (body as { error?: unknown }).error;
  if (typeof error !== 'object' || error === null) return false;
  const { code, message, details } = error as Record<string, unknown>;
  return (
    typeof code === 'string' &&
    typeof message === 'string' &&
    typeof details === 'object' &&
    details !== null &&
    !Array.isArray(details)
  );
}

/** Every activation got an answer that says for sure whether it was granted (no 5xx, no silence). */
export function everyActivationAnswered(answers: readonly Answer[]): boolean {
  return answers.every((a) => (a.op !== 'activate' && a.op !== 'wait') || (a.status > 0 && a.status < 500));
}

const bump = (record: Record<string, number>, key: string) => {
  record[key] = (record[key] ?? 0) + 1;
};

function failureOf(error: unknown): string {
  const e = error as { name?: unknown; code?: unknown; message?: unknown } | null;
  if (e?.name === 'AbortError') return 'deadline';
  return typeof e?.code === 'string' ? e.code : String(e?.message ?? error);
}

/**
 * One request on a keep-alive agent: node:http rather than fetch, so that the load spends the
 * cores it shares with the service on requests, not on connection set-up or stream machinery.
 */
function request(
  agent: http.Agent,
  method: 'GET' | 'POST',
  url: string,
  options: { body?: unknown; headers?: Record<string, string>; timeoutMs: number },
): Promise<{ status: number; body: any }> {
  const payload = options.body === undefined ? undefined : JSON.stringify(options.body);
  const json = payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(payload)) };
  return new Promise((resolve, reject) => {
    const signal = AbortSignal.timeout(options.timeoutMs);
    const req = http.request(url, { method, agent, signal, headers: { ...json, ...options.headers } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('error', reject);
      res.on('end', () => {
        let body: unknown;
        try {
          body = JSON.parse(Buffer.concat(chunks).toString());
        } catch {
          body = undefined;
        }
        resolve({ status: res.statusCode ?? 0, body });
      });
    });
    req.on('error', reject);
    req.end(payload);
  });
}

export function startLoad(options: LoadOptions): Load {
  const answers: Answer[] = [];
  const observations: Observation[] = [];
  const counts: LoadCounts = {
    requests: 0, created: 0, existing: 0, exhausted: 0, releases: 0, renewals: 0, valid: 0, reads: 0, clears: 0,
    clearedTokens: 0, waits: { sent: 0, served: 0, timedOut: 0, tooMany: 0 },
    releaseRefused: {}, renewRefused: {}, invalid: {}, unexpected: {}, lost: {},
  };
  const seed = options.seed ?? Math.floor(Math.random() * 2 ** 31);
  const waitSeconds = options.waitSeconds ?? 0;
  const waitShare = waitSeconds > 0 ? (options.waitShare ?? 0.2) : 0;
  const thinkMs = options.thinkMs ?? 10;
  // An idle socket is dropped before the server's keep-alive timeout (5 s, announced in the
  // Keep-Alive header) can close it under a request just being sent on it.
  const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity, timeout: 4_000 });
  const started = Date.now();
  let stopped = false;
  const done = () =>
    stopped ||
    counts.created >= (options.activations ?? Infinity) ||
    Date.now() - started >= (options.durationMs ?? Infinity) ||
    options.signal?.aborted === true;

  /** A client's requests, its choices drawn from `random`. */
  const pools = options.pools ?? ['default'];
  const activatePath = (pool: string) => (pool === 'default' ? '/api/tokens/activate' : `/api/pools/${pool}/tokens/activate`);

  function client(random: () => number, pool = 'default') {
    const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)] as T;

    async function send(
      op: Operation,
      method: 'GET' | 'POST',
      path: string,
      extra: { body?: unknown; headers?: Record<string, string>; waitMs?: number } = {},
    ): Promise<{ answer: Answer; body: any }> {
      const baseUrl = pick(options.baseUrls);
      const sentAt = Date.now();
      counts.requests += 1;
      let reply: { status: number; body: any } = { status: 0, body: undefined };
      let failure: string | undefined;
      try {
        reply = await request(agent, method, `${baseUrl}${path}`, { ...extra, timeoutMs: options.deadlineMs + (extra.waitMs ?? 0) });
      } catch (error) {
        failure = failureOf(error);
        bump(counts.lost, failure);
      }
      const code: unknown = reply.body?.error?.code;
      const answer: Answer = {
        op,
        baseUrl,
        sentAt,
        receivedAt: Date.now(),
        status: reply.status,
        code: typeof code === 'string' ? code : undefined,
        wellFormed: isWellFormedBody(reply.body),
        failure,
      };
      answers.push(answer);
      if (failure === undefined && !countAnswer(op, answer, reply.body)) {
        bump(counts.unexpected, `${method} ${op} ${answer.status} ${answer.code ?? ''}`.trim());
      }
      return { answer, body: reply.body };
    }

    function forget(user: User, lease: Held): void {
      if (user.held?.leaseId === lease.leaseId) user.held = null;
      user.past = [lease, ...user.past.filter((p) => p.leaseId !== lease.leaseId)].slice(0, 3);
    }

    async function activate(user: User, wait: number): Promise<void> {
      const path = wait > 0 ? `${activatePath(pool)}?wait=${wait.toFixed(2)}` : activatePath(pool);
      if (wait > 0) counts.waits.sent += 1;
      const { answer, body } = await send(wait > 0 ? 'wait' : 'activate', 'POST', path, {
        body: activateBody(user.id),
        waitMs: Math.ceil(wait * 1000),
      });
      if (answer.status === 0) return;
      const lease = answer.status === 200 || answer.status === 201 ? body.data : undefined;
      observations.push({
        op: 'activate',
        userId: user.id,
        sentAt: answer.sentAt,
        receivedAt: answer.receivedAt,
        status: answer.status,
        lease: lease === undefined ? undefined : { leaseId: lease.lease_id, tokenId: lease.token_id, fence: lease.fence },
      });
      if (lease === undefined) return;
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
    }

    async function release(user: User, lease: Held): Promise<void> {
      const { answer, body } = await send('release', 'POST', `/api/tokens/${lease.tokenId}/release`, {
        body: releaseBody(user.id, lease.leaseId),
      });
      if (answer.status === 0) return;
      observations.push({
        op: 'release',
        userId: user.id,
        tokenId: lease.tokenId,
        status: answer.status,
        leaseId: answer.status === 200 ? body.data.lease_id : undefined,
      });
      forget(user, lease);
    }

    async function renew(user: User, lease: Held): Promise<void> {
      const { answer, body } = await send('renew', 'POST', `/api/tokens/${lease.tokenId}/renew`, {
        body: renewBody(user.id, lease.leaseId),
      });
      if (answer.status === 0) return;
      const renewed = answer.status === 200 ? body.data : undefined;
      observations.push({
        op: 'renew',
        userId: user.id,
        tokenId: lease.tokenId,
        status: answer.status,
        lease: renewed === undefined ? undefined : { leaseId: renewed.lease_id, expiresAt: renewed.expires_at },
      });
      if (renewed !== undefined) lease.expiresAtMs = Date.parse(renewed.expires_at);
      else forget(user, lease);
    }

    async function validate(user: User, lease: Held): Promise<void> {
      const { answer, body } = await send('validate', 'POST', `/api/tokens/${lease.tokenId}/validate`, {
        body: validateBody(user.id, lease.fence),
      });
      if (answer.status === 0) return;
      const result = answer.status === 200 ? body.data : undefined;
      observations.push({
        op: 'validate',
        userId: user.id,
        tokenId: lease.tokenId,
        fence: lease.fence,
        sentAt: answer.sentAt,
        receivedAt: answer.receivedAt,
        status: answer.status,
        valid: result?.valid,
        leaseId: result?.lease_id,
        reason: result?.reason,
      });
      if (result?.valid === false) forget(user, lease);
    }

    async function read(user: User): Promise<void> {
      const lease = user.held ?? user.past[0];
      await send('read', 'GET', lease === undefined || random() < 0.5 ? '/api/tokens' : `/api/tokens/${lease.tokenId}`);
    }

    /** One request for one user, chosen by what the user believes it holds. */
    async function step(user: User): Promise<void> {
      const held = user.held;
      const stale = user.past.length > 0 ? pick(user.past) : undefined;
      if (random() < 0.05) return read(user);
      if (held === null) {
        const r = random();
        if (stale !== undefined && r < 0.08) return validate(user, stale);
        if (stale !== undefined && r < 0.1) return release(user, stale);
        return activate(user, random() < waitShare ? Math.max(0.05, random() * waitSeconds) : 0);
      }
      if (held.expiresAtMs <= Date.now()) {
        // Believed run out: sometimes ask, then move on.
        if (random() < 0.5) return validate(user, held);
        forget(user, held);
        return activate(user, 0);
      }
      if (held.opsLeft > 0) {
        held.opsLeft -= 1;
        const r = random();
        if (r < 0.3) return renew(user, held);
        if (r < 0.75) return validate(user, held);
        if (r < 0.9) return activate(user, 0);
        return validate(user, stale ?? held);
      }
      if (held.plan === 'release') return release(user, held);
      user.idleUntil = held.expiresAtMs + Math.floor(random() * 200);
      return undefined;
    }

    async function run(users: readonly User[]): Promise<void> {
      while (!done()) {
        const now = Date.now();
        const ready = users.filter((u) => u.idleUntil <= now);
        if (ready.length === 0) {
          // Every user of this client left its lease to run out: wait for the first to be free.
          await delay(Math.min(250, Math.min(...users.map((u) => u.idleUntil)) - now));
          continue;
        }
        await step(pick(ready));
        if (thinkMs > 0) await delay(random() * thinkMs);
      }
    }

    async function clearEvery(everyMs: number): Promise<void> {
      let next = Date.now() + everyMs;
      while (!done()) {
        // A timer, not a condition: the admin clears on a schedule.
        await delay(Math.min(250, Math.max(0, next - Date.now())));
        if (Date.now() < next || done()) continue;
        next += everyMs;
        const { answer, body } = await send('clear', 'POST', `/api/pools/${pick(pools)}/tokens/clear`, {
          headers: { authorization: `Bearer ${options.adminApiKey ?? ''}` },
        });
        if (answer.status === 200) counts.clearedTokens += Number(body.data.cleared_tokens);
      }
    }

    return { run, activate, clearEvery };
  }

  /** Counts an answer; false for one the API does not promise for that request. */
  function countAnswer(op: Operation, answer: Answer, body: any): boolean {
    const { status, code } = answer;
    switch (op) {
      case 'activate':
      case 'wait':
        if (status === 201 || status === 200) {
          if (status === 201) counts.created += 1;
          else counts.existing += 1;
          if (op === 'wait') counts.waits.served += 1;
        } else if (status === 409 && code === 'pool_exhausted') {
          counts.exhausted += 1;
          if (op === 'wait') counts.waits.timedOut += 1;
        } else if (status === 503 && code === 'too_many_waiters') counts.waits.tooMany += 1;
        else return false;
        return true;
      case 'release':
        if (status === 200) counts.releases += 1;
        else if (status === 409 && (code === 'lease_ended' || code === 'lease_expired')) {
          bump(counts.releaseRefused, String(body.error.details?.reason));
        } else return false;
        return true;
      case 'renew':
        if (status === 200) counts.renewals += 1;
        else if (status === 409) bump(counts.renewRefused, String(code));
        else return false;
        return true;
      case 'validate':
        if (status !== 200) return false;
        if (body.data.valid === true) counts.valid += 1;
        else bump(counts.invalid, String(body.data.reason));
        return true;
      case 'read':
        if (status === 200) counts.reads += 1;
        return status === 200;
      case 'clear':
        if (status === 200) counts.clears += 1;
        return status === 200;
    }
  }

  const users = (n: number) => Array.from({ length: n }, newUser);
  const running = Array.from({ length: options.clients }, (_, i) =>
    client(seededRandom(seed * 7919 + i), pools[i % pools.length]).run(users(options.usersPerClient ?? 3)),
  );
  const clearEveryMs = options.clearEveryMs ?? 0;
  if (clearEveryMs > 0) running.push(client(seededRandom(seed)).clearEvery(clearEveryMs));
  const finished = Promise.all(running)
    .then(() => undefined)
    .finally(() => agent.destroy());
  const abandoner = client(seededRandom(seed - 1));

  return {
    answers,
    observations,
    counts,
    finished,
    abandon: () => abandoner.activate(newUser(), 0),
    async stop() {
      stopped = true;
      await finished;
    },
    async until(what, match, { count = 1, since = 0, timeoutMs = 15_000 } = {}) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const seen = answers.filter((a) => a.receivedAt >= since && match(a)).length;
        if (seen >= count) return;
        if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (saw ${seen} of ${count})`);
        await delay(20);
      }
    },
  };
}
