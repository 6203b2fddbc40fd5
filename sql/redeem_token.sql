-- The holder uses the token with the value whose SHA-256 is p_digest up: its lease ends as
-- redeemed and the token is retired, under the token's lock, so of many redeems at once one
-- succeeds and the others find it redeemed. Outcomes:
--   redeemed          ended now: the usage
--   already_redeemed  p_user held it, and it has been redeemed (by this call's first attempt,
--                     say): the redeemed usage
--   expired           p_user's lease had run out: ended now as expired
--   ended             p_user's latest lease of it ended otherwise (the usage says how)
--   not_holder        p_user holds no lease of it and never has
--   forbidden         p_user holds it, but another API client made the lease: unchanged
--   no_token          no token has this value
-- p_client is the API client asking, which may redeem only the leases it made; null for any
-- other caller.
CREATE OR REPLACE FUNCTION redeem_token(p_digest bytea, p_user uuid, p_client uuid DEFAULT NULL)
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
  tok      tokens;
  clock    timestamptz;
  u        usages;
  redeemed usages;
BEGIN
  SELECT t.* INTO tok FROM tokens t WHERE t.value_digest = p_digest FOR UPDATE;
  IF NOT FOUND THEN
    RETURN QUERY SELECT 'no_token'::text, (NULL::usages).*;
    RETURN;
  END IF;
  clock := clock_timestamp();

  IF tok.lease_id IS NOT NULL AND tok.user_id = p_user THEN
    IF p_client IS NOT NULL AND (SELECT l.client_id FROM leases l WHERE l.id = tok.lease_id) IS DISTINCT FROM p_client THEN
      RETURN QUERY SELECT 'forbidden'::text, (NULL::usages).*;
      RETURN;
    END IF;
    IF tok.expires_at <= clock THEN
      u := end_lease(tok, clock, 'expired');
      IF tok.retired_at IS NULL THEN
        PERFORM wake_waiters(tok.pool_id);
      END IF;
      RETURN QUERY SELECT 'expired'::text, u.*;
      RETURN;
    END IF;
    u := end_lease(tok, clock, 'redeemed');
    UPDATE tokens t SET retired_at = coalesce(t.retired_at, clock) WHERE t.id = tok.id;
    IF tok.retired_at IS NULL THEN
      PERFORM log_token_event('token.retired', clock, tok.pool_id, tok.id);
    END IF;
    RETURN QUERY SELECT 'redeemed'::text, u.*;
    RETURN;
  END IF;

  -- Not the caller's now: redeemed before, or ended, or never theirs.
  SELECT x.* INTO u FROM usages x
    WHERE x.token_id = tok.id AND x.user_id = p_user
    ORDER BY x.fence DESC LIMIT 1;
  IF NOT FOUND THEN
    RETURN QUERY SELECT 'not_holder'::text, (NULL::usages).*;
    RETURN;
  END IF;
  IF p_client IS NOT NULL AND u.client_id IS DISTINCT FROM p_client THEN
    RETURN QUERY SELECT 'forbidden'::text, (NULL::usages).*;
    RETURN;
  END IF;
  SELECT x.* INTO redeemed FROM usages x WHERE x.token_id = tok.id AND x.end_reason = 'redeemed';
  IF FOUND THEN
    RETURN QUERY SELECT 'already_redeemed'::text, redeemed.*;
  ELSE
    RETURN QUERY SELECT 'ended'::text, u.*;
  END IF;
END;
$$;
