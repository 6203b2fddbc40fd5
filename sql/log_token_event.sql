-- Writes the event of a change to a token itself (token.retired), in the transaction of the
-- change, as log_event does for a lease: the transaction takes its xid before the event its id.
-- Never the token's value. Callers hold the token's lock.
CREATE OR REPLACE FUNCTION log_token_event(p_type text, p_at timestamptz, p_pool integer, p_token uuid) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
  PERFORM pg_current_xact_id();
  INSERT INTO events (type, at, pool_id, token_id) VALUES (p_type, p_at, p_pool, p_token);
END;
$$;
