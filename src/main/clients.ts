import { readFileSync } from 'node:fs';
import { Cluster, Redis, type RedisOptions } from 'ioredis';
import pg from 'pg';
import type { RedisReply, SendCommandFn } from '../http/rateLimitStore.js';
import { logConnectionState, reconnectBackoff, type RedisConnection } from '../jobs/redis.js';
import type { JSONWebKeySet } from 'jose';
import type { BearerVerifier } from '../auth/caller.js';
import { createJwtVerifier, type JwtKey } from '../auth/jwt.js';
import type { Config } from '../config.js';
import type { Logger } from '../logger.js';
import { LISTENER_APPLICATION_NAME } from '../db/notifications.js';

// Every client the service opens is built here, in main/, and handed down (or a factory for it):
// nothing below src/main reads the environment or files, or dials a server by itself.
// (PostgreSQL pools are built with db/pool.ts's createPool, called from service.ts.)

/** Where every Redis connection goes. */
export type RedisTarget = Pick<Config, 'redisUrl' | 'redisClusterNodes'>;

/** What a connection does when Redis is away, and how it sends; the rest is per node. */
interface ConnectionOptions {
  /** Options of each server connection (a Cluster's redisOptions). */
  readonly node: Omit<RedisOptions, 'retryStrategy' | 'enableOfflineQueue' | 'enableAutoPipelining'>;
  readonly enableOfflineQueue: boolean;
  readonly enableAutoPipelining: boolean;
}

/**
 * One Redis, or a Cluster over REDIS_CLUSTER_NODES with the same options: a Cluster takes the
 * queueing and pipelining options itself and the rest for each node it connects to, and
 * reconnects as a whole (clusterRetryStrategy) with the same backoff. Every key the service
 * writes carries REDIS_PREFIX's hash tag (config.ts refuses a Cluster without one), so each
 * command and script BullMQ or the rate limiter sends stays within one slot.
 */
function connect(target: RedisTarget, options: ConnectionOptions): RedisConnection {
  const { node, enableOfflineQueue, enableAutoPipelining } = options;
  if (target.redisClusterNodes === null) {
    return new Redis(target.redisUrl, { ...node, enableOfflineQueue, enableAutoPipelining, retryStrategy: reconnectBackoff });
  }
  return new Cluster(target.redisClusterNodes.map(({ host, port }) => ({ host, port })), {
    redisOptions: node,
    enableOfflineQueue,
    enableAutoPipelining,
    clusterRetryStrategy: reconnectBackoff,
  });
}

/**
 * A connection for adding jobs. It fails fast rather than queueing commands while Redis is
 * down (enableOfflineQueue: false, as BullMQ advises for producers behind an HTTP API) and gives
 * up on a command that takes over a second, so a slow Redis never holds up a caller.
 */
export function createProducerConnection(target: RedisTarget, log: Logger): RedisConnection {
  const connection = connect(target, {
    node: { maxRetriesPerRequest: 1, commandTimeout: 1_000, connectTimeout: 2_000 },
    enableOfflineQueue: false,
    enableAutoPipelining: false,
  });
  logConnectionState(connection, log, 'producer');
  return connection;
}

/**
 * The rate limiter's connection (only when a limit is on). Like the producer's it never queues
 * a command while Redis is away, and it gives up on one after a second: the limiter then lets the
 * request through uncounted, so a Redis that is down or slow costs a request that long at most.
 * Not less: the timeout also fires when the reply has come but the process is too busy to read
 * it in time, and at 250 ms a flood on two saturated cores let 9 of its 60 requests through
 * uncounted. The store batches by itself, one command per turn of the event loop
 * (src/http/rateLimitStore.ts), written at once: ioredis's auto-pipelining, which holds commands
 * back to write those of one tick together, made the activate + release cycle slower when each
 * request sent its own (0.80 x limits off where writing at once did 1.03, measured back to back).
 */
export function createLimiterConnection(target: RedisTarget, log: Logger): RedisConnection {
  const connection = connect(target, {
    node: { maxRetriesPerRequest: 0, commandTimeout: 1_000, connectTimeout: 2_000 },
    enableOfflineQueue: false,
    enableAutoPipelining: false,
  });
  logConnectionState(connection, log, 'rate limiter');
  return connection;
}

/**
 * How the rate limiter sends its commands. On a Cluster, the store's SCRIPT LOAD names no
 * key, so the Cluster would send it to any one master, while the EVALSHA that runs the script
 * goes to the master of the counter's slot, which may not have it (NOSCRIPT, retried once after
 * another SCRIPT LOAD to any master, then counted as Redis being down). Loaded on every master,
 * the script is wherever the counters are, and after a failover the retry loads it on the new
 * master.
 */
export function limiterCommands(connection: RedisConnection): SendCommandFn {
  const send = (command: string, ...args: string[]) => connection.call(command, ...args) as Promise<RedisReply>;
  if (!(connection instanceof Cluster)) return send;
  return async (command, ...args) => {
    const masters = connection.nodes('master');
    if (command.toUpperCase() !== 'SCRIPT' || masters.length === 0) return send(command, ...args);
    const [sha] = await Promise.all(masters.map((node) => node.call(command, ...args) as Promise<RedisReply>));
    return sha as RedisReply;
  };
}

/**
 * The release worker's connection. Workers keep retrying commands while Redis is away
 * (maxRetriesPerRequest: null, which BullMQ requires for a worker's connection and its blocking
 * duplicate, and checks in a Cluster's redisOptions), and reconnect forever. BullMQ duplicates
 * it for its blocking reads and closes only the duplicate: the caller closes this one after the
 * worker.
 */
export function createWorkerConnection(target: RedisTarget, log: Logger): RedisConnection {
  const connection = connect(target, {
    node: { maxRetriesPerRequest: null },
    enableOfflineQueue: true,
    enableAutoPipelining: false,
  });
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
      application_name: LISTENER_APPLICATION_NAME,
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
export function jwtVerifierFor(config: Pick<Config, 'authMode' | 'jwt'>): BearerVerifier | undefined {
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
