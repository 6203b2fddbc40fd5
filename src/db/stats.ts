// The statements behind GET /api/stats and the per-minute activity counters: aggregates over a
// pool's history, computed in PostgreSQL so that no lease row leaves the database.

import type { Queryable } from './pool.js';
import { query } from './pool.js';

export interface ActivityCount {
  readonly poolId: number;
  /** The start of the minute, a whole minute. */
  readonly minute: Date;
  readonly refusals: number;
  readonly waits: number;
}

/** Adds one process's counts to the table; a minute another process wrote already is summed. */
export async function addActivity(db: Queryable, counts: readonly ActivityCount[]): Promise<void> {
  if (counts.length === 0) return;
  await query(
    db,
    'add-activity',
    `INSERT INTO pool_activity AS a (pool_id, minute, refusals, waits)
     SELECT * FROM unnest($1::int[], $2::timestamptz[], $3::bigint[], $4::bigint[])
     ON CONFLICT (pool_id, minute) DO UPDATE
       SET refusals = a.refusals + excluded.refusals, waits = a.waits + excluded.waits`,
    [
      counts.map((c) => c.poolId),
      counts.map((c) => c.minute),
      counts.map((c) => c.refusals),
      counts.map((c) => c.waits),
    ],
  );
}

/** Removes up to `limit` minutes of activity counts older than `days` days; how many went. */
export async function deleteOldActivity(db: Queryable, args: { days: number; limit: number }): Promise<number> {
  const rows = await query<{ n: number }>(
    db,
    'delete-old-pool-activity',
    `WITH old AS (
       SELECT pool_id, minute FROM pool_activity
       WHERE minute < now() - $1::float8 * interval '1 day'
       ORDER BY minute
       LIMIT $2
     ), gone AS (
       DELETE FROM pool_activity a USING old WHERE a.pool_id = old.pool_id AND a.minute = old.minute RETURNING 1
     )
     SELECT count(*)::int AS n FROM gone`,
    [args.days, args.limit],
  );
  return rows[0]?.n ?? 0;
}

export interface StatsBucketRow {
  start: Date;
  tokens: number;
  held_seconds: number;
  activations: number;
  expiries: number;
  refusals: number;
  waits: number;
}

/**
 * One row per bucket of `bucketSeconds` from `from`, `buckets` of them. A lease is held from its
 * start to whichever comes first of its end and its expiry (and, while open, now); held seconds
 * are split across the buckets the lease spans. An expiry counts in the bucket of expires_at,
 * the moment the lease ran out, whether or not anything had ended it yet. Each row's bucket is
 * computed from its times (one pass over the window's rows), not by joining rows to buckets.
 */
export async function poolStats(
  db: Queryable,
  args: { poolId: number; from: Date; bucketSeconds: number; buckets: number },
): Promise<StatsBucketRow[]> {
  return query<StatsBucketRow>(
    db,
    'pool-stats',
    `WITH w AS (
       SELECT $2::timestamptz AS t0, $3::float8 AS bs, $4::int AS nb,
              $2::timestamptz + make_interval(secs => $3::float8 * $4::int) AS t1,
              clock_timestamp() AS clock
     ), held AS (
       SELECT u.started_at, least(u.ended_at, u.expires_at) AS held_until,
              u.expires_at, u.end_reason = 'expired' AS expired
       FROM usages u, w
       WHERE u.pool_id = $1 AND u.ended_at >= w.t0 AND u.started_at < w.t1
       UNION ALL
       SELECT l.started_at, least(l.expires_at, w.clock), l.expires_at, l.expires_at <= w.clock
       FROM leases l, w
       WHERE l.pool_id = $1 AND l.started_at < w.t1
     ), rel AS (
       SELECT extract(epoch FROM h.started_at - w.t0)::float8 AS s,
              extract(epoch FROM h.held_until - w.t0)::float8 AS e,
              CASE WHEN h.expired THEN extract(epoch FROM h.expires_at - w.t0)::float8 END AS x
       FROM held h, w
     ), held_by_bucket AS (
       SELECT k, sum(least(r.e, (k + 1) * w.bs) - greatest(r.s, k * w.bs)) AS seconds
       FROM rel r, w,
            LATERAL generate_series(greatest(0, floor(r.s / w.bs))::int,
                                    least(w.nb - 1, ceil(r.e / w.bs)::int - 1)) k
       WHERE r.e > r.s
       GROUP BY k
     ), starts AS (
       SELECT floor(r.s / w.bs)::int AS k, count(*) AS n
       FROM rel r, w WHERE r.s >= 0 AND r.s < w.bs * w.nb GROUP BY 1
     ), expiries AS (
       SELECT floor(r.x / w.bs)::int AS k, count(*) AS n
       FROM rel r, w WHERE r.x >= 0 AND r.x < w.bs * w.nb GROUP BY 1
     ), activity AS (
       SELECT floor(extract(epoch FROM a.minute - w.t0)::float8 / w.bs)::int AS k,
              sum(a.refusals) AS refusals, sum(a.waits) AS waits
       FROM pool_activity a, w
       WHERE a.pool_id = $1 AND a.minute >= w.t0 AND a.minute < w.t1 GROUP BY 1
     )
     SELECT w.t0 + make_interval(secs => k * w.bs) AS start,
            (SELECT count(*) FROM tokens WHERE pool_id = $1)::int AS tokens,
            coalesce(hb.seconds, 0)::float8 AS held_seconds,
            coalesce(st.n, 0)::int AS activations,
            coalesce(ex.n, 0)::int AS expiries,
            coalesce(ac.refusals, 0)::int AS refusals,
            coalesce(ac.waits, 0)::int AS waits
     FROM w, generate_series(0, w.nb - 1) k
     LEFT JOIN held_by_bucket hb USING (k)
     LEFT JOIN starts st USING (k)
     LEFT JOIN expiries ex USING (k)
     LEFT JOIN activity ac USING (k)
     ORDER BY k`,
    [args.poolId, args.from, args.bucketSeconds, args.buckets],
  );
}
