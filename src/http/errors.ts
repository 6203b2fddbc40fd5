import type { ErrorRequestHandler, RequestHandler, Response } from 'express';
import { AppError, ERRORS, NotFoundError, PoolExhaustedError } from '../errors.js';
import type { Logger } from '../logger.js';
import { sendJson } from './json.js';

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

export function sendError(res: Response, error: AppError): void {
  res.locals.errorCode = error.code;
  if (error instanceof PoolExhaustedError) res.set('Retry-After', String(error.retryAfterSeconds));
  if (error.status === ERRORS.unavailable.status) res.set('Retry-After', '1');
  sendJson(res, error.status, {
    error: { code: error.code, message: error.message, details: error.details },
  });
}

export function errorHandler(log: Logger): ErrorRequestHandler {
  return (error: unknown, req, res, next) => {
    if (res.headersSent) {
      next(error);
      return;
    }
    const known = toAppError(error);
    if (known === null) {
      log.error({ err: error, method: req.method, url: req.originalUrl }, 'request failed');
      sendError(res, new AppError(ERRORS.internal));
      return;
    }
    if (known.status >= 500) {
      log.error({ err: known.cause ?? known, method: req.method, url: req.originalUrl }, 'request failed');
    }
    sendError(res, known);
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

