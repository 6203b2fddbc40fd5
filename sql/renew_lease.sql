-- Moves the expiry of the lease p_lease of p_user on token p_token to the lease time from now,
-- capped at the longest lease after its start (null: no cap); never moves it back. Both are the
-- token's pool's own where it has them, else the service's, p_ttl_ms and p_max_ms. Outcomes:
--   renewed      the usage as renewed, with remaining_ms until its new expiry, and the token's
--                sealed value, if it has one, for its holder
--   max_lease    at its cap already: unchanged
--   expired      it had run out: ended now as expired
--   ended        it had ended before (the usage says how)
--   not_holder   p_lease is not p_user's lease of p_token
--   forbidden    it is, but another API client made it: unchanged
--   no_token     p_token does not exist
-- p_client is the API client asking, which may renew only the leases it made; null for any other
-- caller (a user, whom p_user already stands for, or an admin).
-- It locks the token like every change, so a renewal and the end of the lease it renews are
-- ordered, and both decide by the same clock.
CREATE OR REPLACE FUNCTION renew_lease(
  p_token uuid, p_user uuid, p_lease uuid, p_ttl_ms integer, p_max_ms integer, p_client uuid DEFAULT NULL
)
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
  remaining_ms integer,
  value_sealed bytea
)
LANGUAGE plpgsql
AS $$
DECLARE
  tok     tokens;
  clock   timestamptz;
  u       usages;
  new_exp timestamptz;
  ttl_ms  integer;
  max_ms  integer;
BEGIN
  SELECT t.* INTO tok FROM tokens t WHERE t.id = p_token FOR UPDATE;
  IF NOT FOUND THEN
    RETURN QUERY SELECT 'no_token'::text, (NULL::usages).*, NULL::integer, NULL::bytea;
    RETURN;
  END IF;
  clock := clock_timestamp();
  SELECT coalesce(p.lease_ttl_ms, p_ttl_ms), coalesce(p.max_lease_ms, p_max_ms)
    INTO ttl_ms, max_ms
    FROM pools p WHERE p.id = tok.pool_id;

  IF tok.lease_id = p_lease AND tok.user_id = p_user THEN
    SELECT (as_usage(l)).* INTO u FROM leases l WHERE l.id = p_lease;
    IF p_client IS NOT NULL AND u.client_id IS DISTINCT FROM p_client THEN
      RETURN QUERY SELECT 'forbidden'::text, (NULL::usages).*, NULL::integer, NULL::bytea;
      RETURN;
    END IF;
    IF tok.expires_at <= clock THEN
      u := end_lease(tok, clock, 'expired');
      PERFORM wake_waiters(tok.pool_id);
      RETURN QUERY SELECT 'expired'::text, u.*, 0, NULL::bytea;
      RETURN;
    END IF;
    IF max_ms IS NOT NULL AND tok.expires_at >= tok.started_at + max_ms * interval '1 millisecond' THEN
      RETURN QUERY SELECT 'max_lease'::text, u.*,
        ceil(extract(epoch FROM tok.expires_at - clock) * 1000)::integer, NULL::bytea;
      RETURN;
    END IF;
    new_exp := clock + ttl_ms * interval '1 millisecond';
    IF max_ms IS NOT NULL THEN
      new_exp := least(new_exp, tok.started_at + max_ms * interval '1 millisecond');
    END IF;
    new_exp := greatest(new_exp, tok.expires_at);
    UPDATE tokens t SET expires_at = new_exp WHERE t.id = tok.id;
    UPDATE leases l SET expires_at = new_exp WHERE l.id = p_lease RETURNING (as_usage(l)).* INTO u;
    PERFORM log_event('lease.renewed', clock, u);
    RETURN QUERY SELECT 'renewed'::text, u.*, ceil(extract(epoch FROM new_exp - clock) * 1000)::integer,
      tok.value_sealed;
    RETURN;
  END IF;

  SELECT x.* INTO u FROM usages x WHERE x.id = p_lease AND x.token_id = p_token AND x.user_id = p_user;
  IF NOT FOUND THEN
    RETURN QUERY SELECT 'not_holder'::text, (NULL::usages).*, NULL::integer, NULL::bytea;
  ELSIF p_client IS NOT NULL AND u.client_id IS DISTINCT FROM p_client THEN
    RETURN QUERY SELECT 'forbidden'::text, (NULL::usages).*, NULL::integer, NULL::bytea;
  ELSE
    RETURN QUERY SELECT 'ended'::text, u.*, NULL::integer, NULL::bytea;
  END IF;
END;
$$;
