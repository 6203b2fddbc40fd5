// Changes to what the token list shows, as this process knows of them.
//
// The list changes when a lease starts, is released, renewed or cleared, and when tokens are
// added; it also changes by itself when a lease's time runs out (lazy expiry), which needs no
// event (a cache of the list expires then). Ending a lease that had already run out changes
// nothing a client can see, so the release worker and the sweep report no change.
//
// This process counts its own changes at once, before it answers the request that made them,
// and tells the other processes with a NOTIFY sent after the change committed; their NOTIFYs
// count here too. A cache built at one count is current while the count has not moved and this
// process is hearing the others.

import { performance } from 'node:perf_hooks';
import type { Logger } from '../logger.js';
import { within } from '../timeouts.js';

/** Where changes are announced to, and heard from, the other processes. */
export interface ChangeChannel {
  /** `listener` gets each payload, or null after a reconnection (some may have been lost). */
  subscribe(listener: (payload: string | null) => void): () => void;
  publish(payload: string): Promise<void>;
  /** True while every other process's announcement reaches this process. */
  isListening(): boolean;
}

export interface LeaseChanges {
  /** Moves on every change this process makes or hears of. */
  version(): number;
  /** True while changes made by other processes reach this one (else nothing may be cached). */
  isHeard(): boolean;
  /** Call after a change has committed, before answering the request that made it. */
  changed(): void;
  /** Announces what is still unannounced, then stops. */
  close(): Promise<void>;
}

/**
 * How often, at most, one process announces its changes: a burst of writes costs one NOTIFY per
 * interval (each NOTIFY is a small transaction that takes PostgreSQL's cluster-wide notify
 * lock), and other processes hear of a change within about this long.
 */
export const ANNOUNCE_INTERVAL_MS = 10;

/**
 * How long an announcement may take: on a connection that died without a word it would never
 * settle, and no announcement (nor a shutdown, which waits for the last one) would follow.
 */
const PUBLISH_TIMEOUT_MS = 1_000;
/** When to try again after an announcement failed. */
const RETRY_AFTER_FAILURE_MS = 250;

export function createLeaseChanges(deps: {
  channel: ChangeChannel;
  /** Tells this process's own announcements from the others'. */
  processId: string;
  log: Logger;
  now?: () => number;
}): LeaseChanges {
  const { channel, processId, log } = deps;
  // Monotonic: a wall clock stepping back would hold announcements up by as much.
  const now = deps.now ?? (() => performance.now());
  let version = 0;
  let unannounced = false;
  let announcing: Promise<void> | undefined;
  let lastAnnouncedAt = Number.NEGATIVE_INFINITY;
  let timer: NodeJS.Timeout | undefined;
  let closing = false;

  const unsubscribe = channel.subscribe((payload) => {
    if (payload !== processId) version += 1;
  });

  function scheduleAnnouncement(): void {
    if (closing || announcing !== undefined || timer !== undefined || !unannounced) return;
    const waitMs = Math.max(0, lastAnnouncedAt + ANNOUNCE_INTERVAL_MS - now());
    timer = setTimeout(announce, waitMs);
    timer.unref();
  }

  function announce(): void {
    timer = undefined;
    // Every change counted before this point has committed, so this NOTIFY covers them all.
    unannounced = false;
    lastAnnouncedAt = now();
    announcing = within(channel.publish(processId), PUBLISH_TIMEOUT_MS)
      .catch((err: unknown) => {
        // The others still drop their caches within their maximum age; this one tries again
        // after a while (the connection may be reconnecting, or gone without a word).
        log.debug({ err }, 'change not announced');
        unannounced = true;
        lastAnnouncedAt = now() + RETRY_AFTER_FAILURE_MS - ANNOUNCE_INTERVAL_MS;
      })
      .finally(() => {
        announcing = undefined;
        scheduleAnnouncement();
      });
  }

  return {
    version: () => version,
    isHeard: () => !closing && channel.isListening(),
    changed() {
      version += 1;
      unannounced = true;
      scheduleAnnouncement();
    },
    async close() {
      closing = true;
      clearTimeout(timer);
      await announcing;
      if (unannounced) {
        announce();
        await announcing;
      }
      unsubscribe();
    },
  };
}
