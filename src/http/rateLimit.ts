import { createHash } from 'node:crypto';
import type { RequestHandler, Response } from 'express';
import type { Caller } from '../auth/caller.js';
import { ipKeyGenerator, rateLimit, type Store } from 'express-rate-limit';
import { AppError, ERRORS } from '../errors.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import { callerOf } from './authenticate.js';
import { sendError } from './errors.js';
import { BatchedRedisStore, type SendCommandFn } from './rateLimitStore.js';

// Rate limits (RATE_LIMIT_PER_MINUTE, ADMIN_RATE_LIMIT_PER_MINUTE): requests per caller and
// minute, counted in Redis by express-rate-limit over src/http/rateLimitStore.ts, so that every
// API process spends from one budget. Each budget (lease routes, admin routes) counts on its own.
//
// A limit of 0 gives no middleware at all: the routes run exactly as without limits. When Redis
// cannot be reached the limiter lets requests through uncounted (granting leases matters more
// than limiting them), logs that once per outage and counts each such request in a metric.

export type Budget = 'lease' | 'admin';

export interface RateLimitOptions {
  readonly budget: Budget;
  /** Requests a caller may make per minute; 0 turns the limit off. */
  readonly perMinute: number;
  /** Sends one command to Redis (main/ builds the connection). */
  readonly sendCommand: SendCommandFn;
  /** Every key this budget writes starts with it (under the service's REDIS_PREFIX). */
  readonly keyPrefix: string;
  readonly log: Logger;
  readonly metrics: Metrics;
  /** Counts refused requests only (4xx, 5xx): for a page whose every asset and poll is a request. */
  readonly failuresOnly?: boolean;
}

const WINDOW_MS = 60_000;

/**
 * Who a budget belongs to: the user (a JWT's sub), the API client, the admin key, or else the
 * client's address (as Express reads it with TRUST_PROXY; IPv6 by /56, which one host usually
 * has whole). authenticate() has run before on every limited route.
 */
export function callerKey(res: Response): string {
  return keyOf(callerOf(res), res.req.ip);
}

/** callerKey's rule, for a caller calling from `address`. */
export function keyOf(caller: Caller, address: string | undefined): string {
  if (caller.userId !== null) return `user:${caller.userId}`;
  if (caller.clientId !== null) return `client:${caller.clientId}`;
  if (caller.kind === 'admin') return 'admin';
  return `address:${ipKeyGenerator(address ?? '')}`;
}

/** A request counted against its budget: the headers its answer carries, and the refusal if it is over. */
export interface Counted {
  readonly headers: readonly (readonly [name: string, value: string])[];
  readonly refused: AppError | undefined;
}

export interface Limit {
  /** What a limited Express route puts first: nothing when the limit is off. */
  readonly handlers: readonly RequestHandler[];
  /**
   * The same count for the fast lane (src/http/fastLane.ts), from the same store, with the
   * headers express-rate-limit sets for this configuration; undefined when the limit is off.
   */
  readonly count: ((key: string) => Promise<Counted>) | undefined;
}

const UNCOUNTED: Counted = { headers: [], refused: undefined };

