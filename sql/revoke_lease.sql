-- Ends the lease p_lease now, whoever holds it: an admin's revoke. Like every change it locks the
-- lease's token first, then reads the clock once (docs/design.md). Outcomes:
--   revoked   ended now as revoked
--   expired   it had run out: ended now as expired (that is what happened to it)
--   ended     it had ended before (the usage says how); a retried revoke answers this
--   gone      no lease has this id
CREATE OR REPLACE FUNCTION revoke_lease(p_lease uuid)
RETURNS TABLE (
  outcome    text,
  id         uuid,
  pool_id    integer,
  token_id   uuid,
  user_id    uuid,
  fence      bigint,
  started_at timestamptz,
  expires_at timestamptz,
  ended_at   timestamptz,
  end_reason text,
  client_id  uuid
)
LANGUAGE plpgsql
AS $$
DECLARE
  tok   tokens;
  clock timestamptz;
  open  leases;
  u     usages;
  verb  text;
BEGIN
  -- Unlocked: which token to lock. A lease that is not open has ended, or never was.
  SELECT l.* INTO open FROM leases l WHERE l.id = p_lease;
  IF FOUND THEN
    SELECT t.* INTO tok FROM tokens t WHERE t.id = open.token_id FOR UPDATE;
    clock := clock_timestamp();
    IF tok.lease_id = p_lease THEN
      verb := CASE WHEN tok.expires_at <= clock THEN 'expired' ELSE 'revoked' END;
      u := end_lease(tok, clock, verb);
      PERFORM wake_waiters(tok.pool_id);
      RETURN QUERY SELECT verb, u.*;
      RETURN;
    END IF;
    -- Ended between the read and the lock: answered as ended below.
  END IF;

  SELECT x.* INTO u FROM usages x WHERE x.id = p_lease;
  IF NOT FOUND THEN
    RETURN QUERY SELECT 'gone'::text, (NULL::usages).*;
  ELSE
    RETURN QUERY SELECT 'ended'::text, u.*;
  END IF;
END;
$$;
