-- Up Migration

-- Glossary
--   token  one unit of the finite pool (a seat, a licence key, a device slot). Never deleted.
--   usage  one lease of one token by one user, from started_at until ended_at; kept forever as history.
--   lease  an open usage (ended_at IS NULL). It is active while expires_at > now() and counts as
--          free once expires_at has passed, even before the sweep or its release job ends the row.
--   fence  a number that strictly increases with each lease of the same token, so a downstream
--          resource can refuse a holder whose lease has been superseded.

CREATE TABLE tokens (
  id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  -- Gives the pool a stable order for listing and for picking the lowest free token.
  position    bigint GENERATED ALWAYS AS IDENTITY,
  created_at  timestamptz NOT NULL DEFAULT now(),
  -- The fence of the last lease of this token (0 before the first).
  last_fence  bigint NOT NULL DEFAULT 0 CHECK (last_fence >= 0),
  -- The open usage of this token, NULL when nobody holds it. Kept on the token row so that
  -- SELECT ... FOR UPDATE SKIP LOCKED re-checks it on the row it locks: a token taken by a
  -- transaction that committed after our snapshot is skipped, not handed out twice.
  usage_id    uuid,
  CONSTRAINT tokens_position_key UNIQUE (position)
);

-- Allocation reads only free tokens, in pool order, without scanning held ones.
CREATE INDEX tokens_free_idx ON tokens (position) WHERE usage_id IS NULL;
CREATE UNIQUE INDEX tokens_usage_id_key ON tokens (usage_id) WHERE usage_id IS NOT NULL;

CREATE TABLE usages (
  id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  token_id    uuid NOT NULL REFERENCES tokens (id),
  user_id     uuid NOT NULL,
  fence       bigint NOT NULL CHECK (fence > 0),
  started_at  timestamptz NOT NULL,
  expires_at  timestamptz NOT NULL,
  ended_at    timestamptz,
  end_reason  text,
  CONSTRAINT usages_end_reason_check
    CHECK (end_reason IN ('expired', 'released', 'cleared', 'evicted')),
  CONSTRAINT usages_ended_consistently
    CHECK ((ended_at IS NULL) = (end_reason IS NULL)),
  CONSTRAINT usages_expires_after_start CHECK (expires_at > started_at),
  CONSTRAINT usages_ends_after_start CHECK (ended_at IS NULL OR ended_at >= started_at),
  -- One fence per token: history pages by it and validate looks a lease up by it.
  CONSTRAINT usages_token_fence_key UNIQUE (token_id, fence),
  CONSTRAINT usages_token_id_id_key UNIQUE (token_id, id)
);

-- The guarantee against double allocation, whatever the application does:
-- at most one open usage per token and at most one open usage per user.
CREATE UNIQUE INDEX usages_one_open_per_token ON usages (token_id) WHERE ended_at IS NULL;
CREATE UNIQUE INDEX usages_one_open_per_user ON usages (user_id) WHERE ended_at IS NULL;

-- The sweep, lazy expiry and Retry-After read open usages by expiry; eviction reads them by age.
CREATE INDEX usages_open_by_expiry ON usages (expires_at) WHERE ended_at IS NULL;
CREATE INDEX usages_open_by_start ON usages (started_at) WHERE ended_at IS NULL;

-- A token's pointer can only name one of that token's own usages.
ALTER TABLE tokens
  ADD CONSTRAINT tokens_usage_fkey FOREIGN KEY (id, usage_id) REFERENCES usages (token_id, id);

-- activate_lease gives p_user_id a lease in one round trip and one transaction.
--
-- Outcomes:
--   existing   the user already holds an unexpired lease: it is returned unchanged
--   created    a new lease (evicted_lease_id is set when POOL_FULL_POLICY=evict_oldest took it)
--   exhausted  no token is free; wait_ms is how long until the earliest lease expires
--
-- Locking, always in this order so that no two transactions wait on each other:
--   1. a per-user advisory lock (class 1), so concurrent activations of one user find the lease
--      the first one made instead of racing to the unique index;
--   2. token rows, FOR UPDATE SKIP LOCKED, so concurrent activations take different tokens and a
--      refusal never waits;
--   3. usage rows, only of tokens this transaction has locked.
CREATE FUNCTION activate_lease(p_user_id uuid, p_ttl_ms integer, p_evict_oldest boolean)
RETURNS TABLE (
  outcome          text,
  lease_id         uuid,
  token_id         uuid,
  user_id          uuid,
  fence            bigint,
  started_at       timestamptz,
  expires_at       timestamptz,
  wait_ms          bigint,
  evicted_lease_id uuid
)
LANGUAGE plpgsql
AS $$
DECLARE
  held        usages%ROWTYPE;
  taken_id    uuid;
  taken_fence bigint;
  old_id      uuid;
  evicted     uuid;
  created     usages%ROWTYPE;
