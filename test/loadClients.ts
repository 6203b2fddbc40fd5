import { randomUUID } from 'node:crypto';
import type { Observation } from './invariants.js';
import { activateBody, releaseBody, renewBody, validateBody } from './harness/leaseBodies.js';

// A few virtual clients that activate, renew, release, validate and read at random against one
// or more API processes while a fault test breaks things, recording every answer (status, error
// code, time taken) and, for the invariant checker, what each client was told about its leases.

export type Operation = 'activate' | 'wait' | 'renew' | 'release' | 'validate' | 'read';

export interface Answer {
  readonly client: number;
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
  /** Client i talks to baseUrls[i % length]; the array may be changed while the load runs. */
  readonly baseUrls: string[];
  readonly clients: number;
  readonly usersPerClient?: number;
  /** `?wait=` seconds of the activations that wait (a share of them); 0 for none. */
  readonly waitSeconds?: number;
  readonly waitShare?: number;
  /** A request unanswered after this many ms (plus the wait, for waiters) counts as hung. */
  readonly deadlineMs: number;
  /** Pause between one client's requests. */
  readonly thinkMs?: number;
}

export interface Load {
  readonly answers: Answer[];
  readonly observations: Observation[];
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
  leaseId: string;
  tokenId: string;
  fence: number;
}

const pick = <T>(items: readonly T[]): T => items[Math.floor(Math.random() * items.length)] as T;

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

export function startLoad(options: LoadOptions): Load {
  const answers: Answer[] = [];
  const observations: Observation[] = [];
  const waitSeconds = options.waitSeconds ?? 0;
  const waitShare = waitSeconds > 0 ? (options.waitShare ?? 0.2) : 0;
  let stopped = false;

  async function call(
    client: number,
    op: Operation,
    method: string,
    path: string,
    body?: unknown,
  ): Promise<{ answer: Answer; data: Record<string, any> | undefined }> {
    const baseUrl = options.baseUrls[client % options.baseUrls.length] ?? '';
    const deadlineMs = options.deadlineMs + (op === 'wait' ? waitSeconds * 1000 : 0);
    const sentAt = Date.now();
    let status = 0;
    let parsed: unknown;
    let failure: string | undefined;
    try {
      const res = await fetch(`${baseUrl}${path}`, {
        method,
        headers: body === undefined ? {} : { 'content-type': 'application/json' },
        body: body === undefined ? null : JSON.stringify(body),
        signal: AbortSignal.timeout(deadlineMs),
      });
      const text = await res.text();
      status = res.status;
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = undefined;
      }
    } catch (error) {
      const e = error as { name?: string; cause?: { code?: string; message?: string }; message?: string };
      failure = e.name === 'TimeoutError' ? 'deadline' : (e.cause?.code ?? e.cause?.message ?? e.message ?? 'unknown');
    }
    const errorBody = (parsed as { error?: { code?: unknown } } | undefined)?.error;
    const answer: Answer = {
      client,
      op,
      baseUrl,
      sentAt,
      receivedAt: Date.now(),
      status,
      code: typeof errorBody?.code === 'string' ? errorBody.code : undefined,
      wellFormed: isWellFormedBody(parsed),
      failure,
    };
    answers.push(answer);
    const data = (parsed as { data?: Record<string, any> } | undefined)?.data;
    return { answer, data: status >= 200 && status < 300 ? data : undefined };
  }

  async function activate(client: number, userId: string, held: Map<string, Held>, wait: boolean) {
    const path = wait ? `/api/tokens/activate?wait=${waitSeconds}` : '/api/tokens/activate';
    const { answer, data } = await call(client, wait ? 'wait' : 'activate', 'POST', path, activateBody(userId));
    if (answer.status === 0) return;
    const lease =
      data === undefined ? undefined : { leaseId: String(data.lease_id), tokenId: String(data.token_id), fence: Number(data.fence) };
    observations.push({ op: 'activate', userId, sentAt: answer.sentAt, receivedAt: answer.receivedAt, status: answer.status, lease });
    if (lease !== undefined) held.set(userId, lease);
  }

  async function renew(client: number, userId: string, held: Map<string, Held>, lease: Held) {
    const { answer, data } = await call(client, 'renew', 'POST', `/api/tokens/${lease.tokenId}/renew`, renewBody(userId, lease.leaseId));
    if (answer.status === 0) return;
    observations.push({
      op: 'renew',
      userId,
      tokenId: lease.tokenId,
      status: answer.status,
      lease: data === undefined ? undefined : { leaseId: String(data.lease_id), expiresAt: String(data.expires_at) },
    });
    if (answer.status === 409) held.delete(userId);
  }

  async function release(client: number, userId: string, held: Map<string, Held>, lease: Held) {
    const { answer, data } = await call(client, 'release', 'POST', `/api/tokens/${lease.tokenId}/release`, releaseBody(userId, lease.leaseId));
    if (answer.status === 0) return;
    observations.push({
      op: 'release',
      userId,
      tokenId: lease.tokenId,
      status: answer.status,
      leaseId: data === undefined ? undefined : String(data.lease_id),
    });
    if (answer.status === 200 || answer.status === 409) held.delete(userId);
  }

  async function runClient(client: number): Promise<void> {
    const users = Array.from({ length: options.usersPerClient ?? 3 }, () => randomUUID());
    const held = new Map<string, Held>();
    while (!stopped) {
      const userId = pick(users);
      const lease = held.get(userId);
      const roll = Math.random();
      if (lease === undefined || roll < 0.3) {
        await activate(client, userId, held, Math.random() < waitShare);
      } else if (roll < 0.5) {
        await renew(client, userId, held, lease);
      } else if (roll < 0.8) {
        await release(client, userId, held, lease);
      } else if (roll < 0.9) {
        await call(client, 'validate', 'POST', `/api/tokens/${lease.tokenId}/validate`, validateBody(userId, lease.fence));
      } else {
        await call(client, 'read', 'GET', pick(['/api/tokens', `/api/tokens/${lease.tokenId}`]));
      }
      await new Promise((resolve) => setTimeout(resolve, Math.random() * (options.thinkMs ?? 10)));
    }
  }

  const running = Array.from({ length: options.clients }, (_, i) => runClient(i));

  return {
    answers,
    observations,
    async abandon() {
      await activate(0, randomUUID(), new Map(), false);
    },
    async stop() {
      stopped = true;
      await Promise.all(running);
    },
    async until(what, match, { count = 1, since = 0, timeoutMs = 15_000 } = {}) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const seen = answers.filter((a) => a.receivedAt >= since && match(a)).length;
        if (seen >= count) return;
        if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (saw ${seen} of ${count})`);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    },
  };
}

/** Every activation got an answer that says for sure whether it was granted (no 5xx, no silence). */
export function everyActivationAnswered(answers: readonly Answer[]): boolean {
  return answers.every((a) => (a.op !== 'activate' && a.op !== 'wait') || (a.status > 0 && a.status < 500));
}

/** A one-line summary per status (and error code) for logs and failure messages. */
export function tally(answers: readonly Answer[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const a of answers) {
    const key = a.status === 0 ? `no answer (${a.failure ?? '?'})` : `${a.status}${a.code === undefined ? '' : ` ${a.code}`}`;
    counts[key] = (counts[key] ?? 0) + 1;
  }
  return counts;
}
