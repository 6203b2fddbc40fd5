-- Ends the lease p_lease of p_user on token p_token, and no other. Outcomes:
--   released     ended now
--   released_before  ended by an earlier call (a retry answers the same ended usage)
--   expired      it had run out: ended now as expired
--   ended        it had ended otherwise before (the usage says how)
--   not_holder   p_lease is not p_user's lease of p_token
--   forbidden    it is, but another API client made it: unchanged
--   no_token     p_token does not exist
-- p_client is the API client asking, which may end only the leases it made; null for any other
-- caller (a user, whom p_user already stands for, or an admin).
CREATE OR REPLACE FUNCTION release_lease(p_token uuid, p_user uuid, p_lease uuid, p_client uuid DEFAULT NULL)
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
  verb  text;
BEGIN
  SELECT t.* INTO tok FROM tokens t WHERE t.id = p_token FOR UPDATE;
  IF NOT FOUND THEN
    RETURN QUERY SELECT 'no_token'::text, (NULL::usages).*;
    RETURN;
  END IF;
  clock := clock_timestamp();

  IF tok.lease_id = p_lease AND tok.user_id = p_user THEN
    IF p_client IS NOT NULL AND (SELECT l.client_id FROM leases l WHERE l.id = p_lease) IS DISTINCT FROM p_client THEN
      RETURN QUERY SELECT 'forbidden'::text, (NULL::usages).*;
      RETURN;
    END IF;
    verb := CASE WHEN tok.expires_at <= clock THEN 'expired' ELSE 'released' END;
    u := end_lease(tok, clock, verb);
    PERFORM wake_waiters(tok.pool_id);
    RETURN QUERY SELECT verb, u.*;
    RETURN;
  END IF;

  -- Not open on this token: ended before, or never the caller's.
  SELECT x.* INTO u FROM usages x WHERE x.id = p_lease AND x.token_id = p_token AND x.user_id = p_user;
  IF NOT FOUND THEN
    RETURN QUERY SELECT 'not_holder'::text, (NULL::usages).*;
  ELSIF p_client IS NOT NULL AND u.client_id IS DISTINCT FROM p_client THEN
    RETURN QUERY SELECT 'forbidden'::text, (NULL::usages).*;
  ELSIF u.end_reason = 'released' THEN
    RETURN QUERY SELECT 'released_before'::text, u.*;
  ELSE
    RETURN QUERY SELECT 'ended'::text, u.*;
  END IF;
END;
$$;
