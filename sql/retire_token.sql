-- Takes the token p_token out of use: it is never leased again. A free one is retired at once; a
-- held one when its lease ends, or now, with p_now (its lease ends as retired). A lease that had
-- run out ends as expired. Again, it answers the same without changing anything. Outcomes:
--   retired    out of use; the usage this call ended, if any
--   retiring   held: out of use once its open lease ends; that lease, open
--   no_token   p_token does not exist
CREATE OR REPLACE FUNCTION retire_token(p_token uuid, p_now boolean)
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
  u     usages;
BEGIN
  SELECT t.* INTO tok FROM tokens t WHERE t.id = p_token FOR UPDATE;
  IF NOT FOUND THEN
    RETURN QUERY SELECT 'no_token'::text, (NULL::usages).*;
    RETURN;
  END IF;
  clock := clock_timestamp();
  IF tok.retired_at IS NULL THEN
    UPDATE tokens t SET retired_at = clock WHERE t.id = tok.id;
    PERFORM log_token_event('token.retired', clock, tok.pool_id, tok.id);
  END IF;

  IF tok.lease_id IS NULL THEN
    RETURN QUERY SELECT 'retired'::text, (NULL::usages).*;
  ELSIF tok.expires_at <= clock OR p_now THEN
    u := end_lease(tok, clock, CASE WHEN tok.expires_at <= clock THEN 'expired' ELSE 'retired' END);
    RETURN QUERY SELECT 'retired'::text, u.*;
  ELSE
    SELECT (as_usage(l)).* INTO u FROM leases l WHERE l.id = tok.lease_id;
    RETURN QUERY SELECT 'retiring'::text, u.*;
  END IF;
END;
$$;
