-- Called by every statement that frees a token of the pool or gives up a place in its queue:
-- tells the API processes (LISTEN token_lease_waiters) which pool to look at, and only when
-- somebody waits there. The notification is sent when the transaction commits.
CREATE OR REPLACE FUNCTION wake_waiters(p_pool integer) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM waiters w WHERE w.pool_id = p_pool) THEN
    PERFORM pg_notify('token_lease_waiters', p_pool::text);
  END IF;
END;
$$;
