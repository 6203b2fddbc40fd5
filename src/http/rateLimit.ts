import type { RequestHandler, Response } from 'express';
import { ipKeyGenerator, rateLimit, type Options, type Store } from 'express-rate-limit';
import { RedisStore, type SendCommandFn } from 'rate-limit-redis';
import { AppError, ERRORS } from '../errors.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import { callerOf } from './authenticate.js';
import { sendError } from './errors.js';

// Rate limits (RATE_LIMIT_PER_MINUTE, ADMIN_RATE_LIMIT_PER_MINUTE): requests per caller and
// minute, counted in Redis by express-rate-limit and rate-limit-redis, so that every API process
// spends from one budget. Each budget (lease routes, admin routes) counts on its own.
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
  const caller = callerOf(res);
  if (caller.userId !== null) return `user:${caller.userId}`;
  if (caller.clientId !== null) return `client:${caller.clientId}`;
  if (caller.kind === 'admin') return 'admin';
  return `address:${ipKeyGenerator(res.req.ip ?? '')}`;
}

/** The handlers a limited route puts first: none when the limit is off. */
export function rateLimiter(options: RateLimitOptions): readonly RequestHandler[] {
  if (options.perMinute === 0) return [];
  const { budget, log } = options;
  const limiter = rateLimit({
    windowMs: WINDOW_MS,
    limit: options.perMinute,
    // RateLimit-Policy and RateLimit (draft 8 of the IETF's RateLimit header fields, named by
    // budget), and Retry-After once the budget is spent; no X-RateLimit-* headers.
    standardHeaders: 'draft-8',
    legacyHeaders: false,
    identifier: budget,
    skipSuccessfulRequests: options.failuresOnly ?? false,
    keyGenerator: (_req, res) => callerKey(res),
    store: failOpen(new RedisStore({ sendCommand: options.sendCommand, prefix: options.keyPrefix }), options),
    passOnStoreError: true,
    // Sent from here, not passed to next(): a caller over its limit costs no walk through the
    // later routes on its way to the error handler.
    handler: (_req, res) => {
      sendError(res, new AppError(ERRORS.rate_limited, { budget, limit_per_minute: options.perMinute }));
    },
    logger: {
      // A store failure was logged once already, by the store (failOpen).
      error: (err, msg) => {
        if (!(err instanceof StoreUnavailableError)) log.error({ err, budget }, msg ?? 'rate limiter error');
      },
      warn: (err, msg) => log.warn({ err, budget }, msg ?? 'rate limiter warning'),
    },
  });
  return [limiter];
}

/** Redis could not count a request; it went through uncounted. */
class StoreUnavailableError extends Error {
  constructor(options: { cause: unknown }) {
    super('the rate limiter cannot reach Redis', options);
    this.name = 'StoreUnavailableError';
  }
}

/**
 * rate-limit-redis made to fail open and to recover. Its scripts are loaded by init(); a load
 * that failed (Redis down at start, or gone as it reloaded them) would fail every later count,
 * so after any failure the next count loads them again. Failures are logged once per outage.
 */
function failOpen(inner: RedisStore, options: RateLimitOptions): Store {
  const { budget, log, metrics } = options;
  let limiterOptions: Options | undefined;
  let loaded: Promise<void> | undefined;
  let down = false;

  const load = () => {
    if (limiterOptions === undefined) throw new Error('the rate limit store was not initialised');
    loaded ??= inner.init(limiterOptions);
    return loaded;
  };

  return {
    prefix: inner.prefix,
    init(given) {
      limiterOptions = given;
      // Redis may not be there yet: the first count loads the scripts if this fails.
      load().catch(() => {
        loaded = undefined;
      });
    },
    async increment(key) {
      try {
        await load();
        const counted = await inner.increment(key);
        if (down) {
          down = false;
          log.info({ budget }, 'rate limiter reaches Redis again');
        }
        return counted;
      } catch (err) {
        loaded = undefined;
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
