import express, { type RequestHandler } from 'express';
import { AppError } from '../errors.js';

// Request bodies: JSON only, at most 16 KiB. Only the routes that take a body parse one (with
// `jsonBody`), so that reads, GET /api/tokens above all, do not pay for it.

const BODY_LIMIT = '16kb';
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
const parseJsonBody = express.json({ limit: BODY_LIMIT, strict: false, type: JSON_TYPES });

/** The handlers a route that takes a JSON body puts first, in this order. */
export const jsonBody: RequestHandler[] = [requireJsonBody, parseJsonBody];
