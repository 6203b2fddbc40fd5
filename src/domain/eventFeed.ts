// Follows the event log in one API process: knows how far it may be read (the horizon) and hands
// every new event, in id order, to the process's streams (src/http/eventStreams.ts).
//
// Why a horizon: ids are taken from a sequence while transactions run, and transactions commit
// in another order, so a reader that took every id it saw could see 8 before 7 commits, and
// never send 7 to a client that resumes after 8. Every transaction takes its xid before its
// event's id (sql/log_event.sql). So when a statement's snapshot sees `top` as the highest id,
// every transaction that could still hold an id up to `top` had its xid before that snapshot,
// and is among the transactions of this database that the same statement then finds running
// (pg_stat_activity.backend_xid). Once none of those runs any more, every id up to `top` is
// final: committed and visible, or never to appear. The next poll, a few milliseconds on,
// usually finds them finished. The writers pay nothing for it (no lock, no NOTIFY);
// docs/events.md compares the alternatives.

import type { Pool } from '../db/pool.js';
import { eventSnapshot, eventsRemovedThrough } from '../db/events.js';
import type { Logger } from '../logger.js';
import { type EventPage, type LeaseEvent, type Viewer, readEvents } from './events.js';

export interface EventFeed {
  /**
   * A horizon confirmed by a snapshot taken after this call: every event committed before the
   * call is at or below it. Waits at most `maxWaitMs` (a long transaction anywhere on the
   * server holds it back), then answers the last one known, which is older but as safe.
   */
  horizon(maxWaitMs?: number): Promise<number>;
  /** The last horizon known, without asking the database. */
  knownHorizon(): number;
  /** A page of the events after `after` the viewer may read, up to `upTo` or a fresh horizon. */
  page(args: { after: number; limit: number; viewer: Viewer; upTo?: number }): Promise<EventPage>;
  /** The highest id retention has removed: resuming below it, a reader missed events. */
  removedThrough(): Promise<number>;
  /**
   * While a listener is attached, the feed follows the log (on every wake-up, and every
   * `idlePollMs`) and hands it each event once, in id order, in batches. One listener at a time.
   */
  follow(listener: (events: readonly LeaseEvent[]) => void): () => void;
  close(): void;
}

/** How soon to look again while a horizon waits for transactions in flight. */
const SETTLE_MS = 5;
/** How often a followed feed looks at the log when nothing wakes it (the release worker and the sweep announce nothing). */
const IDLE_POLL_MS = 100;
/** After a failed read. */
const RETRY_MS = 1_000;
const BATCH = 1_000;
const DEFAULT_WAIT_MS = 1_000;
/** Checkpoints waiting for their transactions; past this, the newest two are merged (waiting for both sets is as safe). */
const MAX_CHECKPOINTS = 64;

interface Checkpoint {
  /** Every id up to here is final once none of `running` runs. */
  readonly upTo: number;
  readonly running: Set<string>;
  /** The poll that took it: a horizon() call waits for a poll started after it. */
  readonly poll: number;
}

