-- Ends every open lease of the pool: it locks the tokens the pool's open leases hold (in
-- position order, so two clears never deadlock), then reads the clock once. Only those tokens:
-- locking every token of a large pool would write each of its rows, and a lease begun on
-- another token meanwhile is one the clear never saw. A lease that had run out ends as
-- expired, not cleared: that is what happened to it. Returns the ended usages.
CREATE OR REPLACE FUNCTION clear_leases(p_pool integer) RETURNS SETOF usages
LANGUAGE plpgsql
AS $$
DECLARE
  held  uuid[];
  tok   tokens;
  clock timestamptz;
  n     integer := 0;
BEGIN
  held := ARRAY(
    SELECT t.id FROM tokens t
    WHERE t.pool_id = p_pool AND t.id IN (SELECT l.token_id FROM leases l WHERE l.pool_id = p_pool)
    ORDER BY t.position FOR UPDATE OF t);
  clock := clock_timestamp();
  FOR tok IN SELECT t.* FROM tokens t WHERE t.id = ANY (held) AND t.lease_id IS NOT NULL ORDER BY t.position LOOP
    RETURN NEXT end_lease(tok, clock, CASE WHEN tok.expires_at <= clock THEN 'expired' ELSE 'cleared' END);
    n := n + 1;
  END LOOP;
  IF n > 0 THEN
    PERFORM wake_waiters(p_pool);
  END IF;
END;
$$;
