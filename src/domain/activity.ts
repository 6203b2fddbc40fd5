// Activations refused on a full pool and activations that waited in the queue write no row, on
// purpose: a full pool refuses at the rate clients ask. Each API process counts them per pool
// and minute in memory and adds its counts to pool_activity every `flushMs`, and once more when
// it stops; GET /api/stats reads them beside the history (src/db/stats.ts).

import type { Pool } from '../db/pool.js';
import * as sql from '../db/stats.js';
import type { Logger } from '../logger.js';

export type ActivityKind = 'refusals' | 'waits';

const MINUTE_MS = 60_000;

export function createActivityCounter(deps: { pool: Pool; log: Logger; flushMs: number; now?: () => number }) {
  const { pool, log } = deps;
  const now = deps.now ?? Date.now;
  // Keyed by `${poolId}:${minute start in ms}`.
  let counts = new Map<string, { poolId: number; minuteMs: number; refusals: number; waits: number }>();
  let flushing: Promise<void> = Promise.resolve();

  function count(poolId: number, kind: ActivityKind): void {
    const minuteMs = Math.floor(now() / MINUTE_MS) * MINUTE_MS;
    const key = `${poolId}:${minuteMs}`;
    let entry = counts.get(key);
    if (entry === undefined) {
      entry = { poolId, minuteMs, refusals: 0, waits: 0 };
      counts.set(key, entry);
    }
    entry[kind] += 1;
  }

  /** Writes what was counted since the last flush; counts that could not be written are kept. */
  function flush(): Promise<void> {
    flushing = flushing.then(async () => {
      if (counts.size === 0) return;
      const taken = counts;
      counts = new Map();
      const rows = [...taken.values()].map((c) => ({ ...c, minute: new Date(c.minuteMs) }));
      try {
        await sql.addActivity(pool, rows);
      } catch (err) {
        log.warn({ err }, 'activity counts could not be written; kept for the next flush');
        for (const [key, c] of taken) {
          const later = counts.get(key);
          counts.set(key, later === undefined ? c : { ...c, refusals: c.refusals + later.refusals, waits: c.waits + later.waits });
        }
      }
    });
    return flushing;
  }

  const timer = setInterval(() => void flush(), deps.flushMs);
  timer.unref();

  return {
    count,
    flush,
    /** Stops the timer and writes what is left. */
    async close(): Promise<void> {
      clearInterval(timer);
      await flush();
    },
  };
}

export type ActivityCounter = ReturnType<typeof createActivityCounter>;
