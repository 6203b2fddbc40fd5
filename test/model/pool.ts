// A small in-memory model of the token pool: what the service should answer, step by step, for
// a few users and tokens under a clock the test moves. The model-based property tests run the
// same commands against it and against the real service and compare every answer and the state.
//
// Times are model milliseconds: the sum of the Advance steps so far. The service also sees real
// time pass, a little, so the commands only move the clock in steps much longer than a run
// takes, and where two stored times are equal in the model the real ones are ordered by the
// step that wrote them (`seq`), which is how the model breaks the tie.

export type EndReason = 'expired' | 'released' | 'cleared' | 'evicted';

export interface ModelConfig {
  readonly tokens: number;
  readonly users: number;
  readonly ttlMs: number;
  readonly maxLeaseMs: number | null;
  readonly evictOldest: boolean;
}

export interface ModelUsage {
  readonly token: number;
  readonly user: number;
  readonly fence: number;
  readonly startedAt: number;
  readonly startedSeq: number;
  expiresAt: number;
  expiresSeq: number;
  endedAt: number | null;
  endReason: EndReason | null;
  /** The service's id for this lease, learned from the answer that granted it. */
  leaseId: string;
}

export interface PoolModel {
  readonly config: ModelConfig;
  now: number;
  /** Counts the steps that write times, to order equal model times as the database does. */
  seq: number;
  readonly tokens: Array<{ lastFence: number; lease: ModelUsage | null }>;
  /** Every usage, in the order they were created. */
  readonly usages: ModelUsage[];
}

export type LeaseAnswer = { readonly status: 200 | 201; readonly usage: ModelUsage; readonly evicted: ModelUsage | null };
export type Refusal = { readonly status: 404 | 409; readonly code: string; readonly reason?: string };
export type Exhausted = { readonly status: 409; readonly code: 'pool_exhausted'; readonly untilExpiryMs: number };
export type ValidateAnswer =
  | { readonly valid: true; readonly usage: ModelUsage }
  | { readonly valid: false; readonly reason: string };
export type JobOutcome = 'ended' | 'not_due' | 'gone';

export function createModel(config: ModelConfig): PoolModel {
  return {
    config,
    now: 0,
    seq: 0,
    tokens: Array.from({ length: config.tokens }, () => ({ lastFence: 0, lease: null })),
    usages: [],
  };
}

const isOpen = (u: ModelUsage) => u.endReason === null;
const isActive = (m: PoolModel, u: ModelUsage) => isOpen(u) && u.expiresAt > m.now;
const isDue = (m: PoolModel, u: ModelUsage) => isOpen(u) && u.expiresAt <= m.now;
const openUsages = (m: PoolModel) => m.usages.filter(isOpen);

/** A token index the pool does not have: the commands use it for an unknown token id. */
export const unknownToken = (m: PoolModel) => m.config.tokens;

function end(m: PoolModel, usage: ModelUsage, reason: EndReason): void {
  usage.endReason = reason;
  usage.endedAt = m.now;
  const token = m.tokens[usage.token];
  if (token?.lease === usage) token.lease = null;
}

/** The user's most recent usage of a token (open or ended), by fence. */
function latestUsage(m: PoolModel, user: number, token: number): ModelUsage | undefined {
  return m.usages.filter((u) => u.user === user && u.token === token).at(-1);
}

/** The user's most recent usage of any token. */
export function latestUsageOf(m: PoolModel, user: number): ModelUsage | undefined {
  return m.usages.filter((u) => u.user === user).at(-1);
}

const byExpiry = (a: ModelUsage, b: ModelUsage) => a.expiresAt - b.expiresAt || a.expiresSeq - b.expiresSeq;
const byStart = (a: ModelUsage, b: ModelUsage) => a.startedAt - b.startedAt || a.startedSeq - b.startedSeq;

/**
 * activate_lease(): the held lease; else, if it ran out, a new one on its token; else the lowest
 * token that is free or whose lease ran out, or the oldest lease's.
 */
export function activate(m: PoolModel, user: number): LeaseAnswer | Exhausted {
  m.seq += 1;
  let token = -1;
  const held = m.usages.find((u) => u.user === user && isOpen(u));
  if (held !== undefined) {
    if (isActive(m, held)) return { status: 200, usage: held, evicted: null };
    end(m, held, 'expired');
    token = held.token;
  }
  let evicted: ModelUsage | null = null;
  if (token === -1) {
    token = m.tokens.findIndex((t) => t.lease === null || isDue(m, t.lease));
    const lapsed = m.tokens[token]?.lease ?? null;
    if (lapsed !== null) end(m, lapsed, 'expired');
  }
  if (token === -1 && m.config.evictOldest) {
    const oldest = openUsages(m).sort(byStart)[0];
    if (oldest !== undefined) {
      end(m, oldest, 'evicted');
      evicted = oldest;
      token = oldest.token;
    }
  }
  const slot = m.tokens[token];
  if (slot === undefined) {
    const earliest = openUsages(m).sort(byExpiry)[0];
    return { status: 409, code: 'pool_exhausted', untilExpiryMs: earliest === undefined ? 0 : earliest.expiresAt - m.now };
  }
  slot.lastFence += 1;
  const usage: ModelUsage = {
    token,
    user,
    fence: slot.lastFence,
    startedAt: m.now,
    startedSeq: m.seq,
    expiresAt: m.now + m.config.ttlMs,
    expiresSeq: m.seq,
    endedAt: null,
    endReason: null,
    leaseId: '',
  };
  slot.lease = usage;
  m.usages.push(usage);
  return { status: 201, usage, evicted };
}

