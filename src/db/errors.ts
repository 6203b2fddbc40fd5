import { AppError, ERRORS, UnavailableError } from '../errors.js';

// The one place where PostgreSQL and driver errors become the service's errors (SQLSTATE to
// typed error), so the HTTP layer never needs to know about SQLSTATE codes.

interface PgLikeError {
  code?: unknown;
  message?: unknown;
  constraint?: unknown;
}

const UNAVAILABLE_NODE_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
]);

// Messages node-postgres uses for a lost or unusable connection (it sets no code on them).
const UNAVAILABLE_MESSAGES = [
  'Connection terminated',
  'timeout exceeded when trying to connect',
  'Query read timeout',
  'Client has encountered a connection error',
  'Client was closed and is not queryable',
  'Cannot use a pool after calling end',
];

export function sqlState(error: unknown): string | undefined {
  const code = (error as PgLikeError | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** Serialization failures and deadlocks: the transaction may simply be run again. */
export function isRetryable(error: unknown): boolean {
  const code = sqlState(error);
  return code === '40001' || code === '40P01';
}

/** The connection itself is gone or unusable: the client must not go back to the pool. */
export function isConnectionError(error: unknown): boolean {
  const code = sqlState(error);
  if (code !== undefined) {
    return (
      UNAVAILABLE_NODE_CODES.has(code) ||
      code.startsWith('08') ||
      code === '57P01' ||
      code === '57P02' ||
      code === '57P03'
    );
  }
  const message = (error as PgLikeError | null)?.message;
  return typeof message === 'string' && UNAVAILABLE_MESSAGES.some((m) => message.includes(m));
}

export function fromPgError(error: unknown): unknown {
  if (error instanceof AppError) return error;
  const code = sqlState(error);
  if (isConnectionError(error)) {
    return new UnavailableError('database_unreachable', { cause: error });
  }
  if (code === '57014' || code === '55P03' || (code?.startsWith('53') ?? false) || isRetryable(error)) {
    // statement timeout, lock timeout, out of connections or memory, repeated conflicts
    return new UnavailableError('database_overloaded', { cause: error });
  }
  if (code === '23505') {
    const constraint = (error as PgLikeError).constraint;
    return new AppError(ERRORS.conflict, {
      constraint: typeof constraint === 'string' ? constraint : undefined,
    });
  }
  return error;
}
