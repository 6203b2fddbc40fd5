-- Up Migration

-- The event log (docs/events.md): one row per change to a lease, written by the SQL function
-- that makes the change, in its transaction (an outbox), so a change that rolls back leaves no
-- event and a committed one always has its event. Never updated; retention removes old rows
-- from the low end, like usages (HISTORY_RETENTION_DAYS).
--
-- Ids come from the identity's sequence (CACHE 1, so they grow in the order they are taken
-- across sessions). Transactions commit out of that order; readers publish only ids below a
-- horizon that no transaction still in flight can fall under (src/domain/eventFeed.ts).
CREATE TABLE events (
  id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  type        text NOT NULL CHECK (type IN (
                'lease.activated', 'lease.renewed', 'lease.released', 'lease.expired',
                'lease.cleared', 'lease.evicted', 'lease.revoked', 'lease.redeemed',
                'lease.retired', 'token.retired')),
  -- The change's clock: the one reading it took once its token was locked.
  at          timestamptz NOT NULL,
  pool_id     integer NOT NULL,
  token_id    uuid NOT NULL,
  lease_id    uuid,
  user_id     uuid,
  -- The API client that made the lease (who may read its events), never shown.
  client_id   uuid,
  fence       bigint,
  started_at  timestamptz,
  expires_at  timestamptz,
  ended_at    timestamptz
);
-- No foreign keys and no other index: each would cost every lease change a lookup or an
-- index entry. Pools and tokens are never deleted.

-- Insert-only, and retention deletes from the low end: like usages (0002).
ALTER TABLE events SET (
  autovacuum_vacuum_scale_factor = 0.02,
  autovacuum_vacuum_insert_scale_factor = 0.02,
  autovacuum_analyze_scale_factor = 0.02
);

-- How far retention has removed the log: a reader resuming at an id below removed_through
-- has missed events that are gone (the stream sends it a reset).
CREATE TABLE events_retention (
  one_row          boolean PRIMARY KEY DEFAULT true CHECK (one_row),
  removed_through  bigint NOT NULL DEFAULT 0
);
INSERT INTO events_retention DEFAULT VALUES;
