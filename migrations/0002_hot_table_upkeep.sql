-- Up Migration

-- Autovacuum settings for the tables that change all the time, for a PostgreSQL that runs
-- autovacuum (the worker's own maintenance covers one that does not; docs/operations.md).
-- tokens and waiters are small and rewritten thousands of times a second: vacuum them after a
-- fixed number of dead rows, not a share of a tiny table, and without cost-based pauses.
-- usages grows with history: a small share of it.

ALTER TABLE tokens SET (
  autovacuum_vacuum_scale_factor = 0,
  autovacuum_vacuum_threshold = 1000,
  autovacuum_vacuum_cost_delay = 0
);

ALTER TABLE waiters SET (
  autovacuum_vacuum_scale_factor = 0,
  autovacuum_vacuum_threshold = 1000,
  autovacuum_vacuum_cost_delay = 0
);

ALTER TABLE usages SET (
  autovacuum_vacuum_scale_factor = 0.02,
  autovacuum_vacuum_insert_scale_factor = 0.02,
  autovacuum_analyze_scale_factor = 0.02
);
