import { createHash, timingSafeEqual } from 'node:crypto';
import type { RequestHandler, Response } from 'express';
import { ADMIN, ANONYMOUS, hasScope, InvalidCredentialError, type BearerVerifier, type Caller, type Scope } from '../auth/caller.js';
import { AppError, ERRORS, ValidationError } from '../errors.js';
import { UnauthorizedError } from './errors.js';
import type { From, GuessGuard } from './guesses.js';

// Who is calling: every request under /api/ that asks passes callerCheck() once, through
// authenticate(), which leaves the caller on res.locals, or on the fast lane directly; routes ask
// requireScope() and actingUser(). The credential itself goes no further than this file: it is
// never logged, and never part of an answer.

export type AuthMode = 'none' | 'jwt' | 'api_key';

export interface AuthOptions {
  readonly mode: AuthMode;
  /**
   * Checks the bearer credential of the mode: a JWT (src/auth/jwt.ts) or an API client's key
   * (src/auth/apiKeys.ts). Each mode plugs in here; nothing else in the HTTP layer knows which.
   */
  readonly verify?: BearerVerifier | undefined;
  /** An admin credential in every mode. */
  readonly adminApiKey?: string | undefined;
  /** Counts refused credentials per address, and stops comparing theirs with the admin key (src/http/guesses.ts). */
  readonly guesses?: GuessGuard | undefined;
}

const REALM = 'Bearer realm="token-lease"';
const digest = (value: string) => createHash('sha256').update(value).digest();

/** The caller authenticate() found; anonymous for routes outside /api/. */
export function callerOf(res: Response): Caller {
  return (res.locals.caller as Caller | undefined) ?? ANONYMOUS;
}

/**
 * A credential was sent but is not one this service accepts (AUTH_MODE=none, not the admin key):
 * anonymous, and refused by an admin route as invalid rather than missing.
 */
const UNVERIFIED: Caller = { ...ANONYMOUS, scopes: new Set() };

function unauthorized(reason: string, description?: string): UnauthorizedError {
  return new UnauthorizedError(
    reason,
    description === undefined ? REALM : `${REALM}, error="invalid_token", error_description="${description.replaceAll('"', "'")}"`,
  );
}

/** Whether a presented key is ADMIN_API_KEY (never, without one). */
function adminKeyCheck(adminApiKey: string | undefined): (presented: string) => boolean {
  const adminDigest = adminApiKey === undefined ? undefined : digest(adminApiKey);
  // Hashed first, so the comparison takes the same time whatever the length or content of a guess.
  return (presented) => adminDigest !== undefined && timingSafeEqual(digest(presented), adminDigest);
}

/**
 * Who a request's Authorization header says is calling, from the address `from` (for the guess
 * count): the caller, at once or once the mode's verifier has checked the credential, or an
 * UnauthorizedError. Express's routes run it through authenticate(), the fast lane
 * (src/http/fastLane.ts) directly.
 */
export type CallerCheck = (header: string | undefined, from: From) => Caller | Promise<Caller>;

export function callerCheck(options: AuthOptions): CallerCheck {
  const { verify, guesses } = options;
  // A mode with credentials but nothing to check them would let everyone in as anonymous.
  if (options.mode !== 'none' && verify === undefined) throw new Error(`AUTH_MODE=${options.mode} needs its verifier`);
  const isAdminKey = adminKeyCheck(options.adminApiKey);

  return (header, from) => {
    if (header === undefined) {
      if (options.mode !== 'none') throw unauthorized('missing');
      return ANONYMOUS;
    }
    const presented = /^Bearer +([\x21-\x7e]+) *$/i.exec(header)?.[1];
    // Found before the admin key is compared: ADMIN_API_KEY never has the form of the mode's
    // credentials (src/config.ts), so a credential the verifier accepted is not the admin key.
    const known = presented === undefined ? undefined : verify?.known(presented);
    if (known !== undefined) return known;
    if (presented !== undefined && (guesses?.mayCompare(from) ?? true) && isAdminKey(presented)) return ADMIN;
    if (verify === undefined) {
      // Not checked in this mode: the request goes on as anonymous, and an admin route refuses it.
      // Counted here, before the admin budget (which answers 429 without a look at the key).
      guesses?.refused(from);
      return UNVERIFIED;
    }
    if (presented === undefined) throw unauthorized('malformed', 'the Authorization header must be Bearer <token>');
    return verify(presented).catch((error: unknown) => {
      if (!(error instanceof InvalidCredentialError)) throw error;
      guesses?.refused(from);
      throw unauthorized('invalid_token', error.reason);
    });
  };
}

