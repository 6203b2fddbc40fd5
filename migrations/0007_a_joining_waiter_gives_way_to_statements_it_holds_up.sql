-- Up Migration

-- add_waiter, second version: it waits for its lock on tokens a little at a time, and gives way
-- in between, so that it cannot hold statements up for long.
--
-- The first version (migrations/0006) asked for SHARE ROW EXCLUSIVE on tokens and waited for it
-- as long as it took. While it waits, every statement that asks for a lock on tokens that
-- conflicts with it queues behind it. activate_lease locks a token row (FOR UPDATE SKIP LOCKED,
-- which needs only ROW SHARE on the table) and asks for ROW EXCLUSIVE a statement later, at its
-- UPDATE; so an activation could queue behind the waiter while holding the row, the waiter wait
-- for a clear in progress, and the clear wait for the row. No one moved until PostgreSQL's
-- deadlock check, after deadlock_timeout (1 s by default), let the activation past the waiter.
-- Under load this happened again and again within one clear, which ran past its 5 s statement
-- timeout, and requests queued behind it for a connection answered 503.
--
-- Now each wait for the lock lasts at most 50 ms (lock_timeout); then the waiter leaves the
-- queue, so whatever queued behind it goes on, and asks again 5 ms later. It keeps asking for
-- up to 1 s, which outlasts any statement that is not stuck itself; past that it joins without
-- the lock, and a token freed at that moment reaches it at its next re-check, a second later,
-- as before migrations/0006. The lock, once held, orders the place with the statements that
-- free tokens exactly as before. Statements that change tokens are held up as before while the
-- waiter holds or waits for the lock, but never for more than 50 ms at a time.

CREATE OR REPLACE FUNCTION add_waiter(p_user_id uuid, p_timeout_ms integer) RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
  added       bigint;
  given_up_at timestamptz := clock_timestamp() + interval '1 second';
  -- The caller's setting, put back once the lock is held (or given up): the insert below must
  -- wait as long as any other statement would.
  timeout     text := current_setting('lock_timeout');
BEGIN
  LOOP
    BEGIN
      PERFORM set_config('lock_timeout', '50ms', true);
      LOCK TABLE tokens IN SHARE ROW EXCLUSIVE MODE;
      EXIT;
    EXCEPTION WHEN lock_not_available THEN
      EXIT WHEN clock_timestamp() >= given_up_at;
      PERFORM pg_sleep(0.005);
    END;
  END LOOP;
  PERFORM set_config('lock_timeout', timeout, true);
  INSERT INTO waiters (user_id, deadline)
    VALUES (p_user_id, clock_timestamp() + p_timeout_ms * interval '1 millisecond')
    RETURNING id INTO added;
  RETURN added;
END;
$$;

-- Down Migration

-- Back to the first version, as migrations/0006 created it.

CREATE OR REPLACE FUNCTION add_waiter(p_user_id uuid, p_timeout_ms integer) RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
  added bigint;
BEGIN
  LOCK TABLE tokens IN SHARE ROW EXCLUSIVE MODE;
  INSERT INTO waiters (user_id, deadline)
    VALUES (p_user_id, clock_timestamp() + p_timeout_ms * interval '1 millisecond')
    RETURNING id INTO added;
  RETURN added;
END;
$$;
