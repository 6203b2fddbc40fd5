-- Ends the lease p_lease if its time is up, by the clock read once its token is locked.
-- Outcomes: ended (the usage as ended), not_due (open, remaining_ms to go: it was renewed),
-- gone (ended before, or no such lease; the usage as it is, if any).
CREATE OR REPLACE FUNCTION end_lease_if_due(p_lease uuid)
RETURNS TABLE (
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
  tok   tokens;
  clock timestamptz;
  open  leases;
  u     usages;
BEGIN
  -- Unlocked: which token to lock; a lease that is not open has ended, or never was.
  SELECT l.* INTO open FROM leases l WHERE l.id = p_lease;
  IF NOT FOUND THEN
    SELECT x.* INTO u FROM usages x WHERE x.id = p_lease;
    RETURN QUERY SELECT 'gone'::text, u.*, NULL::integer;
    RETURN;
  END IF;

  SELECT t.* INTO tok FROM tokens t WHERE t.id = open.token_id FOR UPDATE;
  clock := clock_timestamp();
  IF tok.lease_id IS DISTINCT FROM p_lease THEN
    SELECT x.* INTO u FROM usages x WHERE x.id = p_lease;
    RETURN QUERY SELECT 'gone'::text, u.*, NULL::integer;
  ELSIF tok.expires_at > clock THEN
    SELECT (as_usage(l)).* INTO u FROM leases l WHERE l.id = p_lease;
    RETURN QUERY SELECT 'not_due'::text, u.*,
      ceil(extract(epoch FROM tok.expires_at - clock) * 1000)::integer;
  ELSE
    u := end_lease(tok, clock, 'expired');
    PERFORM wake_waiters(tok.pool_id);
    RETURN QUERY SELECT 'ended'::text, u.*, 0;
  END IF;
END;
$$;