BEGIN
  PERFORM pg_advisory_xact_lock(1, hashtext(p_user_id::text));

  SELECT u.* INTO held FROM usages u WHERE u.user_id = p_user_id AND u.ended_at IS NULL;
  IF FOUND THEN
    IF held.expires_at > now() THEN
      RETURN QUERY SELECT 'existing'::text, held.id, held.token_id, held.user_id, held.fence,
        held.started_at, held.expires_at, NULL::bigint, NULL::uuid;
      RETURN;
    END IF;
    -- The caller's own lease ran out and nothing has ended it yet: end it before opening another.
    PERFORM 1 FROM tokens t WHERE t.id = held.token_id FOR UPDATE;
    UPDATE usages u SET ended_at = now(), end_reason = 'expired'
      WHERE u.id = held.id AND u.ended_at IS NULL AND u.expires_at <= now();
    UPDATE tokens t SET usage_id = NULL WHERE t.id = held.token_id AND t.usage_id = held.id;
  END IF;

  -- 1. The lowest free token.
  SELECT t.id, t.last_fence INTO taken_id, taken_fence FROM tokens t
    WHERE t.usage_id IS NULL
    ORDER BY t.position
    LIMIT 1
    FOR UPDATE SKIP LOCKED;

  -- 2. A token whose lease has run out but has not been ended yet (lazy expiry).
  IF NOT FOUND THEN
    SELECT t.id, t.last_fence, u.id INTO taken_id, taken_fence, old_id FROM usages u JOIN tokens t ON t.usage_id = u.id
      WHERE u.ended_at IS NULL AND u.expires_at <= now()
      ORDER BY u.expires_at
      LIMIT 1
      FOR UPDATE OF t SKIP LOCKED;
    IF FOUND THEN
      -- Re-checked on the newest row: a renewal that committed after our snapshot wins.
      UPDATE usages u SET ended_at = now(), end_reason = 'expired'
        WHERE u.id = old_id AND u.ended_at IS NULL AND u.expires_at <= now();
      IF NOT FOUND THEN
        taken_id := NULL;
      END IF;
    END IF;
  END IF;

  -- 3. With POOL_FULL_POLICY=evict_oldest, the token of the oldest active lease.
  IF taken_id IS NULL AND p_evict_oldest THEN
    SELECT t.id, t.last_fence, u.id INTO taken_id, taken_fence, old_id FROM usages u JOIN tokens t ON t.usage_id = u.id
      WHERE u.ended_at IS NULL
      ORDER BY u.started_at, u.id
      LIMIT 1
      FOR UPDATE OF t SKIP LOCKED;
    IF FOUND THEN
      UPDATE usages u SET ended_at = now(), end_reason = 'evicted'
        WHERE u.id = old_id AND u.ended_at IS NULL;
      IF FOUND THEN
        evicted := old_id;
      ELSE
        taken_id := NULL;
      END IF;
    END IF;
  END IF;

  IF taken_id IS NULL THEN
    RETURN QUERY SELECT 'exhausted'::text, NULL::uuid, NULL::uuid, NULL::uuid, NULL::bigint,
      NULL::timestamptz, NULL::timestamptz,
      COALESCE(
        ceil(extract(epoch FROM (min(u.expires_at) - now())) * 1000)::bigint,
        0
      ),
      NULL::uuid
      FROM usages u WHERE u.ended_at IS NULL;
    RETURN;
  END IF;

  INSERT INTO usages (token_id, user_id, fence, started_at, expires_at)
    VALUES (taken_id, p_user_id, taken_fence + 1, now(),
            now() + p_ttl_ms * interval '1 millisecond')
    RETURNING * INTO created;
  UPDATE tokens t SET usage_id = created.id, last_fence = created.fence WHERE t.id = taken_id;

  RETURN QUERY SELECT 'created'::text, created.id, created.token_id, created.user_id,
    created.fence, created.started_at, created.expires_at, NULL::bigint, evicted;
END;
$$;

-- Down Migration

DROP FUNCTION IF EXISTS activate_lease(uuid, integer, boolean);
ALTER TABLE tokens DROP CONSTRAINT IF EXISTS tokens_usage_fkey;
DROP TABLE IF EXISTS usages;
DROP TABLE IF EXISTS tokens;