export function createEventFeed(deps: {
  pool: Pool;
  log: Logger;
  /** Wake-ups: another process (or this one) changed leases (the change announcements). */
  wakeUps?: { subscribe(listener: (payload: string | null) => void): () => void } | undefined;
  idlePollMs?: number;
}): EventFeed {
  const { pool, log } = deps;
  const idlePollMs = deps.idlePollMs ?? IDLE_POLL_MS;
  let horizon = 0;
  let published = 0;
  let polls = 0;
  let confirmedPoll = 0;
  const checkpoints: Checkpoint[] = [];
  const waiters = new Set<{ poll: number; done: () => void }>();
  let listener: ((events: readonly LeaseEvent[]) => void) | undefined;
  let busy = false;
  let again = false;
  let failed = false;
  let closed = false;
  let timer: NodeJS.Timeout | undefined;

  const unsubscribe = deps.wakeUps?.subscribe(() => {
    if (listener !== undefined) request();
  });

  function request(): void {
    if (closed) return;
    if (busy) {
      again = true;
      return;
    }
    clearTimeout(timer);
    timer = undefined;
    void run();
  }

  async function run(): Promise<void> {
    busy = true;
    failed = false;
    try {
      do {
        again = false;
        await poll();
        await deliver();
        // request() and close() may have run meanwhile.
        // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition
      } while (again && !closed);
    } catch (err) {
      failed = true;
      log.warn({ err }, 'event log could not be read');
    } finally {
      busy = false;
    }
    schedule();
  }

  // Polls only while someone needs the horizon: a waiting horizon() call or a listener. Soon
  // while a checkpoint waits for its transactions, else every idlePollMs for a listener.
  function schedule(): void {
    if (closed || timer !== undefined) return;
    if (waiters.size === 0 && listener === undefined) return;
    const pending = checkpoints.length > 0 || waiters.size > 0;
    timer = setTimeout(
      () => {
        timer = undefined;
        request();
      },
      failed ? RETRY_MS : pending ? SETTLE_MS : idlePollMs,
    );
    timer.unref();
  }

  async function poll(): Promise<void> {
    const n = (polls += 1);
    const snapshot = await eventSnapshot(pool);
    const running = new Set(snapshot.running);
    checkpoints.push({ upTo: Number(snapshot.top), running, poll: n });
    if (checkpoints.length > MAX_CHECKPOINTS) {
      const newest = checkpoints.pop();
      const previous = checkpoints.pop();
      if (newest !== undefined && previous !== undefined) {
        const both = new Set([...previous.running, ...newest.running]);
        checkpoints.push({ upTo: Math.max(newest.upTo, previous.upTo), running: both, poll: newest.poll });
      }
    }
    // A checkpoint whose transactions have all finished makes every id up to its `top` final,
    // and with it those of every checkpoint before it.
    let confirmed = -1;
    checkpoints.forEach((checkpoint, i) => {
      for (const xid of checkpoint.running) if (!running.has(xid)) checkpoint.running.delete(xid);
      if (checkpoint.running.size === 0) confirmed = i;
    });
    for (const checkpoint of checkpoints.splice(0, confirmed + 1)) {
      horizon = Math.max(horizon, checkpoint.upTo);
      confirmedPoll = Math.max(confirmedPoll, checkpoint.poll);
    }
    for (const waiter of waiters) if (waiter.poll <= confirmedPoll) waiter.done();
  }

  async function deliver(): Promise<void> {
    const upTo = horizon;
    // No listener, or a new one: it hears of what comes after this horizon. Whoever needs older
    // events reads them from the log up to a horizon at least this recent (streams wait for a
    // fresh one before they catch up).
    if (listener === undefined || published < 0) {
      published = upTo;
      return;
    }
    // A new listener (published < 0 again) starts over at the next delivery; follow() may run
    // between the pages.
    // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition
    while (listener !== undefined && published >= 0 && published < upTo) {
      const page = await readEvents(pool, { after: published, upTo, limit: BATCH, viewer: EVERYONE });
      published = page.nextAfter;
      if (page.events.length > 0) listener(page.events);
    }
  }

  function freshHorizon(maxWaitMs = DEFAULT_WAIT_MS): Promise<number> {
    if (closed) return Promise.resolve(horizon);
    return new Promise((resolve) => {
      const waiter = {
        poll: polls + 1,
        done: () => {
          clearTimeout(giveUp);
          waiters.delete(waiter);
          resolve(horizon);
        },
      };
      const giveUp = setTimeout(waiter.done, maxWaitMs);
      giveUp.unref();
      waiters.add(waiter);
      request();
    });
  }

  return {
    horizon: freshHorizon,
    knownHorizon: () => horizon,
    async page(args) {
      const upTo = args.upTo ?? (await freshHorizon());
      return readEvents(pool, { after: args.after, upTo, limit: args.limit, viewer: args.viewer });
    },
    removedThrough: () => eventsRemovedThrough(pool),
    follow(next) {
      if (listener !== undefined) throw new Error('the event feed has a listener already');
      listener = next;
      published = -1;
      request();
      return () => {
        if (listener === next) listener = undefined;
      };
    },
    close() {
      closed = true;
      clearTimeout(timer);
      unsubscribe?.();
      for (const waiter of waiters) waiter.done();
      listener = undefined;
    },
  };
}

const EVERYONE: Viewer = { all: true, userId: null, clientId: null };
