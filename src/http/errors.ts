import { STATUS_CODES, type Server, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { ErrorRequestHandler, RequestHandler, Response } from 'express';
import { AppError, NotFoundError, PoolExhaustedError } from '../errors.js';
import type { Logger } from '../logger.js';
import { JSON_TYPE, sendJson } from './json.js';

// The one place that writes error answers: {"error":{"code","message","details"}}.

interface HttpLikeError {
  type?: unknown;
  status?: unknown;
  expose?: unknown;
  message?: unknown;
}

// body-parser and the router report bad requests as http-errors with a `type`; body.ts reports
// the same problems with the same answers.
const BODY_ERRORS = {
  'entity.parse.failed': new AppError('invalid_json', 400, 'the body is not valid JSON'),
  'entity.too.large': new AppError('payload_too_large', 413, 'the body is larger than 16 KiB'),
  'encoding.unsupported': new AppError('unsupported_media_type', 415, 'unsupported content encoding'),
  'charset.unsupported': new AppError('unsupported_media_type', 415, 'unsupported charset; use utf-8'),
  'request.aborted': new AppError('bad_request', 400, 'the request was aborted'),
  'request.size.invalid': new AppError('bad_request', 400, 'the body is shorter or longer than its Content-Length'),
} satisfies Record<string, AppError>;

/** The answer to a body problem, by body-parser's name for it. */
export function bodyError(type: keyof typeof BODY_ERRORS): AppError {
  return BODY_ERRORS[type];
}

function toAppError(error: unknown): AppError | null {
  if (error instanceof AppError) return error;
  const e = error as HttpLikeError | null;
  if (typeof e?.type === 'string' && Object.hasOwn(BODY_ERRORS, e.type)) {
    return BODY_ERRORS[e.type as keyof typeof BODY_ERRORS];
  }
  // Any other client error the HTTP stack raised on purpose, such as a malformed URL encoding.
  if (typeof e?.status === 'number' && e.status >= 400 && e.status < 500 && e.expose === true) {
    return new AppError('bad_request', e.status, typeof e.message === 'string' ? e.message : 'bad request');
  }
  if (error instanceof URIError) return new AppError('bad_request', 400, 'the URL is not valid');
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
  if (error.status === 503) res.set('Retry-After', '1');
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
      sendError(res, new AppError('internal', 500, 'internal error'));
      return;
    }
    if (known.status >= 500) {
      log.error({ err: known.cause ?? known, method: req.method, url: req.originalUrl }, 'request failed');
    }
    sendError(res, known);
  };
}

export const notFound: RequestHandler = (req) => {
  throw new NotFoundError('no such route', { method: req.method, path: req.path });
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
    throw new AppError('method_not_allowed', 405, `${req.method} is not allowed here`, {
      allowed: allow.split(', '),
    });
  };
}

/**
 * A whole answer for the socket. A HEAD answer carries no body (RFC 9110 9.3.2), and strict
 * clients, Node's among them, fail on one that does instead of reading the status; so the JSON
 * body goes only to a request whose request line shows it is not a HEAD.
 */
function rawJsonAnswer(status: number, code: string, message: string, withBody: boolean): string {
  const head = `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}`;
  if (!withBody) return [head, 'Content-Length: 0', 'Connection: close', '', ''].join('\r\n');
  const body = JSON.stringify({ error: { code, message, details: {} } });
  const length = Buffer.byteLength(body);
  return [head, `Content-Type: ${JSON_TYPE}`, `Content-Length: ${length}`, 'Connection: close', '', body].join('\r\n');
}

// A request line: a method (an RFC 9110 token), a target and a version, at the start of a line.
const REQUEST_LINE = /(?:^|\n)\r?([!#$%&'*+.^_`|~0-9A-Za-z-]+) [^ \r\n]+ HTTP\//g;

/**
 * The method of the request Node's parser refused, read from the bytes it was parsing when it
 * refused (the error's rawPacket): the last request line there, since the refused request is the
 * last one begun. Undefined when those bytes hold none: the head began in an earlier read, the
 * request line itself is not HTTP, or nothing was being parsed (a timeout).
 */
function refusedMethod(err: { rawPacket?: unknown }): string | undefined {
  if (!Buffer.isBuffer(err.rawPacket)) return undefined;
  let method: string | undefined;
  for (const match of err.rawPacket.toString('latin1').matchAll(REQUEST_LINE)) method = match[1];
  return method;
}

/**
 * Calls `then` once the requests read in full before the refused one on this connection are
 * answered. Their answers come first on the wire; writing this one at once would end the
 * connection under them, and a client would read the error as the answer to a request that did
 * take effect (an activation, say). Node's own handler has that flaw. Node keeps the answer being
 * written as the socket's _httpMessage and, once it is finished, attaches the next one (before
 * this runs).
 */
function afterAnswersInFlight(socket: Duplex, then: () => void): void {
  const inFlight = (socket as Duplex & { _httpMessage?: ServerResponse | null })._httpMessage;
  // An answer whose request is not read to its end is waiting for a body the parser will never
  // deliver: the refused bytes are that body. Nothing can finish it; answer now (Node's way).
  if (
    inFlight === undefined ||
    inFlight === null ||
    inFlight.writableFinished ||
    inFlight.destroyed ||
    !inFlight.req.complete
  ) {
    then();
    return;
  }
  const next = () => {
    inFlight.off('finish', next);
    inFlight.off('close', next);
    setImmediate(() => {
      afterAnswersInFlight(socket, then);
    });
  };
  inFlight.on('finish', next);
  inFlight.on('close', next);
}

/**
 * Requests Node's HTTP parser refuses never reach Express; Node would answer them with an empty
 * 400, 417 or 431. These answer them with the same JSON error body as every other error, except
 * where the request may be a HEAD (see rawJsonAnswer).
 */
export function answerProtocolErrors(server: Server): void {
  server.on('clientError', (err: NodeJS.ErrnoException & { rawPacket?: unknown }, socket: Duplex) => {
    if (err.code === 'ECONNRESET' || !socket.writable) {
      socket.destroy();
      return;
    }
    const method = refusedMethod(err);
    const withBody = method !== undefined && method !== 'HEAD';
    const answer =
      err.code === 'HPE_HEADER_OVERFLOW'
        ? rawJsonAnswer(431, 'headers_too_large', 'the request headers are too large', withBody)
        : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
          ? rawJsonAnswer(408, 'request_timeout', 'the request took too long to arrive', withBody)
          : rawJsonAnswer(400, 'bad_request', 'the request is not valid HTTP', withBody);
    afterAnswersInFlight(socket, () => {
      if (socket.writable) socket.end(answer);
    });
  });
  server.on('checkExpectation', (_req, res) => {
    const body = JSON.stringify({
      error: { code: 'expectation_failed', message: 'only Expect: 100-continue is supported', details: {} },
    });
    res
      .writeHead(417, {
        'Content-Type': JSON_TYPE,
        'Content-Length': Buffer.byteLength(body),
        Connection: 'close',
      })
      .end(body);
  });
}
