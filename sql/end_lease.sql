-- Ends the lease on a token. The caller holds the token's row lock (`tok` is that row as
-- locked) and passes the one clock reading it took after locking: the usage ends then, and the
-- token's copy of the lease is cleared. Returns the ended usage.
CREATE OR REPLACE FUNCTION end_lease(tok tokens, clock timestamptz, reason text) RETURNS usages
LANGUAGE plpgsql
AS $$
DECLARE
  ended usages;
BEGIN
  UPDATE usages u SET ended_at = clock, end_reason = reason
    WHERE u.id = tok.lease_id AND u.ended_at IS NULL
    RETURNING u.* INTO ended;
  UPDATE tokens t SET lease_id = NULL, user_id = NULL, started_at = NULL, expires_at = NULL
    WHERE t.id = tok.id;
  RETURN ended;
END;
$$;
