// The service's error family and the one registry of the errors a client can see. Every code the
// API answers is defined here once, with its status and message; src/http/errors.ts turns an
// AppError into {"error":{"code","message","details"}} and nothing else does, and the OpenAPI
// document (src/http/contract.ts) and docs/api.md list these entries.

export type ErrorDetails = Record<string, unknown>;

export interface ErrorDefinition {
  readonly code: string;
  readonly status: number;
  readonly message: string;
}

type Entries = Record<string, { readonly status: number; readonly message: string }>;

/** Adds each entry's key as its code, so a code is written once. */
function registry<T extends Entries>(entries: T): { readonly [K in keyof T & string]: T[K] & { readonly code: K } } {
  return Object.freeze(
    Object.fromEntries(Object.entries(entries).map(([code, entry]) => [code, Object.freeze({ code, ...entry })])),
  ) as { readonly [K in keyof T & string]: T[K] & { readonly code: K } };
}

export const ERRORS = registry({
  bad_request: { status: 400, message: 'the request cannot be read' },
  invalid_json: { status: 400, message: 'the body is not valid JSON' },
  unauthorized: { status: 401, message: 'this route needs valid credentials: Authorization: Bearer <token>' },
  forbidden: { status: 403, message: 'these credentials do not allow this' },
  not_found: { status: 404, message: 'no such route, token, pool, client, lease, webhook or delivery' },
  method_not_allowed: { status: 405, message: 'this method is not allowed here' },
  conflict: { status: 409, message: 'the change conflicts with a concurrent one; retry' },
  pool_exhausted: { status: 409, message: 'every token is leased; retry after the earliest lease expires' },
  pool_exists: { status: 409, message: 'a pool of this name exists' },
  not_holder: { status: 409, message: "the lease named is not this user's lease of this token" },
  lease_ended: { status: 409, message: 'this lease has ended' },
  lease_expired: { status: 409, message: 'the lease has expired; activate again' },
  webhook_disabled: { status: 409, message: 'this webhook is disabled: its endpoint answered 410 Gone' },
  max_lease_reached: { status: 409, message: 'the lease has reached MAX_LEASE_MS and cannot be renewed' },
  already_redeemed: { status: 409, message: 'this token has been redeemed' },
  payload_too_large: { status: 413, message: 'the body is larger than the route takes (16 KiB; 4 MiB for an import)' },
  unsupported_media_type: { status: 415, message: 'send the body as application/json (utf-8, uncompressed)' },
  validation_failed: { status: 422, message: 'the request is not valid; details.fields names each problem' },
  idempotency_key_reused: { status: 422, message: 'this Idempotency-Key was sent with another request' },
  rate_limited: { status: 429, message: 'this caller has used its requests for this minute; retry after Retry-After seconds' },
  client_closed_request: { status: 499, message: 'the client closed the request while waiting' },
  internal: { status: 500, message: 'internal error' },
  unavailable: { status: 503, message: 'the service cannot answer now; retry shortly' },
  not_ready: { status: 503, message: 'PostgreSQL is unreachable' },
  too_many_waiters: { status: 503, message: 'too many clients are waiting on this server; retry later' },
  too_many_streams: { status: 503, message: 'too many event streams are open on this server; retry later' },
});

export type ErrorCode = keyof typeof ERRORS;

export class AppError extends Error {
  readonly code: string;
  readonly status: number;

  constructor(
    definition: ErrorDefinition,
    readonly details: ErrorDetails = {},
    options?: { cause?: unknown },
  ) {
    super(definition.message, options);
    this.name = new.target.name;
    this.code = definition.code;
    this.status = definition.status;
  }
}

export interface FieldProblem {
  readonly field: string;
  readonly message: string;
}

export class ValidationError extends AppError {
  constructor(fields: readonly FieldProblem[]) {
    super(ERRORS.validation_failed, { fields });
  }
}

export class NotFoundError extends AppError {
  constructor(details: ErrorDetails = {}) {
    super(ERRORS.not_found, details);
  }
}

export class PoolExhaustedError extends AppError {
  constructor(readonly retryAfterSeconds: number) {
    super(ERRORS.pool_exhausted, { retry_after_seconds: retryAfterSeconds });
  }
}

/**
 * PostgreSQL (or the way to it) is unreachable, overloaded or timed out, or the server is
 * shutting down: retrying later may work. `reason` says which.
 */
export class UnavailableError extends AppError {
  constructor(reason: 'database_unreachable' | 'database_overloaded' | 'shutting_down', options?: { cause?: unknown }) {
    super(ERRORS.unavailable, { reason }, options);
  }
}
