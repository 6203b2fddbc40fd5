-- Up Migration

-- A waiter joining the queue as a token was freed was not woken: it was served a second late, at
-- its periodic re-check, while every plain activation on any process was refused for its sake.
--
-- The wake-up trigger on tokens (migrations/0002) notifies only while somebody waits, and looks
-- for waiters before the freeing statement commits. A waiter whose place committed after that
-- look, but before the release did, was not seen; and its first attempt, made at once, did not
-- see the token free either (the release had not committed).
--
-- add_waiter() orders the two: it adds the place under a SHARE ROW EXCLUSIVE lock on tokens,
-- which waits for every transaction that has changed tokens and not ended yet, and makes any that
-- starts to wait until the place is committed. So either a release commits first, and the
-- waiter's first attempt finds its token free, or the place commits first, and the release's
-- trigger sees it and notifies. The lease hot path pays nothing: only a waiter joining takes the
-- lock (and holds up changes to tokens for that one statement), and the trigger is unchanged.

CREATE FUNCTION add_waiter(p_user_id uuid, p_timeout_ms integer) RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
  added bigint;
BEGIN
  LOCK TABLE tokens IN SHARE ROW EXCLUSIVE MODE;
  INSERT INTO waiters (user_id, deadline)
    VALUES (p_user_id, clock_timestamp() + p_timeout_ms * interval '1 millisecond')
    RETURNING id INTO added;
  RETURN added;
END;
$$;

-- Down Migration

DROP FUNCTION add_waiter(uuid, integer);
