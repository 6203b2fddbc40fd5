import type { IncrementResponse, Options, Store } from 'express-rate-limit';

// The rate limiter's counters in Redis, one per caller and budget, in fixed windows: a counter
// starts at the first request of its window and expires with it. The keys and the window rule are
// those of rate-limit-redis, the store this one replaces (its increment script, from 1 to n), so
// that processes of both versions count on the same counters during an upgrade.
//
// One round trip per turn of the event loop instead of one per request: the increments asked for
// during one turn (the requests whose bytes arrived in the same poll, on one process under load
// often several) wait for setImmediate and go as one EVALSHA, which adds to each counter the
// number of its requests. Each request gets the count it would have got alone, in the order
// they asked: the counter's new total, less the requests after it in the batch.

const INCREMENT_SCRIPT = `
local window = tonumber(ARGV[1])
local replies = {}
for i, key in ipairs(KEYS) do
  local count = tonumber(ARGV[i + 1])
  local ttl = redis.call('PTTL', key)
  if ttl <= 0 then
    redis.call('SET', key, count, 'PX', window)
    replies[2 * i - 1] = count
    replies[2 * i] = window
  else
    replies[2 * i - 1] = redis.call('INCRBY', key, count)
    replies[2 * i] = ttl
  end
end
return replies`
  .replaceAll(/^\s+/gm, '')
  .trim();

/** A reply from Redis, as ioredis gives it. */
export type RedisReply = string | number | null | readonly RedisReply[];
/** Sends one command to Redis. */
export type SendCommandFn = (...args: string[]) => Promise<RedisReply>;

interface Waiter {
  resolve(counted: IncrementResponse): void;
  reject(error: unknown): void;
}

const isNoScript = (error: unknown) => error instanceof Error && /^NOSCRIPT(?:\s|$)/.test(error.message);

export interface BatchedStoreOptions {
  /** Sends one command to Redis: on a Cluster, SCRIPT LOAD to every master (src/main/clients.ts). */
  readonly sendCommand: SendCommandFn;
  /** Every key starts with it; on a Cluster it is a hash tag, so one script may name several keys. */
  readonly prefix: string;
}

export class BatchedRedisStore implements Store {
  readonly prefix: string;
  private readonly send: SendCommandFn;
  private windowMs = 60_000;
  private sha: Promise<string> | undefined;
  /** This turn's increments, by key, in the order they were asked for. */
  private pending = new Map<string, Waiter[]>();

  constructor(options: BatchedStoreOptions) {
    this.send = options.sendCommand;
    this.prefix = options.prefix;
  }

  async init(options: Options): Promise<void> {
    this.windowMs = options.windowMs;
    await this.script();
  }

  increment(key: string): Promise<IncrementResponse> {
    return new Promise((resolve, reject) => {
      if (this.pending.size === 0) setImmediate(() => this.flush());
      const waiters = this.pending.get(key);
      if (waiters === undefined) this.pending.set(key, [{ resolve, reject }]);
      else waiters.push({ resolve, reject });
    });
  }

  async decrement(key: string): Promise<void> {
    await this.send('DECR', this.prefix + key);
  }

  async resetKey(key: string): Promise<void> {
    await this.send('DEL', this.prefix + key);
  }

  /** Loads the script (again, after a failure or a NOSCRIPT): its SHA1. */
  private script(reload = false): Promise<string> {
    if (reload || this.sha === undefined) {
      const loading = this.send('SCRIPT', 'LOAD', INCREMENT_SCRIPT).then((sha) => {
        if (typeof sha !== 'string') throw new TypeError('unexpected reply to SCRIPT LOAD');
        return sha;
      });
      // A failed load is tried again by the next batch.
      loading.catch(() => {
        if (this.sha === loading) this.sha = undefined;
      });
      this.sha = loading;
    }
    return this.sha;
  }

  private flush(): void {
    const batch = [...this.pending.values()];
    const keys = [...this.pending.keys()].map((key) => this.prefix + key);
    this.pending = new Map();
    const args = [String(this.windowMs), ...batch.map((waiters) => String(waiters.length))];
    const run = async (reload: boolean) => this.send('EVALSHA', await this.script(reload), String(keys.length), ...keys, ...args);
    run(false)
      .catch((error: unknown) => {
        if (!isNoScript(error)) throw error;
        return run(true);
      })
      .then(
        (replies) => this.answer(batch, replies),
        (error: unknown) => {
          for (const waiters of batch) for (const waiter of waiters) waiter.reject(error);
        },
      );
  }

  /** Each key's waiters, in the script's order, get their counts from its replies. */
  private answer(batch: readonly Waiter[][], replies: RedisReply): void {
    const at = Date.now();
    batch.forEach((waiters, i) => {
      const total = Array.isArray(replies) ? Number(replies[2 * i]) : NaN;
      const ttl = Array.isArray(replies) ? Number(replies[2 * i + 1]) : NaN;
      if (!Number.isFinite(total) || !Number.isFinite(ttl)) {
        const error = new TypeError('unexpected reply from the rate limit script');
        for (const waiter of waiters) waiter.reject(error);
        return;
      }
      const resetTime = new Date(at + ttl);
      const first = total - waiters.length;
      waiters.forEach((waiter, place) => waiter.resolve({ totalHits: first + place + 1, resetTime }));
    });
  }
}
