-- Up Migration

-- What a token carries, and tokens taken out of use.
--
-- A token may carry a secret value (a licence key, an API key, a seat credential), given only
-- to its holder. It is found by its SHA-256 (`value_digest`, unique among all tokens) and kept
-- sealed (`value_sealed`): encrypted with AES-256-GCM when TOKEN_VALUE_KEY is set, so that a
-- dump of the database alone does not reveal it (src/domain/values.ts has the format). A token
-- without a value has neither. No lease statement changes these columns, so a lease granted,
-- renewed or ended stays a HOT update of `tokens`.
--
-- `retired_at`: when the token was retired. A retired token is never leased again; one retired
-- while held stays held until its lease ends.
ALTER TABLE tokens
  ADD COLUMN value_digest bytea CHECK (length(value_digest) = 32),
  ADD COLUMN value_sealed bytea,
  ADD COLUMN retired_at   timestamptz,
  ADD CONSTRAINT tokens_value_whole CHECK ((value_digest IS NULL) = (value_sealed IS NULL)),
  ADD CONSTRAINT tokens_value_digest_key UNIQUE (value_digest);

-- The answers of admin requests sent with an Idempotency-Key (generate, import), so that a
-- retried request answers the first one's result instead of doing it again. `answer` is null
-- while the first request runs; it never holds a token's value.
CREATE TABLE idempotent_requests (
  operation     text NOT NULL,
  key           text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
  request_hash  bytea NOT NULL,
  answer        jsonb,
  created_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (operation, key)
);

-- These change the shape of their rows (a lease's answer carries the token's sealed value): the
-- old forms go here, and the start re-creates them from sql/.
DROP FUNCTION IF EXISTS activate_lease(integer, uuid, integer, boolean, bigint, uuid);
DROP FUNCTION IF EXISTS renew_lease(uuid, uuid, uuid, integer, integer, uuid);
