import { createHash, timingSafeEqual } from 'node:crypto';
import type { RequestHandler } from 'express';
import { AppError, ERRORS } from '../errors.js';

const digest = (value: string) => createHash('sha256').update(value).digest();

/**
 * Guards admin routes with `Authorization: Bearer <ADMIN_API_KEY>`: 401 without credentials,
 * 403 with wrong ones. Both sides are hashed first, so the comparison takes the same time
 * whatever the length or content of the guess. Without a key, admin routes are open.
 */
export function requireAdmin(adminApiKey: string | undefined): RequestHandler {
  if (adminApiKey === undefined) return (_req, _res, next) => next();
  const expected = digest(adminApiKey);
  return (req, res, next) => {
    const match = /^Bearer[ ]+(\S+)\s*$/i.exec(req.get('authorization') ?? '');
    const presented = match?.[1];
    if (presented === undefined) {
      res.set('WWW-Authenticate', 'Bearer realm="token-lease admin"');
      throw new AppError(ERRORS.unauthorized);
    }
    if (!timingSafeEqual(digest(presented), expected)) {
      throw new AppError(ERRORS.forbidden);
    }
    next();
  };
}
