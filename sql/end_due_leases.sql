-- Ends up to p_limit leases of the pool whose time is up, earliest expiry first; each by the
-- clock read once its token is locked. SKIP LOCKED: a token someone else has locked is being
-- ended or taken right now. Returns the ended usages.
CREATE OR REPLACE FUNCTION end_due_leases(p_pool integer, p_limit integer) RETURNS SETOF usages
LANGUAGE plpgsql
AS $$
DECLARE
  tok   tokens;
  clock timestamptz;
  n     integer := 0;
BEGIN
  FOR tok IN
    SELECT t.* FROM leases l JOIN tokens t ON t.id = l.token_id AND t.lease_id = l.id
      WHERE l.pool_id = p_pool AND l.expires_at <= clock_timestamp()
      ORDER BY l.expires_at
      LIMIT p_limit
      FOR UPDATE OF t SKIP LOCKED
  LOOP
    clock := clock_timestamp();
    IF tok.lease_id IS NOT NULL AND tok.expires_at <= clock THEN
      RETURN NEXT end_lease(tok, clock, 'expired');
      n := n + 1;
    END IF;
  END LOOP;
  IF n > 0 THEN
    PERFORM wake_waiters(p_pool);
  END IF;
END;
$$;
