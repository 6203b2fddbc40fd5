-- Up Migration

-- Release and renew find a user's latest usage of a token without walking the token's history.
CREATE INDEX usages_user_token_fence ON usages (user_id, token_id, fence DESC);

-- Clients waiting for a token (POST /api/tokens/activate?wait=N), served first come, first served
-- across every API process: id is the arrival order. A waiter is live while its deadline has not
-- passed and its process keeps heartbeat_at fresh; a crashed process's waiters stop counting once
-- their heartbeat is stale, so they cannot hold the queue up.
CREATE TABLE waiters (
  id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  user_id       uuid NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now(),
  deadline      timestamptz NOT NULL,
  heartbeat_at  timestamptz NOT NULL DEFAULT now()
);

-- How long a waiter's heartbeat stays fresh; API processes refresh it every second.
CREATE FUNCTION waiter_is_live(w waiters) RETURNS boolean
LANGUAGE sql STABLE
AS $$ SELECT w.deadline > now() AND w.heartbeat_at > now() - interval '5 seconds' $$;

-- Wake-ups for waiters, through LISTEN token_lease_waiters: sent when a statement frees a token
-- (release, clear, expiry, sweep) or when a waiter leaves the queue (served, timed out, gone), and
-- only while somebody waits, so the lease hot path pays nothing for it otherwise.
CREATE FUNCTION wake_waiters_on_free() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM waiters) AND EXISTS (SELECT 1 FROM freed WHERE usage_id IS NULL) THEN
    PERFORM pg_notify('token_lease_waiters', 'freed');
  END IF;
  RETURN NULL;
END;
$$;

CREATE TRIGGER tokens_wake_waiters AFTER UPDATE ON tokens
  REFERENCING NEW TABLE AS freed
  FOR EACH STATEMENT EXECUTE FUNCTION wake_waiters_on_free();

CREATE FUNCTION wake_waiters_on_leave() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM waiters) THEN
    PERFORM pg_notify('token_lease_waiters', 'left');
  END IF;
  RETURN NULL;
END;
$$;

CREATE TRIGGER waiters_wake_next AFTER DELETE ON waiters
  FOR EACH STATEMENT EXECUTE FUNCTION wake_waiters_on_leave();

-- activate_lease, second version: the waiting queue.
--
-- A caller that is not a waiter (p_waiter_id NULL) may take a token only while nobody waits;
-- otherwise it is refused like on a full pool, so it cannot overtake the queue. A waiter may take
-- one only when no live waiter arrived before it (outcome `queued` otherwise), and leaves the
-- queue in the same transaction as it gets its lease. Everything else is as in the first version
-- (migrations/0001), including the locking order.
DROP FUNCTION activate_lease(uuid, integer, boolean);

CREATE FUNCTION activate_lease(
  p_user_id uuid,
  p_ttl_ms integer,
  p_evict_oldest boolean,
  p_waiter_id bigint DEFAULT NULL
)
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
      DELETE FROM waiters w WHERE w.id = p_waiter_id;
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

  -- First come, first served: nobody takes a token ahead of a live waiter who came earlier.
  IF EXISTS (
    SELECT 1 FROM waiters w
    WHERE (p_waiter_id IS NULL OR w.id < p_waiter_id) AND waiter_is_live(w)
  ) THEN
    RETURN QUERY SELECT
      CASE WHEN p_waiter_id IS NULL THEN 'exhausted' ELSE 'queued' END,
      NULL::uuid, NULL::uuid, NULL::uuid, NULL::bigint, NULL::timestamptz, NULL::timestamptz,
      COALESCE(ceil(extract(epoch FROM (min(u.expires_at) - now())) * 1000)::bigint, 0),
      NULL::uuid
      FROM usages u WHERE u.ended_at IS NULL;
    RETURN;
  END IF;

  -- 1. The lowest free token.
  SELECT t.id, t.last_fence INTO taken_id, taken_fence FROM tokens t
    WHERE t.usage_id IS NULL
    ORDER BY t.position
    LIMIT 1
    FOR UPDATE SKIP LOCKED;

  -- 2. A token whose lease has run out but has not been ended yet (lazy expiry).
  IF NOT FOUND THEN
    SELECT t.id, t.last_fence, u.id INTO taken_id, taken_fence, old_id
      FROM usages u JOIN tokens t ON t.usage_id = u.id
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
    SELECT t.id, t.last_fence, u.id INTO taken_id, taken_fence, old_id
      FROM usages u JOIN tokens t ON t.usage_id = u.id
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
      COALESCE(ceil(extract(epoch FROM (min(u.expires_at) - now())) * 1000)::bigint, 0),
      NULL::uuid
      FROM usages u WHERE u.ended_at IS NULL;
    RETURN;
  END IF;

  INSERT INTO usages (token_id, user_id, fence, started_at, expires_at)
    VALUES (taken_id, p_user_id, taken_fence + 1, now(),
            now() + p_ttl_ms * interval '1 millisecond')
    RETURNING * INTO created;
  UPDATE tokens t SET usage_id = created.id, last_fence = created.fence WHERE t.id = taken_id;
  DELETE FROM waiters w WHERE w.id = p_waiter_id;

  RETURN QUERY SELECT 'created'::text, created.id, created.token_id, created.user_id,
    created.fence, created.started_at, created.expires_at, NULL::bigint, evicted;
END;
$$;

-- Down Migration

-- Leaves no activate_lease behind: migrate 0001 down too, or up again, to get one.
DROP FUNCTION IF EXISTS activate_lease(uuid, integer, boolean, bigint);
DROP TRIGGER IF EXISTS waiters_wake_next ON waiters;
DROP TRIGGER IF EXISTS tokens_wake_waiters ON tokens;
DROP FUNCTION IF EXISTS wake_waiters_on_leave();
DROP FUNCTION IF EXISTS wake_waiters_on_free();
DROP FUNCTION IF EXISTS waiter_is_live(waiters);
DROP TABLE IF EXISTS waiters;
DROP INDEX IF EXISTS usages_user_token_fence;
