import { performance } from 'node:perf_hooks';
import type { TokenState } from '../domain/leases.js';
import { AppError, ERRORS } from '../errors.js';
import type { Logger } from '../logger.js';
import { within } from '../timeouts.js';
import type { TokenJson } from './contract.js';

// The read model of GET /api/tokens: the serialised list of tokens, kept in memory between
// requests. Re-reading and re-serialising the whole pool on every request costs far more than the
// HTTP stack (docs/performance.md); the read model answers from memory while nothing can have
// changed:
//
//  - a write made by this process (the write routes tell it, through `write`) empties it before
//    that request is answered (read your writes);
//  - a write made by another process empties it when that process's NOTIFY arrives (about 10 ms),
//    and while this process is not hearing the others nothing is kept at all;
//  - time changes the list too: an entry is dropped when its earliest lease runs out, measured
//    from before the query was sent, so no lease is ever shown active after its expiry (lazy
//    expiry, the release worker and the sweep end only leases already run out, so they need not
//    announce anything);
//  - and no entry lives longer than `maxAgeMs`, the bound on staleness when a notification is
//    lost before this process notices its connection is gone, or the rows are changed by hand.
//
// It is a cache of answers and never decides an allocation: the domain reads PostgreSQL.

export const iso = (date: Date) => date.toISOString();

export function tokenJson(token: TokenState): TokenJson {
  const { lease } = token;
  return {
    id: token.id,
    status: lease !== null ? 'active' : token.retired ? 'retired' : 'available',
    current_user_id: lease?.userId ?? null,
    activated_at: lease === null ? null : iso(lease.startedAt),
    expires_at: lease === null ? null : iso(lease.expiresAt),
  };
}

// ---- changes: counted here, announced to and heard from the other processes -------------------
//
// This process counts its own changes at once, before it answers the request that made them,
// and tells the other processes with a NOTIFY sent after the change committed; their NOTIFYs
// count here too. An answer kept at one count is current while the count has not moved and this
// process is hearing the others.

/** Where changes are announced to, and heard from, the other processes. */
export interface ChangeChannel {
  /** `listener` gets each payload, or null after a reconnection (some may have been lost). */
  subscribe(listener: (payload: string | null) => void): () => void;
  publish(payload: string): Promise<void>;
  /** True while every other process's announcement reaches this process. */
  isListening(): boolean;
}

