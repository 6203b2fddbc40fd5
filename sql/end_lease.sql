-- Ends the lease on a token. The caller holds the token's row lock (`tok` is that row as
-- locked) and passes the one clock reading it took after locking: the open lease becomes a
-- usage that ended then, and the token's copy of the lease is cleared, and its event
-- (lease.<reason>) is logged in the same transaction. Returns the usage.
CREATE OR REPLACE FUNCTION end_lease(tok tokens, clock timestamptz, reason text) RETURNS usages
LANGUAGE plpgsql
AS $$
DECLARE
  ended usages;
BEGIN
  WITH open AS (DELETE FROM leases l WHERE l.id = tok.lease_id RETURNING l.*)
  INSERT INTO usages (id, pool_id, token_id, user_id, fence, started_at, expires_at, ended_at, end_reason, client_id)
    SELECT o.id, o.pool_id, o.token_id, o.user_id, o.fence, o.started_at, o.expires_at, clock, reason, o.client_id
    FROM open o
    RETURNING * INTO ended;
  IF ended.id IS NOT NULL THEN
    PERFORM log_event('lease.' || reason, clock, ended);
  END IF;
  UPDATE tokens t SET lease_id = NULL, user_id = NULL, started_at = NULL, expires_at = NULL
    WHERE t.id = tok.id;
  RETURN ended;
END;
$$;
