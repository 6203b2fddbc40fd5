import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import express, { type Express, type NextFunction, type Request, type Response } from 'express';
import type { LeaseChanges } from '../domain/changes.js';
import type { Leases } from '../domain/leases.js';
import { AppError } from '../errors.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import { within } from '../timeouts.js';
import { openApiDocument } from './contract.js';
import { LIST_MAX_AGE_MS } from './listCache.js';
import { errorCodeOf, errorHandler, methodNotAllowed, notFound } from './errors.js';
import { sendJson, sendSerializedJson } from './json.js';
import { tokenRoutes } from './routes.js';
import { RECEIVED_AT } from './server.js';

export interface AppDeps {
  readonly leases: Leases;
  readonly log: Logger;
  readonly metrics: Metrics;
  readonly adminApiKey: string | undefined;
  /** False for ROLE=worker: only /healthz, /readyz and /metrics are served. */
  readonly serveApi?: boolean;
  /** Reports Redis for /readyz; absent when this process does not use Redis. */
  readonly redisPing?: (() => Promise<void>) | undefined;
  /** Lets GET /api/tokens answer from memory while nothing has changed; absent: never cached. */
  readonly changes?: Pick<LeaseChanges, 'version' | 'isHeard'> | undefined;
  /** How long GET /api/tokens may be answered from memory at most; 0: never (no cache). */
  readonly listCacheMaxAgeMs?: number;
}

const READY_CHECK_TIMEOUT_MS = 1_000;
const REQUEST_ID = /^[\w.:-]{1,128}$/;

/** Builds the HTTP app; it does not listen (main/ does, tests use supertest). */
export function createApp(deps: AppDeps): Express {
  const { log, metrics } = deps;
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);

  observe(app, log, metrics);

  // The token API first: the router tries routes in order, and these carry the traffic.
  if (deps.serveApi ?? true) {
    tokenRoutes(app, {
      leases: deps.leases,
      adminApiKey: deps.adminApiKey,
      changes: deps.changes,
      listCacheMaxAgeMs: deps.listCacheMaxAgeMs ?? LIST_MAX_AGE_MS,
    });
    // Built and serialised once: it is generated from the schemas the routes use.
    const openApi = JSON.stringify(openApiDocument(packageVersion()));
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
        throw new AppError('not_ready', 503, 'PostgreSQL is unreachable', { checks });
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
  return app;
}

/** 'up' when `probe` succeeds within READY_CHECK_TIMEOUT_MS; 'down' when it fails or is late. */
function check(probe: () => Promise<void>): Promise<'up' | 'down'> {
  return within(probe(), READY_CHECK_TIMEOUT_MS).then(
    () => 'up' as const,
    () => 'down' as const,
  );
}

/**
 * Refusals that are the service working as intended, at a rate set by the load (a full pool
 * refuses every newcomer): logged at debug like successes, and counted by the metrics.
 */
const EXPECTED: ReadonlySet<string | undefined> = new Set(['pool_exhausted']);

function logLevelOf(status: number, code: string | undefined): 'error' | 'info' | 'debug' {
  if (status >= 500) return 'error';
  if (status >= 400 && !EXPECTED.has(code)) return 'info';
  return 'debug';
}

/**
 * Request ids, the duration histogram and one log line per request (5xx error, 4xx info with the
 * error code, the rest debug).
 *
 * It runs on every request, so the work is done where Node already passes, and not in a
 * middleware: a router layer of its own cost a cached GET /api/tokens 1.5 of its 20 µs of CPU.
 * The server notes when the request arrived (RECEIVED_AT, src/http/server.ts; app.handle notes
 * it for a server made elsewhere, as in tests), and the rest happens as the answer's head is
 * written. Node writes every answer's head through writeHead (res.end and res.write call it when
 * nothing did), so this app's response prototype gets a writeHead that adds X-Request-Id to the
 * headers it is given, records the duration and logs the line, then calls Node's. The obvious way
 * costs more: a 'finish' listener per request, and an X-Request-Id set as the request arrives,
 * which sends writeHead down Node's slower path that merges headers. Profiled under the bench's
 * load (the profiler's own cost included), a cached GET /api/tokens took 46 µs of CPU this way
 * against 52 µs that way.
 *
 * The duration runs from the request's arrival to its answer's head being written, which for
 * these answers, written whole, is the time the server took. One histogram child is kept per
 * (method, route, status), which saves prom-client's labels() lookup on each request. Answers
 * Node writes for the server without passing the request to the app (417 to an unsupported
 * Expect) are recorded too, as route "unmatched".
 */