/** Why a named lease that has ended cannot be released or renewed. */
function endedRefusal(usage: ModelUsage): Refusal {
  if (usage.endReason === null || usage.endReason === 'expired') return { status: 409, code: 'lease_expired', reason: 'expired' };
  return { status: 409, code: 'lease_ended', reason: usage.endReason };
}

/**
 * Ends the named lease now (`lease`: the one the caller names, undefined for a lease id that is
 * not theirs on this token); a retry after a successful release answers the same usage.
 */
export function release(
  m: PoolModel,
  token: number,
  lease: ModelUsage | undefined,
): { status: 200; usage: ModelUsage } | Refusal {
  if (token === unknownToken(m)) return { status: 404, code: 'not_found' };
  if (lease === undefined) return { status: 409, code: 'not_holder', reason: 'not_held' };
  if (m.tokens[token]?.lease === lease) {
    const reason = isDue(m, lease) ? 'expired' : 'released';
    end(m, lease, reason);
    if (reason === 'released') return { status: 200, usage: lease };
  }
  if (lease.endReason === 'released') return { status: 200, usage: lease };
  return endedRefusal(lease);
}

/** Moves the named lease's expiry to TTL from now, capped at MAX_LEASE_MS after its start. */
export function renew(
  m: PoolModel,
  token: number,
  lease: ModelUsage | undefined,
): { status: 200; usage: ModelUsage } | Refusal {
  m.seq += 1;
  const { ttlMs, maxLeaseMs } = m.config;
  if (token === unknownToken(m)) return { status: 404, code: 'not_found' };
  if (lease === undefined) return { status: 409, code: 'not_holder', reason: 'not_held' };
  if (m.tokens[token]?.lease === lease) {
    // A renewal locks the token like any change: a lease it finds run out, it ends.
    if (isDue(m, lease)) end(m, lease, 'expired');
    else if (maxLeaseMs !== null && lease.startedAt + maxLeaseMs <= lease.expiresAt) {
      return { status: 409, code: 'max_lease_reached' };
    } else {
      const capped = maxLeaseMs !== null && lease.startedAt + maxLeaseMs < m.now + ttlMs;
      lease.expiresAt = capped ? lease.startedAt + maxLeaseMs : m.now + ttlMs;
      // A capped expiry is computed from the start, so it sorts with the start's real time.
      lease.expiresSeq = capped ? lease.startedSeq : m.seq;
      return { status: 200, usage: lease };
    }
  }
  return endedRefusal(lease);
}

/** The usage a release or renewal by `user` of `token` names: the user's latest of that token. */
export function namedLease(m: PoolModel, user: number, token: number): ModelUsage | undefined {
  return latestUsage(m, user, token);
}

const INVALID_REASONS: Record<EndReason, string> = {
  expired: 'expired',
  released: 'released',
  cleared: 'cleared',
  evicted: 'superseded',
};

export function validate(m: PoolModel, user: number, token: number, fence: number): ValidateAnswer {
  const usage = m.usages.find((u) => u.token === token && u.fence === fence);
  if (usage === undefined) return { valid: false, reason: 'unknown_lease' };
  if (usage.user !== user) return { valid: false, reason: 'not_holder' };
  if (isActive(m, usage)) return { valid: true, usage };
  // A lease found run out but not ended is ended first (as expired) by the validation.
  if (usage.endReason === null) end(m, usage, 'expired');
  return { valid: false, reason: usage.endReason === null ? 'expired' : INVALID_REASONS[usage.endReason] };
}

/** Ends every open lease; those past their expiry end as expired and are not counted. */
export function clear(m: PoolModel): number {
  let cleared = 0;
  for (const usage of openUsages(m)) {
    const reason = isDue(m, usage) ? 'expired' : 'cleared';
    if (reason === 'cleared') cleared += 1;
    end(m, usage, reason);
  }
  return cleared;
}

export function sweep(m: PoolModel): number {
  const due = openUsages(m).filter((u) => isDue(m, u));
  for (const usage of due) end(m, usage, 'expired');
  return due.length;
}

/**
 * The release job of one lease: it ends every lease that is due, its own among them (one
 * statement, so that a burst of expiries does not queue up behind one job per lease), and says
 * what became of its own.
 */
export function runReleaseJob(m: PoolModel, usage: ModelUsage): JobOutcome {
  const outcome = !isOpen(usage) ? 'gone' : isDue(m, usage) ? 'ended' : 'not_due';
  sweep(m);
  return outcome;
}

export function advance(m: PoolModel, ms: number): void {
  m.now += ms;
}

/** What GET /api/tokens should show for each token: the holder's index, or null when free. */
export function tokenHolders(m: PoolModel): Array<ModelUsage | null> {
  return m.tokens.map((t) => (t.lease !== null && isActive(m, t.lease) ? t.lease : null));
}