interface LeaseChanges {
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

export function createChangeCounter(deps: {
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

// ---- the kept answer ------------------------------------------------------------------------------

/**
 * The longest an answer is kept: how stale the list can be after a change made by another process
 * whose notification was lost, or by hand in the database.
 */
export const LIST_MAX_AGE_MS = 250;

export interface Rendered {
  readonly body: Buffer;
  /** How long the answer stays true by itself (until the earliest lease expires); null: forever. */
  readonly validForMs: number | null;
  /** With private holders: the answer without them, and each holder's own entry (see listFor). */
  readonly redacted?: Redacted | undefined;
}

export interface Redacted {
  readonly body: Buffer;
  /**
   * By holder's user id: their token's entry as everyone sees it, and as they see it, and once
   * built, the whole answer as they see it (a holder asks again and again while the list stays
   * current; it was rebuilt for every request before).
   */
  readonly holders: ReadonlyMap<string, { readonly redacted: string; readonly full: string; own?: Buffer }>;
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
  /** current() with the redacted views, when there are any. */
  currentRendered(): Rendered | undefined;
  /** get() with the redacted views, when there are any. */
  getRendered(): Promise<Rendered>;
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

  function current(askedAt: number): Rendered | undefined {
    if (changes === undefined || !changes.isHeard() || entry === undefined) return undefined;
    return entry.version === changes.version() && askedAt < entry.staleAt ? entry : undefined;
  }

  async function get(): Promise<Rendered> {
    if (changes === undefined || !changes.isHeard()) return deps.load();
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
    if (askedAt < shared.staleAt) return shared;
    return load(version);
  }

  return {
    current: () => current(now())?.body,
    get: async () => (await get()).body,
    currentRendered: () => current(now()),
    getRendered: get,
  };
}

// ---- the read model: the two together ---------------------------------------------------------------

export interface ReadModel extends ListCache {
  /**
   * Runs a write and counts it as a change when it ends, whatever its outcome (one that failed
   * may still have committed, its answer lost with the connection), unless `changedNothing` says
   * the outcome is one that wrote nothing.
   */
  write<T>(operation: Promise<T>, changedNothing?: (outcome: T | AppError) => boolean): Promise<T>;
  /**
   * A named pool's list (by the pool's id), kept by the same rules: any change, in any pool,
   * empties it. `listTokens` reads that pool.
   */
  listOf(poolId: number, listTokens: TokenLister): ListCache;
  /** Counts a change made outside the routes (tokens added at start-up). */
  changed(): void;
  /** Announces what is still unannounced, then stops. */
  close(): Promise<void>;
}

type TokenLister = () => Promise<{ tokens: readonly TokenState[]; nextExpiryInMs: number | null }>;

export function createReadModel(deps: {
  listTokens: TokenLister;
  /** How changes reach the other processes; absent: nothing is kept (every request reads). */
  channel?: ChangeChannel | undefined;
  processId: string;
  log: Logger;
  /** How long an answer may be kept at most; 0: never kept. */
  maxAgeMs: number;
  /** Holders are private (AUTH_MODE other than none): keep the redacted views too. */
  privateHolders?: boolean;
}): ReadModel {
  const counter =
    deps.channel === undefined ? undefined : createChangeCounter({ channel: deps.channel, processId: deps.processId, log: deps.log });
  const cacheOf = (listTokens: TokenLister) =>
    createListCache({
      changes: deps.maxAgeMs > 0 ? counter : undefined,
      maxAgeMs: deps.maxAgeMs,
      load: async () => renderTokens(await listTokens(), deps.privateHolders === true),
    });
  const cache = cacheOf(deps.listTokens);
  // One per named pool asked for; pools are never deleted, so this grows only with their number.
  const pools = new Map<number, ListCache>();
  const changed = () => counter?.changed();
  return {
    listOf(poolId, listTokens) {
      let kept = pools.get(poolId);
      if (kept === undefined) {
        kept = cacheOf(listTokens);
        pools.set(poolId, kept);
      }
      return kept;
    },
    current: () => cache.current(),
    get: () => cache.get(),
    currentRendered: () => cache.currentRendered(),
    getRendered: () => cache.getRendered(),
    changed,
    async write(operation, changedNothing) {
      try {
        const outcome = await operation;
        if (changedNothing?.(outcome) !== true) changed();
        return outcome;
      } catch (error) {
        if (!(error instanceof AppError && changedNothing?.(error) === true)) changed();
        throw error;
      }
    },
    close: async () => counter?.close(),
  };
}

/**
 * A list of tokens as the answer of GET /api/tokens (or a named pool's list), serialised; with
 * private holders, also without them (see listFor).
 */
export function renderTokens(
  list: { tokens: readonly TokenState[]; nextExpiryInMs: number | null },
  privateHolders: boolean,
): Rendered {
  const { tokens, nextExpiryInMs } = list;
  const full = tokens.map((token) => JSON.stringify(tokenJson(token)));
  const body = Buffer.from(`{"data":[${full.join(',')}]}`);
  if (!privateHolders) return { body, validForMs: nextExpiryInMs };
  const holders = new Map<string, { redacted: string; full: string; own?: Buffer }>();
  const redacted = tokens.map((token, i) => {
    if (token.lease === null) return full[i] ?? '';
    const hidden = JSON.stringify({ ...tokenJson(token), current_user_id: null });
    holders.set(token.lease.userId, { redacted: hidden, full: full[i] ?? '' });
    return hidden;
  });
  return {
    body,
    validForMs: nextExpiryInMs,
    redacted: { body: Buffer.from(`{"data":[${redacted.join(',')}]}`), holders },
  };
}

/** An activation refused for a full pool wrote nothing: the answer under load, so not counted. */
export function isPoolExhausted(outcome: unknown): boolean {
  return outcome instanceof AppError && outcome.code === ERRORS.pool_exhausted.code;
}

/**
 * The token list as `userId` may see it: all of it (`full`, or holders are not private), else
 * without holders except the caller's own entry, put back in the redacted answer.
 */
export function listFor(answer: Rendered, view: { full: boolean; userId: string | null }): Buffer {
  const { redacted } = answer;
  if (redacted === undefined || view.full) return answer.body;
  const own = view.userId === null ? undefined : redacted.holders.get(view.userId);
  if (own === undefined) return redacted.body;
  own.own ??= Buffer.from(redacted.body.toString().replace(own.redacted, own.full));
  return own.own;
}
