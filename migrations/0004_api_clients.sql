-- Up Migration

-- API clients (AUTH_MODE=api_key): applications with a key of their own, scoped and revocable
-- one by one. Only a hash of each key is kept (SHA-256 of a key with 256 random bits): the key
-- itself is shown once, when the client is made. A revoked client stays, for the leases and
-- the history that name it.
CREATE TABLE api_clients (
  id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
  scopes        text[] NOT NULL
                CHECK (cardinality(scopes) > 0 AND scopes <@ ARRAY['lease', 'read', 'admin']::text[]),
  key_hash      bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
  created_at    timestamptz NOT NULL DEFAULT now(),
  -- When the key was last used, to within a minute: each API process writes it at most once a
  -- minute per client.
  last_used_at  timestamptz,
  revoked_at    timestamptz
);

-- The API client that made each lease, null for a lease made otherwise: only that client (or a
-- caller with the admin scope) may end or renew it. Copied into the usage when the lease ends.
-- No foreign key: every activation would take a lock on its client's row (FOR KEY SHARE), and
-- a busy client's activations would all contend for it. Clients are revoked, never deleted.
ALTER TABLE leases ADD COLUMN client_id uuid;
ALTER TABLE usages ADD COLUMN client_id uuid;

-- These change their arguments or the shape of their rows (a usage has a client now): the old
-- forms go here, and the start re-creates them from sql/.
DROP FUNCTION IF EXISTS activate_lease(integer, uuid, integer, boolean, bigint);
DROP FUNCTION IF EXISTS release_lease(uuid, uuid, uuid);
DROP FUNCTION IF EXISTS renew_lease(uuid, uuid, uuid, integer, integer);
DROP FUNCTION IF EXISTS end_lease_if_due(uuid);
DROP FUNCTION IF EXISTS expire_lease(uuid, integer);
