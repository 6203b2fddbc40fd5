import express, { type RequestHandler } from 'express';
import { AppError, ERRORS } from '../errors.js';

// Request bodies: JSON only, at most 16 KiB, read by express.json (body-parser). Only the routes
// that take a body parse one (with `jsonBody`), so that reads, GET /api/tokens above all, do not
// pay for it. An import takes up to 10,000 values, as JSON or as text/plain, one a line
// (`importBody`, 4 MiB). body-parser's errors become answers in src/http/errors.ts.

export const BODY_LIMIT_BYTES = 16 * 1024;
/** 10,000 values of 256 characters, quoted and separated, with room to spare. */
const IMPORT_LIMIT_BYTES = 4 * 1024 * 1024;
const JSON_TYPES = ['application/json', 'application/*+json'];
const TEXT_TYPES = ['text/plain'];

/** A body of another type gets a 415 rather than being ignored and reported as missing fields. */
const requireBodyOf =
  (types: string[]): RequestHandler =>
  (req, _res, next) => {
    const length = req.headers['content-length'];
    const hasBody = req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
    if (hasBody && req.is(types) === false) throw new AppError(ERRORS.unsupported_media_type);
    next();
  };

// strict: false lets valid JSON that is not an object reach zod, which names the problem (422).
const parseJsonBody: RequestHandler = express.json({ limit: BODY_LIMIT_BYTES, strict: false, type: JSON_TYPES });

/** The handlers a route that takes a JSON body puts first, in this order. */
export const jsonBody: readonly RequestHandler[] = [requireBodyOf(JSON_TYPES), parseJsonBody];

/** An import's body: JSON, or text/plain (a string in req.body). */
export const importBody: readonly RequestHandler[] = [
  requireBodyOf([...JSON_TYPES, ...TEXT_TYPES]),
  express.json({ limit: IMPORT_LIMIT_BYTES, strict: false, type: JSON_TYPES }),
  express.text({ limit: IMPORT_LIMIT_BYTES, type: TEXT_TYPES }),
];
