// The service's error family. Every error a client can see is an AppError with a stable code;
// src/http/errors.ts turns it into {"error":{"code","message","details"}} and nothing else does.

export type ErrorDetails = Record<string, unknown>;

export class AppError extends Error {
  constructor(
    readonly code: string,
    readonly status: number,
    message: string,
    readonly details: ErrorDetails = {},
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = new.target.name;
  }
}

export interface FieldProblem {
  readonly field: string;
  readonly message: string;
}

export class ValidationError extends AppError {
  constructor(message: string, fields: readonly FieldProblem[]) {
    super('validation_failed', 422, message, { fields });
  }
}

export class NotFoundError extends AppError {
  constructor(message: string, details: ErrorDetails = {}) {
    super('not_found', 404, message, details);
  }
}

export class PoolExhaustedError extends AppError {
  constructor(readonly retryAfterSeconds: number) {
    super('pool_exhausted', 409, 'every token is leased; retry after the earliest lease expires', {
      retry_after_seconds: retryAfterSeconds,
    });
  }
}

/** PostgreSQL (or the way to it) is unreachable, overloaded or timed out: retrying later may work. */
export class UnavailableError extends AppError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('unavailable', 503, message, {}, options);
  }
}

export class ConflictError extends AppError {
  constructor(code: string, message: string, details: ErrorDetails = {}) {
    super(code, 409, message, details);
  }
}
