import { readFileSync } from 'node:fs';
import { Redis, type RedisOptions } from 'ioredis';
import pg from 'pg';
import { logConnectionState, reconnectBackoff } from '../jobs/redis.js';
import type { JSONWebKeySet } from 'jose';
import type { Caller } from '../auth/caller.js';
import { createJwtVerifier, type JwtKey } from '../auth/jwt.js';
import type { Config } from '../config.js';
import type { Logger } from '../logger.js';

// Every client the service opens is built here, in main/, and handed down (or a factory for it):
// nothing below src/main reads the environment or files, or dials a server by itself.
// (PostgreSQL pools are built with db/pool.ts's createPool, called from service.ts.)

/**
 * A connection for adding jobs. It fails fast rather than queueing commands while Redis is
 * down (enableOfflineQueue: false, as BullMQ advises for producers behind an HTTP API) and gives
 * up on a command that takes over a second, so a slow Redis never holds up a caller.
 */
export function createProducerConnection(redisUrl: string, log: Logger): Redis {
  const options: RedisOptions = {
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    commandTimeout: 1_000,
    connectTimeout: 2_000,
    retryStrategy: reconnectBackoff,
  };
  const connection = new Redis(redisUrl, options);
  logConnectionState(connection, log, 'producer');
  return connection;
}

/**
 * The rate limiter's connection (only when a limit is on). Like the producer's it never queues
 * a command while Redis is away, and it gives up on one after a second: the limiter then lets the
 * request through uncounted, so a Redis that is down or slow costs a request that long at most.
 * Not less: the timeout also fires when the reply has come but the process is too busy to read
 * it in time, and at 250 ms a flood on two saturated cores let 9 of its 60 requests through
 * uncounted. Every limited request sends one command: those of concurrent requests go in one
 * write (auto-pipelining).
 */
export function createLimiterConnection(redisUrl: string, log: Logger): Redis {
  const connection = new Redis(redisUrl, {
    enableAutoPipelining: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    commandTimeout: 1_000,
    connectTimeout: 2_000,
    retryStrategy: reconnectBackoff,
  });
  logConnectionState(connection, log, 'rate limiter');
  return connection;
}

/**
 * The release worker's connection. Workers keep retrying commands while Redis is away
 * (maxRetriesPerRequest: null, which BullMQ requires for a worker's connection and its blocking
 * duplicate), and reconnect forever. BullMQ duplicates it for its blocking reads and closes only
 * the duplicate: the caller closes this one after the worker.
 */
export function createWorkerConnection(redisUrl: string, log: Logger): Redis {
  const connection = new Redis(redisUrl, { maxRetriesPerRequest: null, retryStrategy: reconnectBackoff });
  // The worker logs its own state; this listener only keeps an error from going unheard.
  connection.on('error', (err: unknown) => log.debug({ err }, 'worker redis connection error'));
  return connection;
}

/**
 * Opens the dedicated LISTEN connection (outside the pool), anew on each reconnection. This
 * connection only listens, so nothing else would notice it die without a word (a host gone, a
 * firewall dropping it): TCP probes start after 10 s of silence rather than the system's default
 * two hours.
 */
export function notificationClientFactory(databaseUrl: string): () => pg.Client {
  return () =>
    new pg.Client({
      connectionString: databaseUrl,
      application_name: 'token-lease-listener',
      keepAlive: true,
      keepAliveInitialDelayMillis: 10_000,
    });
}

/** The version in package.json (at the repository root, from src/main and from dist/main). */
export function packageVersion(): string {
  const text = readFileSync(new URL('../../package.json', import.meta.url), 'utf8');
  const { version } = JSON.parse(text) as { version?: unknown };
  return typeof version === 'string' ? version : '0.0.0';
}

/**
 * The verifier of callers' JWTs (AUTH_MODE=jwt), with its one key: a JWKS file is read here, at
 * start, never fetched. Undefined in AUTH_MODE=none.
 */
export function jwtVerifierFor(config: Pick<Config, 'authMode' | 'jwt'>): ((token: string) => Promise<Caller>) | undefined {
  if (config.authMode !== 'jwt') return undefined;
  const { secret, publicKey, jwksFile, issuer, audience } = config.jwt;
  const key: JwtKey =
    secret !== undefined
      ? { kind: 'secret', secret }
      : publicKey !== undefined
        ? { kind: 'public', pem: publicKey }
        : { kind: 'jwks', jwks: JSON.parse(readFileSync(jwksFile ?? '', 'utf8')) as JSONWebKeySet };
  return createJwtVerifier({ key, issuer, audience });
}
