-- The release job's statement: ends every due lease of p_lease's pool (up to p_limit, see
-- end_due_leases), so that under a burst of expiries the first job ends them all and the jobs
-- queued behind find theirs ended; then answers for p_lease itself, waiting for its token if
-- someone else held it. Rows: kind 'ended' for each lease ended by the batch, then one row of
-- kind 'own' with end_lease_if_due's outcome for p_lease ('ended' if the batch ended it).
CREATE OR REPLACE FUNCTION expire_lease(p_lease uuid, p_limit integer)
RETURNS TABLE (
  kind         text,
  outcome      text,
  id           uuid,
  pool_id      integer,
  token_id     uuid,
  user_id      uuid,
  fence        bigint,
  started_at   timestamptz,
  expires_at   timestamptz,
  ended_at     timestamptz,
  end_reason   text,
  client_id    uuid,
  remaining_ms integer
)
LANGUAGE plpgsql
AS $$
DECLARE
  pool  integer;
  u     usages;
  mine  boolean := false;
BEGIN
  SELECT l.pool_id INTO pool FROM leases l WHERE l.id = p_lease;
  IF NOT FOUND THEN
    SELECT x.pool_id INTO pool FROM usages x WHERE x.id = p_lease;
  END IF;
  IF pool IS NOT NULL THEN
    FOR u IN SELECT * FROM end_due_leases(pool, p_limit) LOOP
      mine := mine OR u.id = p_lease;
      RETURN QUERY SELECT 'ended'::text, 'ended'::text, u.*, 0;
    END LOOP;
  END IF;
  IF mine THEN
    SELECT x.* INTO u FROM usages x WHERE x.id = p_lease;
    RETURN QUERY SELECT 'own'::text, 'ended'::text, u.*, 0;
  ELSE
    RETURN QUERY SELECT 'own'::text, d.* FROM end_lease_if_due(p_lease) d;
  END IF;
END;
$$;
