import type { RequestListener } from 'node:http';
import { performance } from 'node:perf_hooks';
import cors from 'cors';
import express, { type Express, type RequestHandler } from 'express';
import type { SendCommandFn } from './rateLimitStore.js';
import type { BearerVerifier } from '../auth/caller.js';
import type { ApiClients } from '../domain/clients.js';
import type { Leases } from '../domain/leases.js';
import { AppError, ERRORS } from '../errors.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import { within } from '../timeouts.js';
import { openApiDocument } from './contract.js';
import { adminPageAuth, authenticate, callerCheck, requireScope, type AuthMode } from './authenticate.js';
import { clientRoutes } from './clientRoutes.js';
import { leaseRoutes } from './leaseRoutes.js';
import { rateLimiter, type Limit } from './rateLimit.js';
import { createReadModel, type ReadModel } from './readModel.js';
import { errorCodeOf, errorHandler, methodNotAllowed, notFound } from './errors.js';
import { createFastLane, type FastLane } from './fastLane.js';
import { requestRecorder, type RequestRecorder } from './requestLog.js';
import { sendJson, sendSerializedJson } from './json.js';
import { createGuessGuard } from './guesses.js';
import { assignRequestId } from './requestId.js';
import { tokenRoutes } from './routes.js';
import { poolRoutes } from './poolRoutes.js';
import { statsRoutes } from './statsRoutes.js';
import { dashboardRoutes } from './dashboard.js';
import { docsRoutes } from './docs.js';
import { securityHeaders } from './headers.js';
import type { Stats } from '../domain/stats.js';
import type { PoolDirectory, Pools } from '../domain/pools.js';
import type { EventFeed } from '../domain/eventFeed.js';
import { eventRoutes, type EventStreams } from './eventRoutes.js';
import type { Webhooks } from '../domain/webhooks.js';
import { webhookRoutes } from './webhookRoutes.js';
import { queueBoardRoutes, type QueueBoardOptions } from './queueBoard.js';

export interface AppDeps {
  readonly leases: Leases;
  readonly log: Logger;
  readonly metrics: Metrics;
  readonly adminApiKey: string | undefined;
  /** AUTH_MODE: none (default), jwt or api_key, with the verifier of the mode's bearer credential. */
  readonly authMode?: AuthMode;
  readonly verifyBearer?: BearerVerifier | undefined;
  /** The API clients, for the admin routes that manage them; absent: those routes are not served. */
  readonly apiClients?: ApiClients | undefined;
  /** Browser origins allowed to call the API (CORS); none by default. */
  readonly corsOrigins?: readonly string[];
  /** How many proxies to trust for the client's address. */
  readonly trustProxy?: number;
  /** The service's version, for the OpenAPI document. */
  readonly version?: string;
  /** False for ROLE=worker: only /healthz, /readyz and /metrics are served. */
  readonly serveApi?: boolean;
  /** Reports Redis for /readyz; absent when this process does not use Redis. */
  readonly redisPing?: (() => Promise<void>) | undefined;
  /** The read model of GET /api/tokens (src/http/readModel.ts); absent: every request reads the pool. */
  readonly readModel?: ReadModel | undefined;
  /** ADMIN_KEY_GUESSES_PER_MINUTE (src/http/guesses.ts); 0 or absent: off. */
  readonly adminKeyGuessesPerMinute?: number;
  /** Requests per caller and minute on the lease and the admin routes (0: off), counted in Redis. */
  readonly rateLimits?: RateLimits | undefined;
  /** Named pools (src/http/poolRoutes.ts); absent: only the default pool's routes are served. */
  readonly pools?: {
    readonly pools: Pools;
    readonly directory: PoolDirectory;
    readonly leasesOf: (pool: { readonly id: number; readonly name: string }) => Leases;
  } | undefined;
  /** GET /api/stats (with named pools); absent: not served. */
  readonly stats?: Stats | undefined;
  /** The event log and this process's streams of it (src/http/eventRoutes.ts); absent: not served. */
  readonly events?: { readonly feed: EventFeed; readonly streams: EventStreams } | undefined;
  /** Webhooks (src/http/webhookRoutes.ts), and how a replay makes its job run now; absent: not served. */
  readonly webhooks?: { readonly webhooks: Webhooks; readonly runNow: (deliveryId: number) => Promise<void> } | undefined;
  /** The queue board at /admin/queues (src/http/queueBoard.ts) over these queues; absent: not served. */
  readonly queueBoard?: Omit<QueueBoardOptions, 'admit'> | undefined;
  /** HTTP_FAST_LANE: createHttp's listener serves the busiest requests without Express (src/http/fastLane.ts). */
  readonly fastLane?: boolean;
}

