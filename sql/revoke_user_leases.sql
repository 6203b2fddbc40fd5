-- Ends every open lease of p_user, in every pool: an admin's revoke of one user. It locks the
-- tokens of the user's leases in (pool, position) order, so two revokes never deadlock and a
-- clear (one pool's tokens, in position order) never waits in a cycle with it; then it reads the
-- clock once and ends, by that reading, each lease on those tokens that is still the user's. A
-- lease that had run out ends as expired, not revoked. A lease granted on another token after
-- the tokens were found is not touched: it began after the revoke. Returns the ended usages.
CREATE OR REPLACE FUNCTION revoke_user_leases(p_user uuid) RETURNS SETOF usages
LANGUAGE plpgsql
AS $$
DECLARE
  locked uuid[];
  tok    tokens;
  clock  timestamptz;
  woken  integer[] := '{}';
BEGIN
  -- The user's open leases: one lookup of leases_one_per_user (pool_id, user_id) per pool.
  SELECT coalesce(array_agg(mine.id), '{}') INTO locked FROM (
    SELECT t.id FROM tokens t
      WHERE t.id IN (
        SELECT l.token_id FROM pools p, LATERAL (
          SELECT x.token_id FROM leases x WHERE x.pool_id = p.id AND x.user_id = p_user
        ) l
      )
      ORDER BY t.pool_id, t.position
      FOR UPDATE
  ) mine;
  clock := clock_timestamp();
  -- Only the tokens locked above, each read again under its lock.
  FOR tok IN
    SELECT t.* FROM tokens t
      WHERE t.id = ANY (locked) AND t.user_id = p_user
      ORDER BY t.pool_id, t.position
  LOOP
    RETURN NEXT end_lease(tok, clock, CASE WHEN tok.expires_at <= clock THEN 'expired' ELSE 'revoked' END);
    IF NOT tok.pool_id = ANY (woken) THEN
      woken := woken || tok.pool_id;
      PERFORM wake_waiters(tok.pool_id);
    END IF;
  END LOOP;
END;
$$;
