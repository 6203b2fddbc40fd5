import type { IncomingMessage, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import proxyaddr from 'proxy-addr';
import { ANONYMOUS, hasScope, type Caller } from '../auth/caller.js';
import type { Leases } from '../domain/leases.js';
import { AppError, ERRORS } from '../errors.js';
import type { Logger } from '../logger.js';
import { maySeeHolder, type AuthMode, type CallerCheck } from './authenticate.js';
import { BODY_LIMIT_BYTES } from './body.js';
import { answerableError, bodyError, writeError } from './errors.js';
import { writeJson } from './json.js';
import { keyOf, type Counted } from './rateLimit.js';
import { listFor, type ReadModel, type Rendered } from './readModel.js';
import { requestIdFrom } from './requestId.js';
import type { RequestRecorder } from './requestLog.js';
import { activatingUser, activation, release, type ActivationTarget, type JsonAnswer } from './routes.js';

// The fast lane (HTTP_FAST_LANE, on by default): the three requests that carry the traffic,
// POST /api/tokens/activate, POST /api/tokens/:id/release and GET /api/tokens, served on Node's
// own request and response without Express, through the same functions as Express's routes
// (src/http/routes.ts) and with everything Express's path does to them: the request id, the
// security and CORS headers (helmet's and cors's middleware, which take Node's objects), the
// caller (callerCheck), the lease budget (the same store and headers as express-rate-limit),
// the body (JSON, at most 16 KiB), the log line and the histogram, and the same error answers.
// Express costs each request about 0.1 ms of CPU on its own; docs/performance.md has the figures.
//
// It takes only requests it answers exactly as Express would: the exact path, and for a body a
// Content-Length of 1 to 16 KiB of `application/json` (UTF-8), unencoded, with no query string
// and no conditional headers. Everything else (other spellings of the path, ?wait=, chunked or
// encoded bodies, other types) goes to Express untouched. test/fastLane.test.ts sends the same
// requests both ways and compares the answers; the rest of the suite runs with the lane on.

/** Serves a request and returns true, or returns false without touching it. */
export type FastLane = (req: IncomingMessage, res: ServerResponse) => boolean;

/** Connect-style middleware (helmet, cors): sets headers and calls next. */
type Middleware = (req: IncomingMessage, res: ServerResponse, next: (err?: unknown) => void) => void;

export interface FastLaneDeps {
  readonly leases: Leases;
  readonly write: ReadModel['write'];
  readonly readModel: ReadModel;
  /** The default pool, as Express's activate route finds it. */
  readonly target: () => ActivationTarget | Promise<ActivationTarget>;
  readonly mode: AuthMode;
  /** Who is calling; with AUTH_MODE=none nobody is asked, as on Express's lease routes. */
  readonly check: CallerCheck;
  /** Whether a lease request needs the caller's `lease` scope (AUTH_MODE=api_key). */
  readonly leaseScope: boolean;
  /** The lease budget's count; undefined when it is off. */
  readonly count: ((key: string) => Promise<Counted>) | undefined;
  /** What Express's app runs on every answer first: helmet's headers, then cors's when it is on. */
  readonly headers: readonly Middleware[];
  /** TRUST_PROXY: the client's address as Express reads it. */
  readonly trustProxy: number;
  readonly record: RequestRecorder;
  readonly log: Logger;
}

const JSON_TYPES: ReadonlySet<string> = new Set(['application/json', 'application/json; charset=utf-8', 'application/json;charset=utf-8']);
const RELEASE_PREFIX = '/api/tokens/';
const RELEASE_SUFFIX = '/release';
const PLAIN_ID = /^[0-9A-Za-z-]{1,64}$/;
const INVALID_JSON = bodyError('entity.parse.failed');
const ABORTED = bodyError('request.aborted');

type Route = '/api/tokens' | '/api/tokens/activate' | '/api/tokens/:id/release';

/** A request's id, and the error code it was answered with, if any. */
interface Exchange {
  readonly reqId: string;
  code: string | undefined;
}

export function createFastLane(deps: FastLaneDeps): FastLane {
  const { log, record } = deps;
  const trust = (_address: string, hop: number) => hop < deps.trustProxy;
  const addressOf = (req: IncomingMessage) => proxyaddr(req, trust);

  /** The caller, counted against the lease budget: what Express's routes run before their handlers. */
  async function admit(req: IncomingMessage, res: ServerResponse, lease: boolean): Promise<Caller> {
    const from = {
      get ip() {
        return addressOf(req);
      },
    };
    let caller = ANONYMOUS;
    if (deps.mode !== 'none') {
      const checked = deps.check(req.headers.authorization, from);
      caller = checked instanceof Promise ? await checked : checked;
    }
    if (!lease) return caller;
    if (deps.count !== undefined) {
      const counted = await deps.count(keyOf(caller, from.ip));
      for (const [name, value] of counted.headers) res.appendHeader(name, value);
      if (counted.refused !== undefined) throw counted.refused;
    }
    if (deps.leaseScope && !hasScope(caller, 'lease')) {
      throw new AppError(ERRORS.forbidden, { reason: 'missing_scope', scope: 'lease' });
    }
    return caller;
  }

  /** Answers the request; what it answered goes into `exchange` for the log line. */
  async function serve(req: IncomingMessage, res: ServerResponse, route: Route, exchange: Exchange): Promise<void> {
    const { reqId } = exchange;
    try {
      if (route === '/api/tokens') {
        const caller = await admit(req, res, false);
        const rendered: Rendered = deps.readModel.currentRendered() ?? (await deps.readModel.getRendered());
        writeJson(res, 200, listFor(rendered, { full: maySeeHolder(deps.mode, caller, ''), userId: caller.userId }));
        return;
      }
      const caller = await admit(req, res, true);
      const body = await readJson(req);
      let answer: JsonAnswer;
      if (route === '/api/tokens/activate') {
        const userId = activatingUser(caller, body);
        answer = await activation(deps.write, await deps.target(), userId, caller, { waitMs: 0, reqId });
      } else {
        const id = (req.url ?? '').slice(RELEASE_PREFIX.length, -RELEASE_SUFFIX.length);
        answer = { status: 200, json: await release(deps.write, deps.leases, caller, id, body, reqId) };
      }
      if (answer.location !== undefined) res.setHeader('Location', answer.location);
      writeJson(res, answer.status, answer.json);
    } catch (error) {
      fail(req, res, exchange, error);
    }
  }

  /** Answers `error` as Express's error handler would. */
  function fail(req: IncomingMessage, res: ServerResponse, exchange: Exchange, error: unknown): void {
    const known = answerableError(error, log, { method: req.method ?? '', url: req.url ?? '' });
    if (res.headersSent) return;
    exchange.code = known.code;
    writeError(res, known);
  }

  return (req, res) => {
    const route = laneRouteOf(req);
    if (route === undefined) return false;
    const started = performance.now();
    const exchange: Exchange = { reqId: requestIdFrom(req.headers['x-request-id']), code: undefined };
    res.setHeader('X-Request-Id', exchange.reqId);
    res.once('finish', () => {
      const { reqId, code } = exchange;
      record({ reqId, method: req.method ?? '', url: req.url ?? '', route, status: res.statusCode, code, ms: performance.now() - started });
    });
    // The headers' middleware, then serve(), which answers every error itself: the catch is for
    // a bug in that.
    let index = 0;
    const next = (err?: unknown) => {
      const step = deps.headers[index];
      index += 1;
      if (err !== undefined) fail(req, res, exchange, err);
      else if (step === undefined) serve(req, res, route, exchange).catch(failed);
      else step(req, res, next);
    };
    const failed = (err: unknown) => {
      log.error({ err, method: req.method, url: req.url }, 'request failed');
      res.destroy();
    };
    next();
    return true;
  };
}

/** The route a request is for, if the lane takes it; undefined leaves it to Express. */
export function laneRouteOf(req: Pick<IncomingMessage, 'method' | 'url' | 'headers'>): Route | undefined {
  const { url, method, headers } = req;
  if (method === 'GET') {
    if (url !== '/api/tokens') return undefined;
    return headers['if-none-match'] === undefined && headers['if-modified-since'] === undefined ? '/api/tokens' : undefined;
  }
  if (method !== 'POST' || url === undefined) return undefined;
  const length = headers['content-length'];
  if (
    length === undefined ||
    headers['transfer-encoding'] !== undefined ||
    headers['content-encoding'] !== undefined ||
    !JSON_TYPES.has(headers['content-type']?.toLowerCase() ?? '')
  ) {
    return undefined;
  }
  const bytes = Number(length);
  if (!Number.isInteger(bytes) || bytes < 1 || bytes > BODY_LIMIT_BYTES) return undefined;
  if (url === '/api/tokens/activate') return url;
  if (url.startsWith(RELEASE_PREFIX) && url.endsWith(RELEASE_SUFFIX)) {
    const id = url.slice(RELEASE_PREFIX.length, -RELEASE_SUFFIX.length);
    return PLAIN_ID.test(id) ? '/api/tokens/:id/release' : undefined;
  }
  return undefined;
}

/** The request's body parsed as JSON, as express.json with `strict: false` gives it. */
function readJson(req: IncomingMessage): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    // A client gone before the end: nobody is left to answer, but the request must not hang.
    req.on('error', () => reject(ABORTED));
    req.on('close', () => reject(ABORTED));
    req.on('end', () => {
      const buffer = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
      // A leading byte order mark is dropped, as body-parser's decoding drops it.
      let text = buffer === undefined ? '' : buffer.toString('utf8');
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
      try {
        resolve(JSON.parse(text));
      } catch {
        reject(INVALID_JSON);
      }
    });
  });
}
