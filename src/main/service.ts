import { createApiKeyVerifier, KEY_CACHE_MAX_AGE_MS } from '../auth/apiKeys.js';
import type { BearerVerifier } from '../auth/caller.js';
import type { Config } from '../config.js';
import { ensureDatabase, migrate } from '../db/migrate.js';
import { createPool } from '../db/pool.js';
import { randomUUID } from 'node:crypto';
import { CHANGES_CHANNEL, CLIENT_ACKS_CHANNEL, CLIENTS_CHANNEL, listenForNotifications, WAITERS_CHANNEL } from '../db/notifications.js';
import { createApiClients, type ApiClients } from '../domain/clients.js';
import { createLeasesByPool, type Leases } from '../domain/leases.js';
import { maintain } from '../domain/maintenance.js';
import { createPoolDirectory, createPools, getPoolId, type PoolDirectory, type Pools } from '../domain/pools.js';
import { createActivityCounter, type ActivityCounter } from '../domain/activity.js';
import { createStats, type Stats } from '../domain/stats.js';
import { createValueSealer } from '../domain/values.js';
import { createWaitingRoom, type WaitingRoom } from '../domain/waiting.js';
import { valueSealedElsewhere } from '../db/tokenValues.js';
import { webhookSecretSealedElsewhere } from '../db/webhooks.js';
import { createEventFeed, type EventFeed } from '../domain/eventFeed.js';
import { createHttp, type RateLimits } from '../http/app.js';
import { createEventStreams, type EventStreams } from '../http/eventRoutes.js';
import { createReadModel, type ChangeChannel, type ReadModel } from '../http/readModel.js';
import { createReleaseQueue } from '../jobs/queue.js';
import { startReleaseWorker } from '../jobs/releaseWorker.js';
import { startMaintenance } from '../jobs/maintenance.js';
import { startSweeper } from '../jobs/sweep.js';
import { createDeliveryQueue, startDeliveryWorker } from '../jobs/deliveries.js';
import { createWebhooks, type Webhooks } from '../domain/webhooks.js';
import { createWebhookPoster } from '../domain/webhookPost.js';
import type { Logger } from '../logger.js';
import { createMetrics, registerProcessGauges, registerTokenGauge, type Metrics } from '../metrics.js';
import { listen } from './api.js';
import { createLimiterConnection, createProducerConnection, createWorkerConnection, jwtVerifierFor, limiterCommands, notificationClientFactory, packageVersion } from './clients.js';
import { createShutdown } from './shutdown.js';

export interface Service {
  readonly leases: Leases;
  readonly apiClients: ApiClients;
  /** Named pools: making and changing them, finding them by name, each one's lease operations. */
  readonly pools: { readonly pools: Pools; readonly directory: PoolDirectory; readonly leasesOf: (pool: { readonly id: number; readonly name: string }) => Leases };
  readonly metrics: Metrics;
  /** GET /api/stats's reads. */
  readonly stats: Stats;
  /** The event log and this process's streams of it; absent for ROLE=worker. */
  readonly events: { readonly feed: EventFeed; readonly streams: EventStreams } | undefined;
  /** The webhooks and how a replay makes its job run now. */
  readonly webhooks: { readonly webhooks: Webhooks; readonly runNow: (deliveryId: number) => Promise<void> };
  /** The HTTP port: the token API (ROLE all or api) or only health and metrics (worker). */
  readonly port: number;
  stop(reason: string): Promise<boolean>;
}

/**
 * Wires one process for its ROLE. Every role migrates, seeds and serves /healthz, /readyz and
 * /metrics; `api` and `all` serve the token API; `worker` and `all` run the release worker and
 * the sweep. Nothing waits for Redis: the service starts, and serves, while Redis is down.
 */
