-- Up Migration

-- Open leases get a table of their own, and usages become history written once, when a lease
-- ends. Before, a lease's usage row was inserted open and updated when it ended: one dead row
-- and a second set of index entries per lease in a table that only grows, so the upkeep had to
-- vacuum the whole history every few minutes and the cost of a lease grew with it. Now the
-- rows that churn live in `leases`, which holds one row per open lease and stays small, and
-- `usages` is insert-only.

-- A lease that has not ended yet. Its token row carries a copy (tokens.lease_id and the times),
-- changed in the same statements under the token's row lock.
CREATE TABLE leases (
  id          uuid PRIMARY KEY,
  pool_id     integer NOT NULL REFERENCES pools (id),
  -- At most one open lease per token: the token is never given twice.
  token_id    uuid NOT NULL UNIQUE REFERENCES tokens (id),
  user_id     uuid NOT NULL,
  fence       bigint NOT NULL CHECK (fence > 0),
  started_at  timestamptz NOT NULL,
  expires_at  timestamptz NOT NULL,
  CONSTRAINT leases_expires_after_start CHECK (expires_at > started_at),
  -- One open lease per user in each pool.
  CONSTRAINT leases_one_per_user UNIQUE (pool_id, user_id)
);

-- By expiry (the sweep, the release job's batch) and by start (evict_oldest).
CREATE INDEX leases_by_expiry ON leases (pool_id, expires_at);
CREATE INDEX leases_by_start ON leases (pool_id, started_at, id);

-- Small and rewritten all the time, like tokens (0002).
ALTER TABLE leases SET (
  autovacuum_vacuum_scale_factor = 0,
  autovacuum_vacuum_threshold = 1000,
  autovacuum_vacuum_cost_delay = 0
);

INSERT INTO leases (id, pool_id, token_id, user_id, fence, started_at, expires_at)
  SELECT id, pool_id, token_id, user_id, fence, started_at, expires_at
  FROM usages WHERE ended_at IS NULL;
DELETE FROM usages WHERE ended_at IS NULL;

DROP INDEX usages_one_open_per_user;
DROP INDEX usages_open_by_expiry;
DROP INDEX usages_open_by_start;

ALTER TABLE usages
  ALTER COLUMN ended_at SET NOT NULL,
  ALTER COLUMN end_reason SET NOT NULL,
  DROP CONSTRAINT usages_ended_consistently;

-- Every lease, open or ended, in the shape of a usage (an open one has no ended_at): what the
-- history reads and validate answer from.
CREATE VIEW all_usages AS
  SELECT id, pool_id, token_id, user_id, fence, started_at, expires_at,
         NULL::timestamptz AS ended_at, NULL::text AS end_reason
  FROM leases
  UNION ALL
  SELECT id, pool_id, token_id, user_id, fence, started_at, expires_at, ended_at, end_reason
  FROM usages;
