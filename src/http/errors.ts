import type { ServerResponse } from 'node:http';
import type { ErrorRequestHandler, RequestHandler, Response } from 'express';
import { AppError, ERRORS, NotFoundError, PoolExhaustedError } from '../errors.js';
import type { Logger } from '../logger.js';
import { writeJson } from './json.js';

// The one place that writes error answers: {"error":{"code","message","details"}}.

interface HttpLikeError {
  type?: unknown;
  status?: unknown;
  expose?: unknown;
  message?: unknown;
}

// body-parser and the router report bad requests as http-errors with a `type`.
const BODY_ERRORS: Readonly<Record<string, AppError>> = {
  'entity.parse.failed': new AppError(ERRORS.invalid_json),
  'entity.too.large': new AppError(ERRORS.payload_too_large),
  'encoding.unsupported': new AppError(ERRORS.unsupported_media_type, { reason: 'content encoding' }),
  'charset.unsupported': new AppError(ERRORS.unsupported_media_type, { reason: 'charset' }),
  'request.aborted': new AppError(ERRORS.bad_request, { reason: 'the request was aborted' }),
  'request.size.invalid': new AppError(ERRORS.bad_request, { reason: 'the body does not match its Content-Length' }),
};

/** The answer to a body-parser error of `type` ('entity.parse.failed' and the others above). */
export function bodyError(type: keyof typeof BODY_ERRORS): AppError {
  const error = BODY_ERRORS[type];
  if (error === undefined) throw new Error(`no answer for body error ${type}`);
  return error;
}

function toAppError(error: unknown): AppError | null {
  if (error instanceof AppError) return error;
  const e = error as HttpLikeError | null;
  if (typeof e?.type === 'string' && Object.hasOwn(BODY_ERRORS, e.type)) return BODY_ERRORS[e.type] ?? null;
  // Any other client error the HTTP stack raised on purpose, such as a malformed URL encoding.
  if (typeof e?.status === 'number' && e.status >= 400 && e.status < 500 && e.expose === true) {
    return new AppError(ERRORS.bad_request, { reason: typeof e.message === 'string' ? e.message : undefined });
  }
  if (error instanceof URIError) return new AppError(ERRORS.bad_request, { reason: 'the URL is not valid' });
  return null;
}

/** The error code a response carried, for the request log line (see app.ts). */
export function errorCodeOf(res: Response): string | undefined {
  // No locals: Node wrote the answer without passing the request to Express (a 417).
  const locals = res.locals as Response['locals'] | undefined;
  const code: unknown = locals?.errorCode;
  return typeof code === 'string' ? code : undefined;
}

/** A 401: who is calling is not known; `challenge` is the answer's WWW-Authenticate. */
export class UnauthorizedError extends AppError {
  constructor(
    reason: string,
    readonly challenge: string,
  ) {
    super(ERRORS.unauthorized, { reason });
  }
}

/** The one header an error's answer carries besides the body, if any. */
function errorHeader(error: AppError): [name: string, value: string] | undefined {
  if (error instanceof PoolExhaustedError) return ['Retry-After', String(error.retryAfterSeconds)];
  if (error instanceof UnauthorizedError) return ['WWW-Authenticate', error.challenge];
  if (error.status === ERRORS.unavailable.status) return ['Retry-After', '1'];
  return undefined;
}

/**
 * Writes an error's answer to Node's response, for Express's routes (sendError) and the fast
 * lane alike. An error's status is never fresh, so even a conditional request needs no res.send.
 */
export function writeError(res: ServerResponse, error: AppError): void {
  const header = errorHeader(error);
  if (header !== undefined) res.setHeader(header[0], header[1]);
  writeJson(res, error.status, JSON.stringify({ error: { code: error.code, message: error.message, details: error.details } }));
}

export function sendError(res: Response, error: AppError): void {
  res.locals.errorCode = error.code;
  writeError(res, error);
}

/**
 * The AppError to answer a request's `error` with: the error itself, or what body-parser's and
 * the router's errors mean, or a 500 for anything else. What is the service's fault (a 5xx) is
 * logged here, with the request it failed.
 */
export function answerableError(error: unknown, log: Logger, request: { method: string; url: string }): AppError {
  const known = toAppError(error);
  if (known === null) {
    log.error({ err: error, method: request.method, url: request.url }, 'request failed');
    return new AppError(ERRORS.internal);
  }
  if (known.status >= 500) {
    log.error({ err: known.cause ?? known, method: request.method, url: request.url }, 'request failed');
  }
  return known;
}

export function errorHandler(log: Logger): ErrorRequestHandler {
  return (error: unknown, req, res, next) => {
    if (res.headersSent) {
      next(error);
      return;
    }
    sendError(res, answerableError(error, log, { method: req.method, url: req.originalUrl }));
  };
}

export const notFound: RequestHandler = (req) => {
  throw new NotFoundError({ method: req.method, path: req.path });
};

/** For a known path asked with a method it does not serve: 405 and the methods it does. */
export function methodNotAllowed(allowed: readonly string[]): RequestHandler {
  const allow = [...allowed, ...(allowed.includes('GET') ? ['HEAD'] : []), 'OPTIONS'].join(', ');
  return (req, res) => {
    res.set('Allow', allow);
    if (req.method === 'OPTIONS') {
      res.status(204).end();
      return;
    }
    throw new AppError(ERRORS.method_not_allowed, { method: req.method, allowed: allow.split(', ') });
  };
}

