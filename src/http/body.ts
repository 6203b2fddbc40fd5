import express, { type RequestHandler } from 'express';
import { AppError, ERRORS } from '../errors.js';

// Request bodies: JSON only, at most 16 KiB, read by express.json (body-parser). Only the routes
// that take a body parse one (with `jsonBody`), so that reads, GET /api/tokens above all, do not
// pay for it. body-parser's errors become answers in src/http/errors.ts.

const BODY_LIMIT_BYTES = 16 * 1024;
const JSON_TYPES = ['application/json', 'application/*+json'];

/** A body that is not JSON gets a 415 rather than being ignored and reported as missing fields. */
const requireJsonBody: RequestHandler = (req, _res, next) => {
  const length = req.headers['content-length'];
  const hasBody = req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
  if (hasBody && req.is(JSON_TYPES) === false) throw new AppError(ERRORS.unsupported_media_type);
  next();
};

// strict: false lets valid JSON that is not an object reach zod, which names the problem (422).
const parseJsonBody: RequestHandler = express.json({ limit: BODY_LIMIT_BYTES, strict: false, type: JSON_TYPES });

/** The handlers a route that takes a JSON body puts first, in this order. */
export const jsonBody: readonly RequestHandler[] = [requireJsonBody, parseJsonBody];
