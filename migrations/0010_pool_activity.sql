-- Up Migration

-- Per-minute counts of what writes no row on purpose: activations refused on a full pool, and
-- activations that waited in the queue. Each API process counts them in memory and adds its
-- counts here every few seconds (src/domain/activity.ts); GET /api/stats sums them per bucket.
CREATE TABLE pool_activity (
  pool_id   integer NOT NULL REFERENCES pools (id),
  minute    timestamptz NOT NULL CHECK (minute = date_trunc('minute', minute)),
  refusals  bigint NOT NULL DEFAULT 0 CHECK (refusals >= 0),
  waits     bigint NOT NULL DEFAULT 0 CHECK (waits >= 0),
  PRIMARY KEY (pool_id, minute)
);

-- GET /api/stats reads a pool's history over a time window: the leases that ended in it or
-- after it (a lease's held time and its start lie before its end).
CREATE INDEX usages_by_pool_end ON usages (pool_id, ended_at);
