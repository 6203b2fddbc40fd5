import type { Cluster, Redis } from 'ioredis';
import type { Logger } from '../logger.js';

/** A connection to one Redis (REDIS_URL) or to a Redis Cluster (REDIS_CLUSTER_NODES). */
export type RedisConnection = Redis | Cluster;

/** Reconnect forever, backing off to at most 2 s between attempts. */
export const reconnectBackoff = (attempt: number): number => Math.min(100 * 2 ** attempt, 2_000);

/**
 * Logs a Redis connection going down once, and coming back once, instead of every failed
 * reconnect attempt.
 */
export function logConnectionState(
  emitter: { on(event: 'error' | 'ready', listener: (err?: unknown) => void): unknown },
  log: Logger,
  what: string,
): void {
  let up = true;
  emitter.on('error', (err) => {
    if (!up) return;
    up = false;
    log.warn({ err, connection: what }, 'redis connection lost');
  });
  emitter.on('ready', () => {
    if (up) return;
    up = true;
    log.info({ connection: what }, 'redis connection restored');
  });
}
