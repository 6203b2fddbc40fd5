-- A waiter counts while its deadline has not passed and its process keeps it alive (the
-- heartbeat, every second): a crashed process's waiters stop counting within 5 seconds.
CREATE OR REPLACE FUNCTION waiter_is_live(w waiters, at timestamptz) RETURNS boolean
LANGUAGE sql STABLE
AS $$ SELECT w.deadline > at AND w.heartbeat_at > at - interval '5 seconds' $$;
