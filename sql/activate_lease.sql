-- Gives p_user a lease in pool p_pool, in one round trip: the lease they hold if it has not run
-- out, else a new one on the lowest free token (or one whose lease ran out), else, with
-- p_evict, the token of the pool's oldest lease. p_waiter is the caller's place in the queue
-- (null for a plain activation): nobody takes a token ahead of a live waiter who came earlier.
-- p_client is the API client asking (null for any other caller), recorded on a new lease.
-- p_ttl_ms and p_evict are the service's settings: the pool's own, where it has them, win.
-- A retired token is never leased again. The answer carries the token's sealed value, if it has
-- one, for its holder (src/domain/values.ts opens it).
--
-- Locking order (docs/design.md): the user's advisory lock, then one token row, then the clock,
-- read once; every decision and every time stamped uses that reading.
CREATE OR REPLACE FUNCTION activate_lease(
  p_pool integer,
  p_user uuid,
  p_ttl_ms integer,
  p_evict boolean,
  p_waiter bigint DEFAULT NULL,
  p_client uuid DEFAULT NULL
)
RETURNS TABLE (
  outcome           text,
  lease_id          uuid,
  token_id          uuid,
  user_id           uuid,
  fence             bigint,
  started_at        timestamptz,
  expires_at        timestamptz,
  wait_ms           bigint,
  evicted_lease_id  uuid,
  expired_lease_ids uuid[],
  value_sealed      bytea
)
LANGUAGE plpgsql
AS $$
DECLARE
  held      leases;
  tok       tokens;
  have      boolean := false;
  clock     timestamptz;
  old_id    uuid;
  old_token uuid;
  evicted   uuid;
  expired   uuid[] := '{}';
  new_id    uuid;
  new_exp   timestamptz;
  ttl_ms    integer;
  evict     boolean;
  made      leases;
