import express, { type Request, type RequestHandler } from 'express';
import { AppError } from '../errors.js';
import { bodyError } from './errors.js';

// Request bodies: JSON only, at most 16 KiB. Only the routes that take a body parse one (with
// `jsonBody`), so that reads, GET /api/tokens above all, do not pay for it.

const BODY_LIMIT_BYTES = 16 * 1024;
const JSON_TYPES = ['application/json', 'application/*+json'];

/** A body that is not JSON gets a 415 rather than being ignored and reported as missing fields. */
const requireJsonBody: RequestHandler = (req, _res, next) => {
  const length = req.headers['content-length'];
  const hasBody =
    req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
  if (hasBody && req.is(JSON_TYPES) === false) {
    throw new AppError('unsupported_media_type', 415, 'send the body as application/json');
  }
  next();
};

// strict: false lets valid JSON that is not an object reach zod, which names the problem (422).
const parseJsonBody: RequestHandler = express.json({ limit: BODY_LIMIT_BYTES, strict: false, type: JSON_TYPES });

/** Every body the plain reader below leaves alone: the 415 check, then body-parser. */
const readAnyBody: RequestHandler = (req, res, next) => {
  requireJsonBody(req, res, (err?: unknown) => {
    if (err !== undefined) {
      next(err);
      return;
    }
    void parseJsonBody(req, res, next);
  });
};

// What nearly every client sends: these exact media types, no Content-Encoding, and a
// Content-Length within the limit. Such a body is read here: on every request body-parser parses
// the media type and the charset again, decodes through iconv-lite and runs the stream through
// raw-body, a measurable part of a small POST (with json.ts's direct writes, reading bodies here
// cut the service's CPU per activate + release by about 9%). Every other request (another
// spelling, a charset, compression, chunked, empty, too large) goes to body-parser, so the
// answers to unusual requests are body-parser's by construction; test/body.test.ts checks that
// both readers answer the usual ones alike.
const PLAIN_JSON_TYPES: ReadonlySet<string> = new Set([
  'application/json',
  'application/json; charset=utf-8',
  'application/json;charset=utf-8',
]);

/** The body's length if the plain reader may read it, else undefined. */
function plainJsonLength(req: Request): number | undefined {
  const { headers } = req;
  const type = headers['content-type'];
  const length = headers['content-length'];
  if (type === undefined || length === undefined || !PLAIN_JSON_TYPES.has(type)) return undefined;
  if (headers['content-encoding'] !== undefined || headers['transfer-encoding'] !== undefined) {
    return undefined;
  }
  const bytes = Number(length);
  return Number.isInteger(bytes) && bytes > 0 && bytes <= BODY_LIMIT_BYTES ? bytes : undefined;
}

/** Parses a JSON body into `req.body`; see above for which requests body-parser reads instead. */
const readJsonBody: RequestHandler = (req, res, next) => {
  const length = plainJsonLength(req);
  if (length === undefined) {
    readAnyBody(req, res, next);
    return;
  }
  const chunks: Buffer[] = [];
  let done = false;
  const finish = (err?: AppError) => {
    if (done) return;
    done = true;
    req.removeListener('data', onData);
    if (err !== undefined) {
      next(err);
      return;
    }
    // Node's HTTP parser delivers exactly Content-Length bytes before 'end'.
    const bytes = chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks);
    let text = bytes.toString('utf8');
    // As iconv-lite (body-parser's decoder) does, a leading byte order mark is dropped.
    if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    try {
      req.body = JSON.parse(text) as unknown;
    } catch {
      next(bodyError('entity.parse.failed'));
      return;
    }
    next();
  };
  const onData = (chunk: Buffer) => chunks.push(chunk);
  req.on('data', onData);
  req.once('end', () => finish());
  req.once('error', () => finish(bodyError('request.aborted')));
  req.once('close', () => finish(bodyError('request.aborted')));
};

/** The handlers a route that takes a JSON body puts first, in this order. */
export const jsonBody: RequestHandler[] = [readJsonBody];
