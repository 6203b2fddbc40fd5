// The statements of the event log (docs/events.md). The events themselves are written by the
// lease functions in sql/ (sql/log_event.sql), in the transaction of each change; these read
// them, find how far they may be read, and remove old ones.

import type { Queryable } from './pool.js';
import { query } from './pool.js';

export interface EventRow {
  id: string; // int8 arrives as a string
  type: string;
  at: Date;
  pool: string;
  token_id: string;
  lease_id: string | null;
  user_id: string | null;
  client_id: string | null;
  fence: string | null;
  started_at: Date | null;
  expires_at: Date | null;
  ended_at: Date | null;
}

/**
 * What one statement sees of the log: the highest id its snapshot sees, and the transactions of
 * this database that have an xid and are still running once the snapshot was taken (xids as
 * text). Every id up to `top` is final once none of `running` runs any more (src/domain/eventFeed.ts).
 */
export interface EventSnapshot {
  top: string;
  running: string[];
}

export async function eventSnapshot(db: Queryable): Promise<EventSnapshot> {
  const rows = await query<EventSnapshot>(
    db,
    'event-snapshot',
    `SELECT (SELECT coalesce(max(id), 0) FROM events)::text AS top,
            coalesce((SELECT array_agg(backend_xid::text) FROM pg_stat_activity
                      WHERE datname = current_database() AND backend_xid IS NOT NULL), '{}') AS running`,
  );
  const [row] = rows;
  if (row === undefined) throw new Error('no snapshot row');
  return row;
}

/**
 * Events with `after < id <= upTo`, oldest first, at most `limit`; with `userId` or `clientId`,
 * only the events of that user's, or that API client's, leases.
 */
export async function listEvents(
  db: Queryable,
  args: { after: number; upTo: number; limit: number; userId: string | null; clientId: string | null },
): Promise<EventRow[]> {
  return query<EventRow>(
    db,
    'list-events',
    `SELECT e.id, e.type, e.at, p.name AS pool, e.token_id, e.lease_id, e.user_id, e.client_id, e.fence,
            e.started_at, e.expires_at, e.ended_at
     FROM events e JOIN pools p ON p.id = e.pool_id
     WHERE e.id > $1 AND e.id <= $2
       AND ($4::uuid IS NULL OR e.user_id = $4::uuid)
       AND ($5::uuid IS NULL OR e.client_id = $5::uuid)
     ORDER BY e.id
     LIMIT $3`,
    [args.after, args.upTo, args.limit, args.userId, args.clientId],
  );
}

/** The highest id retention has removed (0: none): a reader that resumes below it missed events. */
export async function eventsRemovedThrough(db: Queryable): Promise<number> {
  const rows = await query<{ through: string }>(
    db,
    'events-removed-through',
    'SELECT removed_through::text AS through FROM events_retention',
  );
  return Number(rows[0]?.through ?? 0);
}

/**
 * Removes up to `limit` events from the low end of the log, while they are older than `days`
 * days: the oldest `limit` by id, up to the first that is not old enough, so what remains is
 * always a suffix of the log. Records the highest id removed. Reads the primary key from its low
 * end, never the whole log.
 */
export async function deleteOldEvents(db: Queryable, args: { days: number; limit: number }): Promise<number> {
  const rows = await query<{ n: number }>(
    db,
    'delete-old-events',
    `WITH head AS (
       SELECT id, at FROM events ORDER BY id LIMIT $2
     ), old AS (
       SELECT id FROM head
       WHERE id < coalesce((SELECT min(id) FROM head WHERE at >= now() - $1::float8 * interval '1 day'), 9223372036854775807)
     ), gone AS (
       DELETE FROM events e USING old WHERE e.id = old.id RETURNING e.id
     ), marked AS (
       UPDATE events_retention SET removed_through = greatest(removed_through, (SELECT max(id) FROM gone))
       WHERE EXISTS (SELECT 1 FROM gone)
       RETURNING 1
     )
     SELECT count(*)::int AS n FROM gone`,
    [args.days, args.limit],
  );
  return rows[0]?.n ?? 0;
}