BEGIN
  -- One activation per user and pool at a time: the second sees what the first did.
  PERFORM pg_advisory_xact_lock(1, hashtext(p_pool::text || '/' || p_user::text));

  SELECT coalesce(p.lease_ttl_ms, p_ttl_ms), coalesce(p.full_policy = 'evict_oldest', p_evict)
    INTO ttl_ms, evict
    FROM pools p WHERE p.id = p_pool;

  SELECT l.* INTO held FROM leases l WHERE l.pool_id = p_pool AND l.user_id = p_user;
  IF FOUND THEN
    SELECT t.* INTO tok FROM tokens t WHERE t.id = held.token_id FOR UPDATE;
    clock := clock_timestamp();
    IF tok.lease_id = held.id THEN
      IF tok.expires_at > clock THEN
        IF p_waiter IS NOT NULL THEN
          DELETE FROM waiters w WHERE w.id = p_waiter;
          PERFORM wake_waiters(p_pool);
        END IF;
        RETURN QUERY SELECT 'existing'::text, tok.lease_id, tok.id, tok.user_id, tok.last_fence,
          tok.started_at, tok.expires_at, NULL::bigint, NULL::uuid, expired, tok.value_sealed;
        RETURN;
      END IF;
      -- Ran out and nothing has ended it yet: end it now. Its token is ours (locked) and free,
      -- unless it was retired.
      PERFORM end_lease(tok, clock, 'expired');
      expired := expired || held.id;
      have := tok.retired_at IS NULL;
    END IF;
    -- Else it was ended between our read and the lock: the user holds nothing.
  END IF;

  -- First come, first served.
  IF EXISTS (
    SELECT 1 FROM waiters w
    WHERE w.pool_id = p_pool AND (p_waiter IS NULL OR w.id < p_waiter)
      AND waiter_is_live(w, clock_timestamp())
  ) THEN
    IF have THEN
      PERFORM wake_waiters(p_pool);
    END IF;
    RETURN QUERY SELECT CASE WHEN p_waiter IS NULL THEN 'exhausted' ELSE 'queued' END,
      NULL::uuid, NULL::uuid, NULL::uuid, NULL::bigint, NULL::timestamptz, NULL::timestamptz,
      next_free_in_ms(p_pool), NULL::uuid, expired, NULL::bytea;
    RETURN;
  END IF;

  -- The lowest token that is free or whose lease has run out. SKIP LOCKED: concurrent
  -- activations take different tokens instead of queueing for one.
  IF NOT have THEN
    SELECT t.* INTO tok FROM tokens t
      WHERE t.pool_id = p_pool AND (t.lease_id IS NULL OR t.expires_at <= clock_timestamp())
        AND t.retired_at IS NULL
      ORDER BY t.position
      LIMIT 1
      FOR UPDATE SKIP LOCKED;
    IF FOUND THEN
      have := true;
      clock := clock_timestamp();
      IF tok.lease_id IS NOT NULL THEN
        PERFORM end_lease(tok, clock, 'expired');
        expired := expired || tok.lease_id;
      END IF;
    END IF;
  END IF;

  -- evict_oldest: the token of the oldest lease, unless it was retired. When every candidate is
  -- locked by other evictions, wait for the oldest instead of giving up (the statement timeout
  -- bounds it); if it changed hands or was retired meanwhile, look again.
  IF NOT have AND evict THEN
    LOOP
      SELECT l.id, l.token_id INTO old_id, old_token FROM leases l JOIN tokens t ON t.id = l.token_id
        WHERE l.pool_id = p_pool AND t.retired_at IS NULL
        ORDER BY l.started_at, l.id
        LIMIT 1
        FOR UPDATE OF t SKIP LOCKED;
      IF NOT FOUND THEN
        SELECT l.id, l.token_id INTO old_id, old_token FROM leases l JOIN tokens t ON t.id = l.token_id
          WHERE l.pool_id = p_pool AND t.retired_at IS NULL
          ORDER BY l.started_at, l.id
          LIMIT 1;
        EXIT WHEN NOT FOUND;
      END IF;
      SELECT t.* INTO tok FROM tokens t WHERE t.id = old_token FOR UPDATE;
      clock := clock_timestamp();
      IF tok.retired_at IS NOT NULL THEN
        NULL; -- retired meanwhile: look again
      ELSIF tok.lease_id IS NULL THEN
        have := true;
      ELSIF tok.lease_id = old_id THEN
        IF tok.expires_at <= clock THEN
          PERFORM end_lease(tok, clock, 'expired');
          expired := expired || old_id;
        ELSE
          PERFORM end_lease(tok, clock, 'evicted');
          evicted := old_id;
        END IF;
        have := true;
      END IF;
      EXIT WHEN have;
    END LOOP;
  END IF;

  IF NOT have THEN
    RETURN QUERY SELECT 'exhausted'::text, NULL::uuid, NULL::uuid, NULL::uuid, NULL::bigint,
      NULL::timestamptz, NULL::timestamptz, next_free_in_ms(p_pool), NULL::uuid, expired, NULL::bytea;
    RETURN;
  END IF;

  new_id := uuid_v7(clock);
  new_exp := clock + ttl_ms * interval '1 millisecond';
  INSERT INTO leases (id, pool_id, token_id, user_id, fence, started_at, expires_at, client_id)
    VALUES (new_id, p_pool, tok.id, p_user, tok.last_fence + 1, clock, new_exp, p_client)
    RETURNING * INTO made;
  PERFORM log_event('lease.activated', clock, as_usage(made));
  UPDATE tokens t
    SET last_fence = tok.last_fence + 1, lease_id = new_id, user_id = p_user,
        started_at = clock, expires_at = new_exp
    WHERE t.id = tok.id;
  IF p_waiter IS NOT NULL THEN
    DELETE FROM waiters w WHERE w.id = p_waiter;
    PERFORM wake_waiters(p_pool);
  END IF;

  RETURN QUERY SELECT 'created'::text, new_id, tok.id, p_user, tok.last_fence + 1, clock, new_exp,
    NULL::bigint, evicted, expired, tok.value_sealed;
END;
$$;
