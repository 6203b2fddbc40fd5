// The statements on API clients (AUTH_MODE=api_key; src/domain/clients.ts). A key is found by
// its hash, which is unique; the key itself is never stored.

import type { Queryable } from './pool.js';
import { query } from './pool.js';

export interface ApiClientRow {
  id: string;
  name: string;
  scopes: string[];
  created_at: Date;
  last_used_at: Date | null;
  revoked_at: Date | null;
}

const COLUMNS = 'id, name, scopes, created_at, last_used_at, revoked_at';

export async function insertApiClient(
  db: Queryable,
  args: { name: string; scopes: readonly string[]; keyHash: Buffer },
): Promise<ApiClientRow> {
  const rows = await query<ApiClientRow>(
    db,
    'insert-api-client',
    `INSERT INTO api_clients (name, scopes, key_hash) VALUES ($1, $2, $3) RETURNING ${COLUMNS}`,
    [args.name, args.scopes, args.keyHash],
  );
  const [row] = rows;
  if (row === undefined) throw new Error('INSERT ... RETURNING answered no row');
  return row;
}

/** The clients not revoked, oldest first. */
export async function listApiClients(db: Queryable): Promise<ApiClientRow[]> {
  return query<ApiClientRow>(
    db,
    'list-api-clients',
    `SELECT ${COLUMNS} FROM api_clients WHERE revoked_at IS NULL ORDER BY created_at, id`,
  );
}

/** Revokes a client (once: a second call answers the same row); null when there is none. */
export async function revokeApiClient(db: Queryable, clientId: string): Promise<ApiClientRow | null> {
  const rows = await query<ApiClientRow>(
    db,
    'revoke-api-client',
    `UPDATE api_clients SET revoked_at = coalesce(revoked_at, clock_timestamp())
     WHERE id = $1 RETURNING ${COLUMNS}`,
    [clientId],
  );
  return rows[0] ?? null;
}

/**
 * The PostgreSQL backends of the listening connections on this database: one for each API
 * process (src/db/notifications.ts), each of which acknowledges a revocation it hears.
 */
export async function listenerPids(db: Queryable, applicationName: string): Promise<number[]> {
  const rows = await query<{ pid: number }>(
    db,
    'listener-pids',
    'SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1',
    [applicationName],
  );
  return rows.map((r) => r.pid);
}

/** The client whose key has this hash, if it is not revoked; with the hash, to compare. */
export async function findApiClientByKeyHash(
  db: Queryable,
  keyHash: Buffer,
): Promise<(ApiClientRow & { key_hash: Buffer }) | null> {
  const rows = await query<ApiClientRow & { key_hash: Buffer }>(
    db,
    'find-api-client-by-key-hash',
    `SELECT ${COLUMNS}, key_hash FROM api_clients WHERE key_hash = $1 AND revoked_at IS NULL`,
    [keyHash],
  );
  return rows[0] ?? null;
}

/** Records that the client's key was used now; last_used_at is not indexed (a HOT update). */
export async function touchApiClient(db: Queryable, clientId: string): Promise<void> {
  await query(
    db,
    'touch-api-client',
    'UPDATE api_clients SET last_used_at = clock_timestamp() WHERE id = $1 AND revoked_at IS NULL',
    [clientId],
  );
}
