// Waiting for a token: POST /api/tokens/activate?wait=N on an exhausted pool.
//
// The queue itself is the `waiters` table: its ids give the arrival order across every API
// process, and activate_lease() lets only the earliest live waiter of a pool take a token.
// This module keeps this process's waiters, wakes the earliest of them when PostgreSQL says a
// token of the pool was freed or a waiter left (LISTEN/NOTIFY, sql/wake_waiters.sql), and
// otherwise lets it sleep: until the earliest lease expires, or for a periodic re-check, never
// polling in a loop.
//
// Joining takes no lock. A release that commits while a waiter joins may look for waiters
// before the new place is visible, and the waiter's first attempt may not yet see the token
// freed; so a new waiter looks again at each of JOIN_RECHECKS_MS after joining, which outlast
// that window (a freeing statement commits as soon as it has run).

import type { ActivateRow } from '../db/queries.js';
import * as sql from '../db/queries.js';
import type { Pool } from '../db/pool.js';
import { AppError, ERRORS, PoolExhaustedError, UnavailableError } from '../errors.js';
import type { Logger } from '../logger.js';

export interface WakeUps {
  /** `listener` gets the pool whose waiters should look again, or null for every pool. */
  subscribe(listener: (poolId: number | null) => void): () => void;
}

/** A new waiter looks again this long after joining (see the header). */
export const JOIN_RECHECKS_MS = [50, 150, 450];

export class TooManyWaitersError extends AppError {
  constructor(maxWaiters: number) {
    super(ERRORS.too_many_waiters, { max_waiters: maxWaiters });
  }
}

/** The client went away while waiting; nobody reads this answer. */
export class ClientGoneError extends AppError {
  constructor() {
    super(ERRORS.client_closed_request);
  }
}

interface Waiter {
  readonly id: bigint;
  readonly poolId: number;
  /** Set when a wake-up arrives; the waiter clears it before each attempt. */
  woken: boolean;
  /** Present while the waiter sleeps. */
  wake: ((error?: Error) => void) | undefined;
}

export interface WaitingRoomOptions {
  readonly pool: Pool;
  readonly wakeUps: WakeUps;
  readonly maxWaiters: number;
  readonly log: Logger;
  /** How often the earliest waiter re-checks without a wake-up (the safety net). */
  readonly recheckMs?: number;
  /** How often this process marks its waiters as live. */
  readonly heartbeatMs?: number;
}