export async function startService(config: Config, log: Logger): Promise<Service> {
  const shutdown = createShutdown(log);
  try {
    // Before any connection: a key that cannot be used stops the start here.
    const verifyJwt = jwtVerifierFor(config);
    await ensureDatabase(config.databaseUrl, log);
    await migrate(config.databaseUrl, log);

    const pool = createPool(
      {
        connectionString: config.databaseUrl,
        max: config.databasePoolMax,
        statementTimeoutMs: config.databaseStatementTimeoutMs,
        connectTimeoutMs: config.databaseConnectTimeoutMs,
        idleTimeoutMs: config.databaseIdleTimeoutMs,
        applicationName: `token-lease-${config.role}`,
      },
      log,
    );
    shutdown.add('database pool', () => pool.end());
    // A value this key cannot open would fail its holder's activation, and a webhook secret its
    // deliveries: refuse to start instead.
    const values = createValueSealer(config.tokenValueKey);
    const sealed = [
      ["tokens' values", valueSealedElsewhere],
      ['webhook secrets', webhookSecretSealedElsewhere],
    ] as const;
    for (const [what, sealedElsewhere] of sealed) {
      if (await sealedElsewhere(pool, values.keyId)) {
        throw new Error(
          config.tokenValueKey === null
            ? `${what} are sealed with a TOKEN_VALUE_KEY, which is not set`
            : `${what} are sealed with another TOKEN_VALUE_KEY than the one set`,
        );
      }
    }

    const metrics = createMetrics({ defaultMetrics: true });
    const producer = createProducerConnection(config, log);
    shutdown.add('redis connection', async () => {
      await producer.quit().catch(() => producer.disconnect());
    });
    const releases = createReleaseQueue({
      connection: producer,
      prefix: config.redisPrefix,
      batchMs: config.releaseJobBatchMs,
      log,
      metrics,
    });
    shutdown.add('release queue', () => releases.close());
    const deliveryQueue = createDeliveryQueue({ connection: producer, prefix: config.redisPrefix, log });
    shutdown.add('delivery queue', () => deliveryQueue.close());
    const webhooks = {
      webhooks: createWebhooks({
        pool,
        retryScheduleMs: config.webhooks.retryScheduleMs,
        rotationGraceMs: config.webhooks.rotationGraceMs,
        allowPrivate: config.webhooks.allowPrivate,
        sealer: values,
      }),
      runNow: (deliveryId: number) => deliveryQueue.runNow(deliveryId),
    };

    // API processes hear of freed tokens (for waiting clients) and of each other's changes (for
    // the cached token list) through LISTEN/NOTIFY, on a connection of their own.
    // With AUTH_MODE=api_key, of revoked API clients too.
    let waitingRoom: WaitingRoom | undefined;
    let channel: ChangeChannel | undefined;
    let listening: (() => boolean) | undefined;
    let verifyBearer: BearerVerifier | undefined = verifyJwt;
    const notifications =
      config.role === 'worker'
        ? undefined
        : listenForNotifications({
            newClient: notificationClientFactory(config.databaseUrl),
            channels: [WAITERS_CHANNEL, CHANGES_CHANNEL, CLIENTS_CHANNEL, CLIENT_ACKS_CHANNEL],
            log,
          });
    const apiClients = createApiClients({
      pool,
      acks: notifications && {
        subscribe: (listener) =>
          notifications.subscribe(CLIENT_ACKS_CHANNEL, (clientId, pid) => {
            if (clientId !== null && pid !== undefined) listener(clientId, pid);
          }),
        timeoutMs: KEY_CACHE_MAX_AGE_MS,
      },
      log,
    });
    if (notifications !== undefined) {
      shutdown.add('notification connection', () => notifications.close());
      listening = () => notifications.isListening();
      channel = {
        subscribe: (listener) => notifications.subscribe(CHANGES_CHANNEL, listener),
        publish: (payload) => notifications.notify(CHANGES_CHANNEL, payload),
        isListening: () => notifications.isListening(),
      };
      if (config.maxWaiters > 0) {
        const wakeUps = {
          subscribe: (wake: (poolId: number | null) => void) =>
            notifications.subscribe(WAITERS_CHANNEL, (payload) => {
              // The payload names the pool (sql/wake_waiters.sql); null after a reconnection.
              const poolId = payload === null ? NaN : Number(payload);
              wake(Number.isInteger(poolId) ? poolId : null);
            }),
        };
        waitingRoom = createWaitingRoom({ pool, wakeUps, maxWaiters: config.maxWaiters, log });
      }
      if (config.authMode === 'api_key') {
        const verifyApiKey = createApiKeyVerifier({
          findByKeyHash: (hash) => apiClients.findByKeyHash(hash),
          touch: (clientId) => apiClients.touch(clientId),
          revocations: {
            subscribe: (listener) => notifications.subscribe(CLIENTS_CHANNEL, listener),
            isListening: () => notifications.isListening(),
          },
          log,
        });
        shutdown.add('api key cache', () => verifyApiKey.close());
        verifyBearer = verifyApiKey;
      }
      // Every API process, in every AUTH_MODE, acknowledges a revocation once its key cache (above)
      // has dropped the key: the revoking request waits for all of them (src/domain/clients.ts).
      // Sent on the listening connection, after the notification it answers.
      notifications.subscribe(CLIENTS_CHANNEL, (clientId) => {
        if (clientId === null) return;
        notifications.notify(CLIENT_ACKS_CHANNEL, clientId).catch((err: unknown) => {
          log.warn({ err, clientId }, 'a revocation could not be acknowledged');
        });
      });
    }

    // Refused and waiting activations, counted by the processes that serve them.
    let activity: ActivityCounter | undefined;
    if (config.role !== 'worker') {
      const counter = createActivityCounter({ pool, log, flushMs: config.statsFlushMs });
      shutdown.add('activity counts', () => counter.close());
      activity = counter;
    }

    // Each pool's lease operations; the default pool's serve /api/tokens, the release jobs and
    // the sweep (which act on leases of every pool). A pool's own settings win over these.
    const leasesOf = createLeasesByPool({
      pool,
      leaseTtlMs: config.leaseTtlMs,
      maxLeaseMs: config.maxLeaseMs,
      evictOldest: config.poolFullPolicy === 'evict_oldest',
      log,
      metrics,
      scheduler: releases,
      waitingRoom,
      activity,
      values,
    });
    const leases = leasesOf({ id: await getPoolId(pool, 'default'), name: 'default' });
    const serviceSettings = {
      leaseTtlMs: config.leaseTtlMs,
      maxLeaseMs: config.maxLeaseMs,
      fullPolicy: config.poolFullPolicy,
      maxWaiters: config.maxWaiters,
    };
    const pools = {
      pools: createPools({ pool, service: serviceSettings, log }),
      directory: createPoolDirectory({ pool, service: serviceSettings }),
      leasesOf,
    };
    let readModel: ReadModel | undefined;
    if (config.role !== 'worker') {
      const model = createReadModel({
        listTokens: () => leases.listTokens(),
        channel,
        processId: randomUUID(),
        log,
        maxAgeMs: config.listCacheMaxAgeMs,
        privateHolders: config.authMode !== 'none',
      });
      shutdown.add('change announcements', () => model.close());
      readModel = model;
    }
    // Tokens added here change the list the other API processes may be keeping.
    if ((await leases.seedPool(config.poolSize)) > 0) readModel?.changed();

    if (config.role !== 'api') {
      registerTokenGauge(metrics, () => pools.pools.list());
      const workerConnection = createWorkerConnection(config, log);
      // Added first, so closed after the worker (shutdown runs in reverse).
      shutdown.add('worker redis connection', () => workerConnection.disconnect());
      const worker = startReleaseWorker({
        connection: workerConnection,
        prefix: config.redisPrefix,
        concurrency: config.releaseConcurrency,
        lockMs: config.releaseJobLockMs,
        leases,
        log,
        metrics,
      });
      shutdown.add('release worker', () => worker.close());
      const sweeper = startSweeper({
        sweep: leases.sweep,
        intervalMs: config.sweepIntervalMs,
        log,
        metrics,
      });
      shutdown.add('sweeper', () => sweeper.stop());
      const upkeep = startMaintenance({
        maintain: () =>
          maintain({
            pool,
            log,
            vacuumDeadRows: config.vacuumDeadRows,
            historyRetentionDays: config.historyRetentionDays,
          }),
        intervalMs: config.maintenanceIntervalMs,
        log,
        metrics,
      });
      shutdown.add('maintenance', () => upkeep.stop());

      // Webhook deliveries: this worker follows the event log into deliveries and attempts them
      // (src/jobs/deliveries.ts), on a Redis connection of its own like the release worker's.
      const deliveryConnection = createWorkerConnection(config, log);
      shutdown.add('delivery worker redis connection', () => deliveryConnection.disconnect());
      const poster = createWebhookPoster({ allowPrivate: config.webhooks.allowPrivate });
      shutdown.add('webhook connections', () => poster.close());
      const deliveryFeed = createEventFeed({ pool, log });
      shutdown.add('delivery event feed', () => deliveryFeed.close());
      const deliveries = startDeliveryWorker({
        connection: deliveryConnection,
        queue: deliveryQueue,
        prefix: config.redisPrefix,
        concurrency: config.webhooks.concurrency,
        lockMs: config.releaseJobLockMs,
        webhooks: webhooks.webhooks,
        poster,
        feed: deliveryFeed,
        sweepIntervalMs: config.sweepIntervalMs,
        log,
        metrics,
      });
      shutdown.add('delivery worker', () => deliveries.close());

      // Whenever Redis (re)appears, possibly empty after a restart, give every open lease its
      // release job back; jobs that still exist are left alone.
      const resync = () => {
        releases.resync(leases).then(
          (count) => log.info({ count }, 'release jobs re-added for open leases'),
          (err: unknown) => log.warn({ err }, 'release jobs could not be re-added; the sweep covers them'),
        );
      };
      producer.on('ready', resync);
      if (producer.status === 'ready') resync();
    }

    const room = waitingRoom;
    registerProcessGauges(metrics, {
      dbPool: pool,
      ready: () => leases.ping(),
      waiting: room === undefined ? undefined : { size: () => room.size(), max: config.maxWaiters },
      listening,
      // Like token_lease_tokens: read by the processes that run the worker role, the same in each.
      releaseJobs: config.role === 'api' ? undefined : () => releases.jobCounts(),
    });

    if (config.role !== 'worker' && config.adminApiKey === undefined) {
      log.warn(
        'ADMIN_API_KEY is not set: POST /api/tokens/clear and every admin route are open to anyone who can reach this server',
      );
    }
    if (config.role !== 'worker' && config.authMode === 'none') {
      log.warn('AUTH_MODE=none: anyone who can reach this server may lease, release or renew for any user');
    }
    let rateLimits: RateLimits | undefined;
    if (config.role !== 'worker' && (config.rateLimitPerMinute > 0 || config.adminRateLimitPerMinute > 0)) {
      const limiter = createLimiterConnection(config, log);
      shutdown.add('rate limiter redis connection', async () => {
        await limiter.quit().catch(() => limiter.disconnect());
      });
      rateLimits = {
        leasePerMinute: config.rateLimitPerMinute,
        adminPerMinute: config.adminRateLimitPerMinute,
        sendCommand: limiterCommands(limiter),
        redisPrefix: config.redisPrefix,
      };
    }
    const stats = createStats({ pool });
    // API processes follow the event log for their streams, woken by the change announcements
    // every API process sends after its writes (and every 100 ms, for the worker's).
    let events: { feed: EventFeed; streams: EventStreams } | undefined;
    if (config.role !== 'worker') {
      const feed = createEventFeed({ pool, log, wakeUps: channel });
      shutdown.add('event feed', () => feed.close());
      events = { feed, streams: createEventStreams({ feed, maxStreams: config.maxStreams, log, metrics }) };
    }
    const { listener } = createHttp({
      leases,
      log,
      metrics,
      adminApiKey: config.adminApiKey,
      adminKeyGuessesPerMinute: config.adminKeyGuessesPerMinute,
      authMode: config.authMode,
      verifyBearer,
      apiClients,
      corsOrigins: config.corsOrigins,
      trustProxy: config.trustProxy,
      version: packageVersion(),
      serveApi: config.role !== 'worker',
      redisPing: () => releases.ping(),
      readModel,
      rateLimits,
      pools,
      stats,
      events,
      webhooks,
      // The queues this process adds jobs to; served by API processes only, like every page.
      queueBoard: { queues: [releases.queue, deliveryQueue.queue], write: config.queueBoardWrite },
      fastLane: config.fastLane,
    });
    const http = await listen(listener, config, log);
    shutdown.add('http server', () => http.close());
    // Runs before the server's close: open streams would hold it until they end by themselves.
    if (events !== undefined) {
      const { streams } = events;
      shutdown.add('event streams', () => streams.close());
    }
    // Runs before the server's close waits for requests in flight: waiting clients are answered
    // 503 at once instead of holding the shutdown for up to a minute.
    if (waitingRoom !== undefined) {
      const room = waitingRoom;
      shutdown.add('waiting clients', () => room.close());
    }

    return { leases, apiClients, pools, metrics, stats, events, webhooks, port: http.port, stop: (reason) => shutdown.run(reason) };
  } catch (error) {
    await shutdown.run('start-up failed');
    throw error;
  }
}
