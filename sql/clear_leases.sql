-- Ends every open lease of the pool: it locks all the pool's tokens (in position order, so two
-- clears never deadlock), then reads the clock once. A lease that had run out ends as
-- expired, not cleared: that is what happened to it. Returns the ended usages.
CREATE OR REPLACE FUNCTION clear_leases(p_pool integer) RETURNS SETOF usages
LANGUAGE plpgsql
AS $$
DECLARE
  tok   tokens;
  clock timestamptz;
  n     integer := 0;
BEGIN
  PERFORM 1 FROM tokens t WHERE t.pool_id = p_pool ORDER BY t.position FOR UPDATE;
  clock := clock_timestamp();
  FOR tok IN SELECT t.* FROM tokens t WHERE t.pool_id = p_pool AND t.lease_id IS NOT NULL ORDER BY t.position LOOP
    RETURN NEXT end_lease(tok, clock, CASE WHEN tok.expires_at <= clock THEN 'expired' ELSE 'cleared' END);
    n := n + 1;
  END LOOP;
  IF n > 0 THEN
    PERFORM wake_waiters(p_pool);
  END IF;
END;
$$;
