// Verifying a caller's JWT (AUTH_MODE=jwt) with jose. The key is chosen by configuration, and
// with it the only algorithms accepted: HS256 for a shared secret, the public key's own
// algorithm (RS256, ES256 or EdDSA) for a PEM key or a JWKS. So `alg: none` is never accepted,
// nor a token signed with HS256 using a public key as its secret (algorithm confusion).

import { createPublicKey, type KeyObject } from 'node:crypto';
import { createLocalJWKSet, errors, jwtVerify, type JSONWebKeySet, type JWTPayload } from 'jose';
import { InvalidCredentialError, type Caller } from './caller.js';

export type JwtKey =
  | { readonly kind: 'secret'; readonly secret: string }
  | { readonly kind: 'public'; readonly pem: string }
  | { readonly kind: 'jwks'; readonly jwks: JSONWebKeySet };

export interface JwtOptions {
  readonly key: JwtKey;
  readonly issuer?: string | undefined;
  readonly audience?: string | undefined;
}

/** Why a token was refused, for the answer's RFC 6750 error_description (never the token). */
export class InvalidTokenError extends InvalidCredentialError {}

const CLOCK_TOLERANCE_SEC = 30;
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
export function createJwtVerifier(options: JwtOptions): (token: string) => Promise<Caller> {
  const checks = {
    issuer: options.issuer,
    audience: options.audience,
    clockTolerance: CLOCK_TOLERANCE_SEC,
    requiredClaims: ['exp', 'sub'],
  };
  let verify: (token: string) => Promise<JWTPayload>;
  switch (options.key.kind) {
    case 'secret': {
      const secret = new TextEncoder().encode(options.key.secret);
      verify = async (token) => (await jwtVerify(token, secret, { ...checks, algorithms: ['HS256'] })).payload;
      break;
    }
    case 'public': {
      const key = createPublicKey(options.key.pem);
      const algorithms = [algorithmOf(key)];
      verify = async (token) => (await jwtVerify(token, key, { ...checks, algorithms })).payload;
      break;
    }
    case 'jwks': {
      const keys = createLocalJWKSet(options.key.jwks);
      verify = async (token) =>
        (await jwtVerify(token, keys, { ...checks, algorithms: ['RS256', 'ES256', 'EdDSA'] })).payload;
      break;
    }
  }
  return async (token) => {
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
    return { kind: 'user', userId: payload.sub.toLowerCase(), scopes: new Set(scope), clientId: null };
  };
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
