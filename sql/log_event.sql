-- Writes the event of a change to a lease, in the transaction of the change (an outbox): the
-- lease as the change left it (`u`, a usage or an open lease through as_usage) and the change's
-- clock. Callers hold the token's lock.
--
-- The transaction takes its id (xid) before the event takes its number, so a reader that sees a
-- higher number committed finds this transaction among those running with an xid, and waits for
-- it to finish before it reads past this number (docs/events.md, "Order").
CREATE OR REPLACE FUNCTION log_event(p_type text, p_at timestamptz, u usages) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
  PERFORM pg_current_xact_id();
  INSERT INTO events (type, at, pool_id, token_id, lease_id, user_id, client_id, fence, started_at, expires_at, ended_at)
    VALUES (p_type, p_at, u.pool_id, u.token_id, u.id, u.user_id, u.client_id, u.fence, u.started_at, u.expires_at, u.ended_at);
END;
$$;