export interface RateLimits {
  readonly leasePerMinute: number;
  readonly adminPerMinute: number;
  /** Sends one command to the Redis that counts them. */
  readonly sendCommand: SendCommandFn;
  /** The service's REDIS_PREFIX. */
  readonly redisPrefix: string;
}

const READY_CHECK_TIMEOUT_MS = 1_000;

/** Builds the HTTP app, served by Express alone; it does not listen (tests use supertest). */
export function createApp(deps: AppDeps): Express {
  return createHttp(deps).app;
}

export interface Http {
  readonly app: Express;
  /** What main/ serves: the fast lane first, when it is on, then the app. */
  readonly listener: RequestListener;
}

export function createHttp(deps: AppDeps): Http {
  const { log, metrics } = deps;
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  if ((deps.trustProxy ?? 0) > 0) app.set('trust proxy', deps.trustProxy);

  const record = requestRecorder(log, metrics);
  app.use(observe(record));
  // On every answer: the security headers (src/http/headers.ts; the pages replace its policy
  // with their own), then CORS's when origins are allowed.
  const origins = deps.corsOrigins ?? [];
  const headers = [
    securityHeaders(),
    ...(origins.length > 0
      ? [
          cors({
            origin: [...origins],
            allowedHeaders: ['Authorization', 'Content-Type', 'X-Request-Id'],
            exposedHeaders: ['X-Request-Id', 'Retry-After', 'Location', 'WWW-Authenticate'],
            maxAge: 600,
          }),
        ]
      : []),
  ];
  for (const header of headers) app.use(header);
  const authMode = deps.authMode ?? 'none';
  let lane: FastLane | undefined;

  // The token API first: the router tries routes in order, and these carry the traffic.
  if (deps.serveApi ?? true) {
    const guesses = createGuessGuard({ perMinute: deps.adminKeyGuessesPerMinute ?? 0, log });
    const authOptions = { mode: authMode, verify: deps.verifyBearer, adminApiKey: deps.adminApiKey, guesses };
    // One check for Express's routes, the fast lane and the queue board.
    const check = callerCheck(authOptions);
    const auth = authenticate(check);
    // With AUTH_MODE=none only the admin routes ask who is calling; they authenticate themselves.
    if (authMode !== 'none') app.use('/api', auth);
    const limit = (budget: 'lease' | 'admin', perMinute: number, failuresOnly = false): Limit =>
      deps.rateLimits === undefined
        ? { handlers: [], count: undefined }
        : rateLimiter({
            budget,
            perMinute,
            sendCommand: deps.rateLimits.sendCommand,
            keyPrefix: `${deps.rateLimits.redisPrefix}:rate-limit:${budget}:`,
            log,
            metrics,
            failuresOnly,
          });
    const scopes = { mode: authMode, adminApiKey: deps.adminApiKey };
    // What each kind of route runs before its handler, once the caller is known. Lease routes:
    // their budget, and for API clients the lease scope (a JWT's user acts for itself). Admin
    // routes: who is calling (when that is not run for all of /api/), their budget (before the
    // check, so that guesses at the admin key spend it), then the admin scope. Nothing is added
    // for a limit that is off or a check the mode does not need.
    const leaseLimit = limit('lease', deps.rateLimits?.leasePerMinute ?? 0);
    const first = {
      lease: [...leaseLimit.handlers, ...(authMode === 'api_key' ? [requireScope('lease', scopes)] : [])],
      admin: [
        ...(authMode === 'none' ? [auth] : []),
        ...limit('admin', deps.rateLimits?.adminPerMinute ?? 0).handlers,
        requireScope('admin', scopes),
      ],
    };
    const readModel =
      deps.readModel ??
      createReadModel({
        listTokens: () => deps.leases.listTokens(),
        processId: 'uncached',
        log,
        maxAgeMs: 0,
        privateHolders: authMode !== 'none',
      });
    const { pools } = deps;
    const defaultPool =
      pools === undefined
        ? undefined
        : async () => ({ leases: deps.leases, maxWaiters: (await pools.directory.find('default')).maxWaiters });
    tokenRoutes(app, { leases: deps.leases, mode: authMode, first, readModel, defaultPool });
    if (deps.fastLane === true) {
      lane = createFastLane({
        leases: deps.leases,
        write: readModel.write.bind(readModel),
        readModel,
        target: defaultPool ?? (() => ({ leases: deps.leases })),
        mode: authMode,
        check,
        leaseScope: authMode === 'api_key',
        count: leaseLimit.count,
        headers,
        trustProxy: deps.trustProxy ?? 0,
        record,
        log,
      });
    }
    if (pools !== undefined) poolRoutes(app, { ...pools, mode: authMode, readModel, first });
    if (pools !== undefined && deps.stats !== undefined) statsRoutes(app, { stats: deps.stats, directory: pools.directory });
    leaseRoutes(app, { leases: deps.leases, mode: authMode, readModel, first });
    if (deps.apiClients !== undefined) clientRoutes(app, { clients: deps.apiClients, first: first.admin });
    dashboardRoutes(app);
    docsRoutes(app);
    if (deps.events !== undefined) eventRoutes(app, { ...deps.events, mode: authMode });
    if (deps.webhooks !== undefined) webhookRoutes(app, { ...deps.webhooks, first: first.admin });
    if (deps.queueBoard !== undefined) {
      // As on the admin routes: who is calling, their admin budget, then the check. The budget is
      // spent by refusals only (the page polls), so that guesses at the key spend it.
      const page = adminPageAuth(authOptions, check);
      const admit = [page.identify, ...limit('admin', deps.rateLimits?.adminPerMinute ?? 0, true).handlers, page.require];
      queueBoardRoutes(app, { ...deps.queueBoard, admit });
    }
    // Built and serialised once: it is generated from the schemas the routes use.
    const openApi = JSON.stringify(openApiDocument(deps.version ?? '0.0.0'));
    app
      .route('/openapi.json')
      .get((_req, res) => {
        sendSerializedJson(res, 200, openApi);
      })
      .all(methodNotAllowed(['GET']));
  }

  app
    .route('/healthz')
    .get((_req, res) => {
      sendJson(res, 200, { data: { status: 'ok' } });
    })
    .all(methodNotAllowed(['GET']));

  app
    .route('/readyz')
    .get(async (_req, res) => {
      const [postgres, redis] = await Promise.all([
        check(() => deps.leases.ping()),
        deps.redisPing === undefined ? Promise.resolve('not_used' as const) : check(deps.redisPing),
      ]);
      const checks = { postgres, redis };
      // Redis down degrades expiry precision but not correctness (the sweep and lazy expiry
      // cover it), so only PostgreSQL decides whether this process should get traffic.
      if (postgres !== 'up') {
        throw new AppError(ERRORS.not_ready, { checks });
      }
      sendJson(res, 200, { data: { status: 'ready', checks } });
    })
    .all(methodNotAllowed(['GET']));

  app
    .route('/metrics')
    .get(async (_req, res) => {
      res.type(metrics.registry.contentType).send(await metrics.registry.metrics());
    })
    .all(methodNotAllowed(['GET']));

  app.use(notFound);
  app.use(errorHandler(log));
  const fast = lane;
  return {
    app,
    listener:
      fast === undefined
        ? app
        : (req, res) => {
            if (!fast(req, res)) app(req, res);
          },
  };
}

/** 'up' when `probe` succeeds within READY_CHECK_TIMEOUT_MS; 'down' when it fails or is late. */
function check(probe: () => Promise<void>): Promise<'up' | 'down'> {
  return within(probe(), READY_CHECK_TIMEOUT_MS).then(
    () => 'up' as const,
    () => 'down' as const,
  );
}

/**
 * Request ids, the duration histogram and one log line per request (src/http/requestLog.ts),
 * from the first middleware. A client's X-Request-Id is echoed and logged only if it is short
 * and plain; else the request gets a random one. The duration runs from the request reaching the
 * app to its answer being handed to the socket ('finish').
 */
function observe(record: RequestRecorder): RequestHandler {
  return (req, res, next) => {
    const started = performance.now();
    const reqId = assignRequestId(req, res);
    res.once('finish', () => {
      const routePath = (req.route as { path?: unknown } | undefined)?.path;
      const route = typeof routePath === 'string' ? routePath : 'unmatched';
      record({ reqId, method: req.method, url: req.originalUrl, route, status: res.statusCode, code: errorCodeOf(res), ms: performance.now() - started });
    });
    next();
  };
}
