// Verifying a caller's JWT (AUTH_MODE=jwt) with jose. The key is chosen by configuration, and
// with it the only algorithms accepted: HS256 for a shared secret, the public key's own
// algorithm (RS256, ES256 or EdDSA) for a PEM key or a JWKS. So `alg: none` is never accepted,
// nor a token signed with HS256 using a public key as its secret (algorithm confusion).

import { createPublicKey, createSecretKey, type KeyObject } from 'node:crypto';
import { createLocalJWKSet, errors, jwtVerify, type JSONWebKeySet, type JWTPayload } from 'jose';
import { InvalidCredentialError, type BearerVerifier, type Caller } from './caller.js';

export type JwtKey =
  | { readonly kind: 'secret'; readonly secret: string }
  | { readonly kind: 'public'; readonly pem: string }
  | { readonly kind: 'jwks'; readonly jwks: JSONWebKeySet };

export interface JwtOptions {
  readonly key: JwtKey;
  readonly issuer?: string | undefined;
  readonly audience?: string | undefined;
  /** The clock, in ms (tests move it); every check of exp and nbf reads it. */
  readonly now?: () => number;
}

/** Why a token was refused, for the answer's RFC 6750 error_description (never the token). */
export class InvalidTokenError extends InvalidCredentialError {}

const CLOCK_TOLERANCE_SEC = 30;

/**
 * Tokens already verified, by their exact text: a client sends the same token with every request
 * until it expires, and checking its signature again each time cost more than the rest of a
 * cheap request (a token list read cost twice as much CPU with AUTH_MODE=jwt). A token's text
 * cannot change, so the same text verifies the same way, except for time: a token found here
 * is accepted only while its exp and nbf would still pass, else it is verified again (and
 * refused with the reason). Bounded, oldest first out; an entry is also dropped after
 * CACHE_MAX_AGE_MS, so a token is looked at afresh now and then.
 */
const CACHE_MAX_ENTRIES = 10_000;
const CACHE_MAX_AGE_MS = 5 * 60_000;

interface Verified {
  readonly caller: Caller;
  readonly exp: number;
  readonly nbf: number | undefined;
  readonly cachedAt: number;
}
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** The algorithm a public key signs with: the only one its tokens may claim. */
function algorithmOf(key: KeyObject): string {
  switch (key.asymmetricKeyType) {
    case 'rsa':
      return 'RS256';
    case 'ec':
      return 'ES256';
    case 'ed25519':
      return 'EdDSA';
    default:
      throw new Error(`JWT_PUBLIC_KEY: unsupported key type ${key.asymmetricKeyType ?? 'unknown'}`);
  }
}

/** Builds the verifier once, at start; it throws there if the key is unusable. */
export function createJwtVerifier(options: JwtOptions): BearerVerifier {
  const now = options.now ?? Date.now;
  const checks = () => ({
    issuer: options.issuer,
    audience: options.audience,
    clockTolerance: CLOCK_TOLERANCE_SEC,
    requiredClaims: ['exp', 'sub'],
    currentDate: new Date(now()),
  });
  let verify: (token: string) => Promise<JWTPayload>;
  switch (options.key.kind) {
    case 'secret': {
      // Imported once: given the secret's bytes, jose imports a key for every token.
      const key = createSecretKey(Buffer.from(options.key.secret, 'utf8'));
      verify = async (token) => (await jwtVerify(token, key, { ...checks(), algorithms: ['HS256'] })).payload;
      break;
    }
    case 'public': {
      const key = createPublicKey(options.key.pem);
      const algorithms = [algorithmOf(key)];
      verify = async (token) => (await jwtVerify(token, key, { ...checks(), algorithms })).payload;
      break;
    }
    case 'jwks': {
      const keys = createLocalJWKSet(options.key.jwks);
      verify = async (token) =>
        (await jwtVerify(token, keys, { ...checks(), algorithms: ['RS256', 'ES256', 'EdDSA'] })).payload;
      break;
    }
  }

  const cache = new Map<string, Verified>();
  function fromCache(token: string): Caller | undefined {
    const entry = cache.get(token);
    if (entry === undefined) return undefined;
    const at = now();
    const seconds = at / 1000;
    const current =
      at - entry.cachedAt < CACHE_MAX_AGE_MS &&
      seconds < entry.exp + CLOCK_TOLERANCE_SEC &&
      (entry.nbf === undefined || entry.nbf <= seconds + CLOCK_TOLERANCE_SEC);
    if (current) return entry.caller;
    cache.delete(token);
    return undefined;
  }

  async function checkAnew(token: string): Promise<Caller> {
    let payload: JWTPayload;
    try {
      payload = await verify(token);
    } catch (error) {
      throw new InvalidTokenError(describe(error));
    }
    if (typeof payload.sub !== 'string' || !UUID.test(payload.sub)) {
      throw new InvalidTokenError('the token\'s sub must be a user id (a UUID)');
    }
    const scope = typeof payload.scope === 'string' ? payload.scope.split(' ').filter(Boolean) : [];
    const caller: Caller = { kind: 'user', userId: payload.sub.toLowerCase(), scopes: new Set(scope), clientId: null };
    if (typeof payload.exp === 'number') {
      if (cache.size >= CACHE_MAX_ENTRIES) {
        const oldest = cache.keys().next();
        if (oldest.done !== true) cache.delete(oldest.value);
      }
      cache.set(token, { caller, exp: payload.exp, nbf: payload.nbf, cachedAt: now() });
    }
    return caller;
  }

  return Object.assign(async (token: string) => fromCache(token) ?? checkAnew(token), { known: fromCache });
}

function describe(error: unknown): string {
  if (error instanceof errors.JWTExpired) return 'the token has expired';
  if (error instanceof errors.JWTClaimValidationFailed) {
    if (error.claim === 'nbf') return 'the token is not valid yet';
    return `the token's ${error.claim} claim is not accepted`;
  }
  if (error instanceof errors.JOSEAlgNotAllowed) return 'the token\'s algorithm is not accepted';
  if (error instanceof errors.JWSSignatureVerificationFailed) return 'the token\'s signature does not verify';
  if (error instanceof errors.JWKSNoMatchingKey) return 'no key matches the token';
  return 'the token cannot be read';
}