export function rateLimiter(options: RateLimitOptions): Limit {
  if (options.perMinute === 0) return { handlers: [], count: undefined };
  const { budget, log, perMinute } = options;
  const refusal = new AppError(ERRORS.rate_limited, { budget, limit_per_minute: perMinute });
  const logError = (err: unknown, msg?: string) => {
    // A store failure was logged once already, by the store (failOpen).
    if (!(err instanceof StoreUnavailableError)) log.error({ err, budget }, msg ?? 'rate limiter error');
  };
  const store = failOpen(new BatchedRedisStore({ sendCommand: options.sendCommand, prefix: options.keyPrefix }), options);
  const limiter = rateLimit({
    windowMs: WINDOW_MS,
    limit: perMinute,
    // RateLimit-Policy and RateLimit (draft 8 of the IETF's RateLimit header fields, named by
    // budget), and Retry-After once the budget is spent; no X-RateLimit-* headers.
    standardHeaders: 'draft-8',
    legacyHeaders: false,
    identifier: budget,
    skipSuccessfulRequests: options.failuresOnly ?? false,
    keyGenerator: (_req, res) => callerKey(res),
    store,
    passOnStoreError: true,
    // Sent from here, not passed to next(): a caller over its limit costs no walk through the
    // later routes on its way to the error handler.
    handler: (_req, res) => {
      sendError(res, refusal);
    },
    logger: { error: logError, warn: (err, msg) => log.warn({ err, budget }, msg ?? 'rate limiter warning') },
  });
  // express-rate-limit's draft-8 headers for one budget and its Retry-After, over the same store;
  // test/fastLane.test.ts compares the two.
  const count = async (key: string): Promise<Counted> => {
    let counted: Awaited<ReturnType<Store['increment']>>;
    try {
      counted = await store.increment(key);
    } catch (err) {
      logError(err);
      return UNCOUNTED;
    }
    const reset = counted.resetTime === undefined ? WINDOW_MS / 1e3 : Math.max(0, Math.ceil((counted.resetTime.getTime() - Date.now()) / 1e3));
    const headers: (readonly [string, string])[] = [
      ['RateLimit', `"${budget}"; r=${Math.max(perMinute - counted.totalHits, 0)}; t=${reset}`],
      ['RateLimit-Policy', `"${budget}"; q=${perMinute}; w=${WINDOW_MS / 1e3}; pk=:${partitionKey(key)}:`],
    ];
    if (counted.totalHits <= perMinute) return { headers, refused: undefined };
    headers.push(['Retry-After', String(reset)]);
    return { headers, refused: refusal };
  };
  return { handlers: [limiter], count: options.failuresOnly === true ? undefined : count };
}

/** Callers whose partition key is kept at most: past this, the oldest is computed again. */
const PARTITION_KEYS_KEPT = 10_000;
const partitionKeys = new Map<string, string>();

/**
 * The key's partition key in RateLimit-Policy, as express-rate-limit writes it. Kept by key: a
 * caller sends request after request, and a hash per request (a native object each time) cost
 * more than the rest of the count's headers.
 */
function partitionKey(key: string): string {
  let pk = partitionKeys.get(key);
  if (pk === undefined) {
    pk = Buffer.from(createHash('sha256').update(key).digest('hex').slice(0, 12)).toString('base64');
    if (partitionKeys.size >= PARTITION_KEYS_KEPT) partitionKeys.delete(partitionKeys.keys().next().value ?? '');
    partitionKeys.set(key, pk);
  }
  return pk;
}

/** Redis could not count a request; it went through uncounted. */
class StoreUnavailableError extends Error {
  constructor(options: { cause: unknown }) {
    super('the rate limiter cannot reach Redis', options);
    this.name = 'StoreUnavailableError';
  }
}

/**
 * The store made to fail open: a count that fails (Redis down, or no answer within the limiter
 * connection's timeout) is logged once per outage, counted in a metric, and let through.
 */
function failOpen(inner: BatchedRedisStore, options: RateLimitOptions): Store {
  const { budget, log, metrics } = options;
  let down = false;

  return {
    prefix: inner.prefix,
    init(given) {
      // Redis may not be there yet: the first count loads the script if this fails.
      inner.init(given).catch(() => undefined);
    },
    async increment(key) {
      try {
        const counted = await inner.increment(key);
        if (down) {
          down = false;
          log.info({ budget }, 'rate limiter reaches Redis again');
        }
        return counted;
      } catch (err) {
        metrics.rateLimitStoreFailures.inc({ budget });
        if (!down) {
          down = true;
          log.warn({ err, budget }, 'rate limiter cannot reach Redis: requests pass uncounted');
        }
        throw new StoreUnavailableError({ cause: err });
      }
    },
    decrement: (key) => inner.decrement(key),
    resetKey: (key) => inner.resetKey(key),
  };
}
