-- Up Migration

-- activate_lease, fifth version: it copes with a renewal that commits while it ends a lease that
-- ran out.
--
-- The fourth version (migrations/0004) read the caller's open lease, saw it past its expiry, and
-- ended it with an UPDATE that re-checks the expiry on the newest row. When a renewal of that
-- lease committed in between, the re-check found it unexpired and ended nothing, as it should;
-- but the token's pointer was cleared all the same. The lease was left open with no token
-- pointing at it: nothing could end it any more (every statement that ends leases finds them
-- through tokens.usage_id), and the next activation to take that token failed on
-- usages_one_open_per_token, again and again. Now the pointer is cleared only when the lease was
-- ended, and an activation that finds the lease renewed answers it as the caller's lease
-- ('existing'), as it would have had the renewal committed before it began.
--
-- The same race on another user's lease: with no token free, an activation takes the token of
-- the lease that ran out first, and a renewal of that lease committing in between made it give
-- up, answering 409 pool_exhausted (or, with evict_oldest, evicting an active lease) while other
-- leases had run out too. It now tries the next one. And the time to wait that a refusal
-- reports (Retry-After, and the waiting queue's next look) is never negative: a lease that has
-- run out but is locked by another transaction made it so, and a waiter then looked again every
-- millisecond; and a refusal for the sake of waiters while a token is free reports no wait
-- (Retry-After: 1) instead of the time to the earliest expiry, which a crashed process's waiters
-- (live for 5 s more) made look like a minute. Arguments, results and locking order are
-- unchanged.

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
  evicted_lease_id uuid,
  expired_lease_ids uuid[]
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
  -- When the token changed hands: the end of the lease it displaced and the start of the new one.
  handed_at   timestamptz;
  -- Leases this call ended because their time had run out (lazy expiry), for the caller's count.
  expired     uuid[] := '{}';
  -- Run-out leases it tried to take but found renewed meanwhile.
  renewed     uuid[] := '{}';
BEGIN
  PERFORM pg_advisory_xact_lock(1, hashtext(p_user_id::text));

  SELECT u.* INTO held FROM usages u WHERE u.user_id = p_user_id AND u.ended_at IS NULL;
  IF FOUND THEN
    IF held.expires_at > now() THEN
      DELETE FROM waiters w WHERE w.id = p_waiter_id;
      RETURN QUERY SELECT 'existing'::text, held.id, held.token_id, held.user_id, held.fence,
        held.started_at, held.expires_at, NULL::bigint, NULL::uuid, expired;
      RETURN;
    END IF;
    -- The caller's own lease ran out and nothing has ended it yet: end it before opening another.
    PERFORM 1 FROM tokens t WHERE t.id = held.token_id FOR UPDATE;
    UPDATE usages u SET ended_at = clock_timestamp(), end_reason = 'expired'
      WHERE u.id = held.id AND u.ended_at IS NULL AND u.expires_at <= now();
    IF FOUND THEN
      expired := expired || held.id;
      UPDATE tokens t SET usage_id = NULL WHERE t.id = held.token_id AND t.usage_id = held.id;
    ELSE
      -- Not ended: a renewal that committed after our snapshot moved its expiry on (or another
      -- statement ended it, and freed its token, meanwhile). A renewed lease is the caller's
      -- unexpired lease: answer it, and leave its token pointing at it.
      SELECT u.* INTO held FROM usages u WHERE u.id = held.id AND u.ended_at IS NULL;
      IF FOUND THEN
        DELETE FROM waiters w WHERE w.id = p_waiter_id;
        RETURN QUERY SELECT 'existing'::text, held.id, held.token_id, held.user_id, held.fence,
          held.started_at, held.expires_at, NULL::bigint, NULL::uuid, expired;
        RETURN;
      END IF;
    END IF;
  END IF;

  -- First come, first served: nobody takes a token ahead of a live waiter who came earlier.
  -- The time to wait is until the earliest expiry, or none when a token is free already (the
  -- waiters are about to take it, or are gone without a word and stop counting within seconds).
  IF EXISTS (
    SELECT 1 FROM waiters w
    WHERE (p_waiter_id IS NULL OR w.id < p_waiter_id) AND waiter_is_live(w)
  ) THEN
    RETURN QUERY SELECT
      CASE WHEN p_waiter_id IS NULL THEN 'exhausted' ELSE 'queued' END,
      NULL::uuid, NULL::uuid, NULL::uuid, NULL::bigint, NULL::timestamptz, NULL::timestamptz,
      CASE WHEN EXISTS (SELECT 1 FROM tokens t WHERE t.usage_id IS NULL) THEN 0::bigint
        ELSE greatest(0, COALESCE(ceil(extract(epoch FROM (min(u.expires_at) - now())) * 1000)::bigint, 0))
      END,
      NULL::uuid, expired
      FROM usages u WHERE u.ended_at IS NULL;
    RETURN;
  END IF;

  -- 1. The lowest free token.
  SELECT t.id, t.last_fence INTO taken_id, taken_fence FROM tokens t
    WHERE t.usage_id IS NULL
    ORDER BY t.position
    LIMIT 1
    FOR UPDATE SKIP LOCKED;

  -- 2. A token whose lease has run out but has not been ended yet (lazy expiry): the earliest
  -- one, or, when a renewal of it committed after our snapshot, the next one.
  IF NOT FOUND THEN
    LOOP
      SELECT t.id, t.last_fence, u.id INTO taken_id, taken_fence, old_id
        FROM usages u JOIN tokens t ON t.usage_id = u.id
        WHERE u.ended_at IS NULL AND u.expires_at <= now() AND u.id <> ALL (renewed)
        ORDER BY u.expires_at
        LIMIT 1
        FOR UPDATE OF t SKIP LOCKED;
      EXIT WHEN NOT FOUND;
      handed_at := clock_timestamp();
      -- Re-checked on the newest row: a renewal that committed after our snapshot wins.
      UPDATE usages u SET ended_at = handed_at, end_reason = 'expired'
        WHERE u.id = old_id AND u.ended_at IS NULL AND u.expires_at <= now();
      IF FOUND THEN
        expired := expired || old_id;
        EXIT;
      END IF;
      renewed := renewed || old_id;
      taken_id := NULL;
      handed_at := NULL;
    END LOOP;
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
      handed_at := clock_timestamp();
      UPDATE usages u SET ended_at = handed_at, end_reason = 'evicted'
        WHERE u.id = old_id AND u.ended_at IS NULL;
      IF FOUND THEN
        evicted := old_id;
      ELSE
        taken_id := NULL;
        handed_at := NULL;
      END IF;
    END IF;
  END IF;

  IF taken_id IS NULL THEN
    RETURN QUERY SELECT 'exhausted'::text, NULL::uuid, NULL::uuid, NULL::uuid, NULL::bigint,
      NULL::timestamptz, NULL::timestamptz,
      greatest(0, COALESCE(ceil(extract(epoch FROM (min(u.expires_at) - now())) * 1000)::bigint, 0)),
      NULL::uuid, expired
      FROM usages u WHERE u.ended_at IS NULL;
    RETURN;
  END IF;

  handed_at := coalesce(handed_at, clock_timestamp());
  INSERT INTO usages (token_id, user_id, fence, started_at, expires_at)
    VALUES (taken_id, p_user_id, taken_fence + 1, handed_at,
            handed_at + p_ttl_ms * interval '1 millisecond')
    RETURNING * INTO created;
  UPDATE tokens t SET usage_id = created.id, last_fence = created.fence WHERE t.id = taken_id;
  DELETE FROM waiters w WHERE w.id = p_waiter_id;

  RETURN QUERY SELECT 'created'::text, created.id, created.token_id, created.user_id,
    created.fence, created.started_at, created.expires_at, NULL::bigint, evicted, expired;
END;
$$;

-- Down Migration

-- Back to the fourth version, as migrations/0004 created it.

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
  evicted_lease_id uuid,
  expired_lease_ids uuid[]
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
  -- When the token changed hands: the end of the lease it displaced and the start of the new one.
  handed_at   timestamptz;
  -- Leases this call ended because their time had run out (lazy expiry), for the caller's count.
  expired     uuid[] := '{}';
BEGIN
  PERFORM pg_advisory_xact_lock(1, hashtext(p_user_id::text));

  SELECT u.* INTO held FROM usages u WHERE u.user_id = p_user_id AND u.ended_at IS NULL;
  IF FOUND THEN
    IF held.expires_at > now() THEN
      DELETE FROM waiters w WHERE w.id = p_waiter_id;
      RETURN QUERY SELECT 'existing'::text, held.id, held.token_id, held.user_id, held.fence,
        held.started_at, held.expires_at, NULL::bigint, NULL::uuid, expired;
      RETURN;
    END IF;
    -- The caller's own lease ran out and nothing has ended it yet: end it before opening another.
    PERFORM 1 FROM tokens t WHERE t.id = held.token_id FOR UPDATE;
    UPDATE usages u SET ended_at = clock_timestamp(), end_reason = 'expired'
      WHERE u.id = held.id AND u.ended_at IS NULL AND u.expires_at <= now();
    IF FOUND THEN
      expired := expired || held.id;
    END IF;
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
      NULL::uuid, expired
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
      handed_at := clock_timestamp();
      -- Re-checked on the newest row: a renewal that committed after our snapshot wins.
      UPDATE usages u SET ended_at = handed_at, end_reason = 'expired'
        WHERE u.id = old_id AND u.ended_at IS NULL AND u.expires_at <= now();
      IF FOUND THEN
        expired := expired || old_id;
      ELSE
        taken_id := NULL;
        handed_at := NULL;
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
      handed_at := clock_timestamp();
      UPDATE usages u SET ended_at = handed_at, end_reason = 'evicted'
        WHERE u.id = old_id AND u.ended_at IS NULL;
      IF FOUND THEN
        evicted := old_id;
      ELSE
        taken_id := NULL;
        handed_at := NULL;
      END IF;
    END IF;
  END IF;

  IF taken_id IS NULL THEN
    RETURN QUERY SELECT 'exhausted'::text, NULL::uuid, NULL::uuid, NULL::uuid, NULL::bigint,
      NULL::timestamptz, NULL::timestamptz,
      COALESCE(ceil(extract(epoch FROM (min(u.expires_at) - now())) * 1000)::bigint, 0),
      NULL::uuid, expired
      FROM usages u WHERE u.ended_at IS NULL;
    RETURN;
  END IF;

  handed_at := coalesce(handed_at, clock_timestamp());
  INSERT INTO usages (token_id, user_id, fence, started_at, expires_at)
    VALUES (taken_id, p_user_id, taken_fence + 1, handed_at,
            handed_at + p_ttl_ms * interval '1 millisecond')
    RETURNING * INTO created;
  UPDATE tokens t SET usage_id = created.id, last_fence = created.fence WHERE t.id = taken_id;
  DELETE FROM waiters w WHERE w.id = p_waiter_id;

  RETURN QUERY SELECT 'created'::text, created.id, created.token_id, created.user_id,
    created.fence, created.started_at, created.expires_at, NULL::bigint, evicted, expired;
END;
$$;