/** Finds the caller with `check` (callerCheck) and leaves it on res.locals for callerOf(). */
export function authenticate(check: CallerCheck): RequestHandler {
  return (req, res, next) => {
    const caller = check(req.headers.authorization, req);
    if (caller instanceof Promise) {
      caller.then((verified) => {
        res.locals.caller = verified;
        next();
      }, next);
      return;
    }
    res.locals.caller = caller;
    next();
  };
}

/**
 * Lets through callers with `scope` (admin holds every scope). Without any credential, 401; with
 * a credential that was not verified (a wrong admin key), 401; with a verified one that lacks the
 * scope, 403. AUTH_MODE=none without ADMIN_API_KEY leaves admin routes open, as documented.
 */
export function requireScope(scope: Scope, options: Pick<AuthOptions, 'mode' | 'adminApiKey'>): RequestHandler {
  const open = options.mode === 'none' && options.adminApiKey === undefined;
  return (_req, res, next) => {
    const caller = callerOf(res);
    if (open || hasScope(caller, scope)) {
      next();
      return;
    }
    if (caller === UNVERIFIED) throw unauthorized('invalid_credentials', 'the credentials are not valid');
    if (caller.kind === 'anonymous') throw unauthorized('missing');
    throw new AppError(ERRORS.forbidden, { reason: 'missing_scope', scope });
  };
}

const BASIC_REALM = 'Basic realm="token-lease"';

/**
 * For the admin pages a browser opens (the queue board): the admin routes' credentials (a Bearer
 * admin key, or in AUTH_MODE=jwt and api_key a Bearer credential with the admin scope), or HTTP
 * Basic with ADMIN_API_KEY as the password and any user name, which a browser can send: it asks
 * for it on a 401 with a Basic challenge, or takes it from the URL (http://admin:KEY@host/...).
 * Like the admin routes, open in AUTH_MODE=none without ADMIN_API_KEY, and in two steps, so that
 * a rate limit can go between them: `identify` finds the caller, `require` lets admins through.
 * Every 401 carries the Basic challenge.
 */
export function adminPageAuth(
  options: AuthOptions,
  check: CallerCheck,
): { identify: RequestHandler; require: RequestHandler } {
  const bearer = authenticate(check);
  const isAdminKey = adminKeyCheck(options.adminApiKey);
  const challenging =
    (handler: RequestHandler): RequestHandler =>
    (req, res, next) => {
      const done = (error?: unknown) => {
        next(error instanceof UnauthorizedError ? new UnauthorizedError(String(error.details.reason), BASIC_REALM) : error);
      };
      try {
        handler(req, res, done);
      } catch (error) {
        done(error);
      }
    };
  const identify: RequestHandler = (req, res, next) => {
    const basic = /^Basic +([A-Za-z0-9+/]+=*) *$/i.exec(req.headers.authorization ?? '')?.[1];
    if (basic === undefined) {
      bearer(req, res, next);
      return;
    }
    const pair = Buffer.from(basic, 'base64').toString('utf8');
    const colon = pair.indexOf(':');
    if (colon !== -1 && (options.guesses?.mayCompare(req) ?? true) && isAdminKey(pair.slice(colon + 1))) {
      res.locals.caller = ADMIN;
    } else {
      // As a wrong Bearer admin key: refused by `require`, unless admin routes are open.
      options.guesses?.refused(req);
      res.locals.caller = UNVERIFIED;
    }
    next();
  };
  return { identify: challenging(identify), require: challenging(requireScope('admin', options)) };
}

/**
 * The user a lease request acts for. A caller who is a user (a JWT's sub) acts for themselves:
 * `user_id` may be left out, and if sent must be theirs (else 403). Anyone else (AUTH_MODE=none,
 * the admin key) names the user in the body.
 */
export function actingUser(caller: Caller, bodyUserId: string | undefined): string {
  if (caller.userId !== null) {
    if (bodyUserId !== undefined && bodyUserId !== caller.userId) {
      throw new AppError(ERRORS.forbidden, { reason: 'not_the_caller', field: 'user_id' });
    }
    return caller.userId;
  }
  if (bodyUserId === undefined) throw new ValidationError([{ field: 'user_id', message: 'is required' }]);
  return bodyUserId;
}

/**
 * The API client a release or renewal must have been made by: the caller, if it is a client
 * without the admin scope; null for anyone else (a user is checked as the lease's user, an admin
 * may act on any lease).
 */
export function restrictedToClient(caller: Caller): string | null {
  return caller.clientId !== null && !hasScope(caller, 'admin') ? caller.clientId : null;
}

/** Whether the caller may see who holds `holderId`'s lease: in AUTH_MODE=none everyone may. */
export function maySeeHolder(mode: AuthMode, caller: Caller, holderId: string): boolean {
  return mode === 'none' || hasScope(caller, 'read') || caller.userId === holderId;
}
