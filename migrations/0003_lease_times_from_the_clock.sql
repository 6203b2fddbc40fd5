-- Up Migration

-- Lease times are read from the clock when the rows are written, not from now().
--
-- now() is the start of the transaction, and an activation may wait after it starts: for its
-- user's advisory lock (another activation of the same user), or for the token of its own expired
-- lease. A token released meanwhile was then taken with a start time from before the release, so
-- the token's history showed two usages overlapping, fences out of start order, and a lease
-- shorter than LEASE_TTL_MS by the time waited; and a lease ended by such a transaction (evicted)
-- could get an ended_at before its started_at, which usages_ends_after_start refuses.
--
-- clock_timestamp() read after the rows are locked follows the order of the locks: a usage is
-- ended after it was committed, and a token is taken again after the transaction that freed it
-- committed. Every statement that ends a lease (src/db/queries.ts) does the same. Deciding whether
-- a lease has run out still compares with now(), which can only find it due a little later.
--
-- activate_lease, third version: as in migrations/0002, with its lease times from the clock.
CREATE OR REPLACE FUNCTION activate_lease(
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
  granted_at  timestamptz;
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
    UPDATE usages u SET ended_at = clock_timestamp(), end_reason = 'expired'
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
      UPDATE usages u SET ended_at = clock_timestamp(), end_reason = 'expired'
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
      UPDATE usages u SET ended_at = clock_timestamp(), end_reason = 'evicted'
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

  granted_at := clock_timestamp();
  INSERT INTO usages (token_id, user_id, fence, started_at, expires_at)
    VALUES (taken_id, p_user_id, taken_fence + 1, granted_at,
            granted_at + p_ttl_ms * interval '1 millisecond')
    RETURNING * INTO created;
  UPDATE tokens t SET usage_id = created.id, last_fence = created.fence WHERE t.id = taken_id;
  DELETE FROM waiters w WHERE w.id = p_waiter_id;

  RETURN QUERY SELECT 'created'::text, created.id, created.token_id, created.user_id,
    created.fence, created.started_at, created.expires_at, NULL::bigint, evicted;
END;
$$;

-- Down Migration

-- activate_lease as migrations/0002 left it.
CREATE OR REPLACE FUNCTION activate_lease(
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