export function createWaitingRoom(options: WaitingRoomOptions) {
  const { pool, log } = options;
  const recheckMs = options.recheckMs ?? 1_000;
  const heartbeatMs = options.heartbeatMs ?? 1_000;
  const waiting: Waiter[] = []; // this process's waiters, in queue order (per pool, by id)
  let joining = 0; // requests between the MAX_WAITERS check and join()
  let heartbeat: NodeJS.Timeout | undefined;
  let closing = false;
  let drained: (() => void) | undefined;

  // Only this process's earliest waiter of a pool can be next in that pool's queue; when it
  // leaves, the next one is woken in turn (here, and in other processes by removeWaiter's
  // notification).
  function wakeEarliest(poolId: number | null): void {
    const woken = new Set<number>();
    for (const waiter of waiting) {
      if (woken.has(waiter.poolId) || (poolId !== null && waiter.poolId !== poolId)) continue;
      woken.add(waiter.poolId);
      waiter.woken = true;
      waiter.wake?.();
    }
  }
  const unsubscribe = options.wakeUps.subscribe(wakeEarliest);

  function join(waiter: Waiter): void {
    const at = waiting.findIndex((w) => w.id > waiter.id);
    waiting.splice(at === -1 ? waiting.length : at, 0, waiter);
    heartbeat ??= setInterval(() => {
      const ids = waiting.map((w) => w.id.toString());
      sql.heartbeatWaiters(pool, ids).catch((err: unknown) => {
        log.warn({ err }, 'waiter heartbeat failed');
      });
    }, heartbeatMs);
    heartbeat.unref();
  }

  function leave(waiter: Waiter): void {
    const at = waiting.indexOf(waiter);
    if (at !== -1) waiting.splice(at, 1);
    if (waiting.length === 0) {
      clearInterval(heartbeat);
      heartbeat = undefined;
      drained?.();
    }
    if (at !== -1 && !waiting.slice(0, at).some((w) => w.poolId === waiter.poolId)) wakeEarliest(waiter.poolId);
  }

  function sleep(waiter: Waiter, ms: number, signal: AbortSignal | undefined): Promise<void> {
    if (closing) return Promise.reject(new UnavailableError('shutting_down'));
    if (waiter.woken) return Promise.resolve();
    // Gone before the sleep began: the abort event has fired already and will not again.
    if (signal?.aborted === true) return Promise.reject(new ClientGoneError());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => waiter.wake?.(), ms);
      const onAbort = () => waiter.wake?.(new ClientGoneError());
      signal?.addEventListener('abort', onAbort, { once: true });
      waiter.wake = (error) => {
        waiter.wake = undefined;
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        if (error === undefined) resolve();
        else reject(error);
      };
    });
  }

  /**
   * Waits in the queue until `attempt` (an activation as this waiter) gets a lease, or until
   * `timeoutMs`, the client going away, or shutdown. The place is given up on every way out.
   */
  async function wait(args: {
    poolId: number;
    /** The pool's own limit on this process's waiters, besides MAX_WAITERS for all pools. */
    maxWaiters?: number | undefined;
    userId: string;
    timeoutMs: number;
    signal?: AbortSignal | undefined;
    attempt: (waiterId: string) => Promise<ActivateRow>;
  }): Promise<ActivateRow> {
    if (closing) throw new UnavailableError('shutting_down');
    // Counted from the check on, not from join(): a burst of requests all passed the check while
    // their places were being added, and MAX_WAITERS let through as many as came.
    if (waiting.length + joining >= options.maxWaiters) throw new TooManyWaitersError(options.maxWaiters);
    const { maxWaiters } = args;
    if (maxWaiters !== undefined && waiting.filter((w) => w.poolId === args.poolId).length >= maxWaiters) {
      throw new TooManyWaitersError(maxWaiters);
    }
    const deadline = Date.now() + args.timeoutMs;
    joining += 1;
    let waiterId: string;
    try {
      waiterId = await sql.addWaiter(pool, { poolId: args.poolId, userId: args.userId, timeoutMs: args.timeoutMs });
    } finally {
      joining -= 1;
    }
    const waiter: Waiter = { id: BigInt(waiterId), poolId: args.poolId, woken: true, wake: undefined };
    join(waiter);
    const joinedAt = Date.now();
    let served = false;
    try {
      for (;;) {
        if (args.signal?.aborted === true) throw new ClientGoneError();
        // close() may have run during the previous attempt or sleep.
        // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition
        if (closing) throw new UnavailableError('shutting_down');
        waiter.woken = false;
        const row = await args.attempt(waiterId);
        if (row.outcome === 'created' || row.outcome === 'existing') {
          served = true; // activate_lease removed the place in the same transaction
          return row;
        }
        const waitMs = Number(row.wait_ms ?? 0);
        const left = deadline - Date.now();
        if (left <= 0) throw new PoolExhaustedError(Math.max(1, Math.ceil(waitMs / 1000)));
        // At the head of a full pool, the earliest expiry frees a token without any event.
        const untilExpiry = row.outcome === 'exhausted' ? waitMs + 1 : Number.POSITIVE_INFINITY;
        const sinceJoin = Date.now() - joinedAt;
        const untilJoinRecheck = (JOIN_RECHECKS_MS.find((ms) => ms > sinceJoin) ?? Number.POSITIVE_INFINITY) - sinceJoin;
        await sleep(waiter, Math.min(left, untilExpiry, untilJoinRecheck, recheckMs), args.signal);
      }
    } finally {
      leave(waiter);
      if (!served) {
        await sql.removeWaiter(pool, waiterId).catch((err: unknown) => {
          log.warn({ err, waiterId }, 'waiter could not leave the queue; it expires on its own');
        });
      }
    }
  }

  return {
    wait,
    /** How many clients wait on this process. */
    size: () => waiting.length,
    /** Answers every waiter of this process with 503 and resolves once all have left. */
    async close(): Promise<void> {
      closing = true;
      unsubscribe();
      const done = waiting.length === 0 ? Promise.resolve() : new Promise<void>((resolve) => (drained = resolve));
      for (const waiter of waiting) waiter.wake?.(new UnavailableError('shutting_down'));
      await done;
    },
  };
}

export type WaitingRoom = ReturnType<typeof createWaitingRoom>;
