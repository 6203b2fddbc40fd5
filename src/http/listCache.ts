import { performance } from 'node:perf_hooks';
import type { LeaseChanges } from '../domain/changes.js';

// The serialised answer of GET /api/tokens, kept between requests. Re-reading and re-serialising
// the whole pool on every request costs far more than the HTTP stack (see the README's
// Performance section); the cache answers from memory while nothing can have changed:
//
//  - a change made by this process empties it before that request is answered (read your writes);
//  - a change made by another process empties it when its NOTIFY arrives (about 10 ms), and while
//    this process is not hearing the others nothing is cached at all;
//  - time changes the list too: an entry is dropped when its earliest lease runs out, measured
//    from before the query was sent, so no lease is ever shown active after its expiry;
//  - and no entry lives longer than `maxAgeMs`, the bound on staleness when a notification is
//    lost before this process notices its connection is gone, or the rows are changed by hand.

/**
 * The longest an answer is kept: how stale the list can be after a change made by another process
 * whose notification was lost, or by hand in the database.
 */
export const LIST_MAX_AGE_MS = 250;

export interface Rendered {
  readonly body: Buffer;
  /** How long the answer stays true by itself (until the earliest lease expires); null: forever. */
  readonly validForMs: number | null;
}

interface Entry extends Rendered {
  readonly version: number;
  readonly staleAt: number;
}

export interface ListCache {
  /** The answer kept in memory, if it is current; else undefined (then call get()). */
  current(): Buffer | undefined;
  /** The answer, from memory when it is current, else from `load`. */
  get(): Promise<Buffer>;
}

export function createListCache(deps: {
  load: () => Promise<Rendered>;
  changes: Pick<LeaseChanges, 'version' | 'isHeard'> | undefined;
  maxAgeMs: number;
  now?: () => number;
}): ListCache {
  const { changes, maxAgeMs } = deps;
  const now = deps.now ?? (() => performance.now());
  let entry: Entry | undefined;
  let loading: Promise<Entry> | undefined;
  let loadingVersion = -1;

  async function load(version: number): Promise<Entry> {
    const startedAt = now();
    const rendered = await deps.load();
    const staleAt = startedAt + Math.min(maxAgeMs, rendered.validForMs ?? Number.POSITIVE_INFINITY);
    const fresh: Entry = { ...rendered, version, staleAt };
    // A change counted while the query ran may be missing from it: then it serves this request only.
    if (changes?.version() === version && changes.isHeard()) entry = fresh;
    return fresh;
  }

  function current(askedAt: number): Buffer | undefined {
    if (changes === undefined || !changes.isHeard() || entry === undefined) return undefined;
    return entry.version === changes.version() && askedAt < entry.staleAt ? entry.body : undefined;
  }

  return {
    current: () => current(now()),
    async get() {
      if (changes === undefined || !changes.isHeard()) return (await deps.load()).body;
      const askedAt = now();
      const version = changes.version();
      const kept = current(askedAt);
      if (kept !== undefined) return kept;
      // Requests that find nothing current share one query, as long as nothing changes meanwhile.
      if (loading === undefined || loadingVersion !== version) {
        loadingVersion = version;
        const started = load(version).finally(() => {
          if (loading === started) loading = undefined;
        });
        loading = started;
      }
      const shared = await loading;
      // A shared query that began before this request may have seen a lease active that ran out
      // before this request came in: then read again.
      if (askedAt < shared.staleAt) return shared.body;
      return (await load(version)).body;
    },
  };
}
