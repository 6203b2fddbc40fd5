import type { Pool, PoolClient } from './pool.js';
import { fromPgError, isConnectionError, isRetryable } from './errors.js';

const MAX_ATTEMPTS = 3;

/**
 * The one owner of BEGIN / COMMIT / ROLLBACK and of releasing the client. Code inside takes the
 * transaction's client as an argument. Serialization failures and deadlocks (class 40) are run
 * again, up to three attempts, as slonik does; everything else propagates.
 */
export async function withTransaction<T>(
  pool: Pool,
  work: (tx: PoolClient) => Promise<T>,
): Promise<T> {
  for (let attempt = 1; ; attempt += 1) {
    let client: PoolClient;
    try {
      client = await pool.connect();
    } catch (error) {
      throw fromPgError(error);
    }
    let broken: Error | undefined;
    // pg-pool takes its own error listener off a client while it is checked out: without one
    // here, a connection that breaks mid-transaction is an unhandled 'error' event, which ends
    // the process. The statement in flight fails with the same error and is handled below.
    const onError = (error: Error) => {
      broken = error;
    };
    client.on('error', onError);
    try {
      await client.query('BEGIN');
      const result = await work(client);
      await client.query('COMMIT');
      return result;
    } catch (error) {
      if (isConnectionError(error)) {
        broken = error instanceof Error ? error : new Error(String(error));
      } else {
        await client.query('ROLLBACK').catch((rollbackError: unknown) => {
          broken = rollbackError instanceof Error ? rollbackError : new Error('rollback failed');
        });
      }
      if (broken === undefined && isRetryable(error) && attempt < MAX_ATTEMPTS) continue;
      throw fromPgError(error);
    } finally {
      // A client whose connection broke is destroyed, not returned to the pool.
      client.release(broken);
      client.off('error', onError);
    }
  }
}