function observe(app: Express, log: Logger, metrics: Metrics): void {
  const durations = new Map<string, Observer>();
  const durationOf = (method: string, route: string, status: number): Observer => {
    const key = `${method} ${status} ${route}`;
    let child = durations.get(key);
    if (child === undefined) {
      child = metrics.httpDuration.labels({ method, route, status });
      durations.set(key, child);
    }
    return child;
  };

  const response = app.response as Response & Observed;
  // Always called on a response, with Reflect.apply.
  // eslint-disable-next-line @typescript-eslint/unbound-method
  const nodeWriteHead = response.writeHead;
  response.writeHead = function writeHead(
    this: Response & Observed,
    statusCode: number,
    reason?: unknown,
    obj?: unknown,
  ) {
    const started = this[RECEIVED_AT];
    // An answer already recorded (a second call, which Node refuses) is only passed on.
    if (started === undefined) {
      return Reflect.apply(nodeWriteHead, this, [statusCode, reason, obj]) as Response;
    }
    this[RECEIVED_AT] = undefined;
    const ms = performance.now() - started;
    const { req } = this;
    // A client's request id is echoed and logged only if it is short and plain.
    const given = req.headers['x-request-id'];
    const reqId = typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID();
    // writeHead(status, headers) is taken as writeHead(status, undefined, headers), as Node takes
    // it. Headers given are copied with the id first (the caller's object is left alone); else
    // the id is set like any other header.
    if (typeof reason !== 'string') {
      obj ??= reason;
      reason = undefined;
    }
    if (isHeaderObject(obj)) obj = { 'X-Request-Id': reqId, ...obj };
    else this.setHeader('X-Request-Id', reqId);
    const routePath = (req.route as { path?: unknown } | undefined)?.path;
    const route = typeof routePath === 'string' ? routePath : 'unmatched';
    durationOf(req.method, route, statusCode).observe(ms / 1e3);
    const code = errorCodeOf(this);
    const level = logLevelOf(statusCode, code);
    if (log.isLevelEnabled(level)) {
      // originalUrl is Express's: a request Node answered itself has only url.
      const url = (req.originalUrl as string | undefined) ?? req.url;
      log[level]({ reqId, method: req.method, url, status: statusCode, code, ms }, 'request');
    }
    return Reflect.apply(nodeWriteHead, this, [statusCode, reason, obj]) as Response;
  };

  // HTTP/1.1 requires a Host header (RFC 9112 3.2). Node would refuse a request without one with
  // a bare 400 before the app saw it; src/http/server.ts leaves that to this app, which answers
  // with the JSON body and a request id like every other error. Such a request goes to an app
  // whose one middleware refuses it, and which builds requests and responses on this app's
  // prototypes (so this writeHead records the answer).
  const refusing = express();
  refusing.disable('x-powered-by');
  refusing.request = app.request;
  refusing.response = app.response;
  refusing.use((_req, _res, next) => {
    next(new AppError('bad_request', 400, 'an HTTP/1.1 request needs a Host header'));
  });
  refusing.use(errorHandler(log));

  // Express calls app.handle for every request, wherever the app is served
  // (express/lib/express.js); its types leave it out.
  const handled = app as Express & Handles;
  const expressHandle = handled.handle.bind(app);
  handled.handle = function handle(req, res, callback) {
    res[RECEIVED_AT] ??= performance.now();
    if (req.headers.host === undefined && req.httpVersionMajor === 1 && req.httpVersionMinor === 1) {
      (refusing as Express & Handles).handle(req, res, callback);
      return;
    }
    expressHandle(req, res, callback);
  };
}

function isHeaderObject(headers: unknown): headers is object {
  return typeof headers === 'object' && headers !== null && !Array.isArray(headers);
}

interface Handles {
  handle(req: Request, res: Response & Observed, callback?: NextFunction): void;
}

/** When the request arrived; cleared once its answer is recorded. */
interface Observed {
  [RECEIVED_AT]?: number | undefined;
}

/** The version in package.json (at the repository root, from src/http and from dist/http). */
function packageVersion(): string {
  const text = readFileSync(new URL('../../package.json', import.meta.url), 'utf8');
  const { version } = JSON.parse(text) as { version?: unknown };
  return typeof version === 'string' ? version : '0.0.0';
}

interface Observer {
  observe(value: number): void;
}
