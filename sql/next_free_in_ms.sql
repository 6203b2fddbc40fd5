-- How long a refused activation should wait before trying again: 0 when a token of the pool is
-- free (the waiters ahead are about to take it), else until the earliest lease runs out. Retired
-- tokens are never free again.
--
-- PL/pgSQL, not LANGUAGE sql: a SQL function whose body reads a table is not inlined, and is
-- parsed and planned again at every call (its plan lasts only as long as the calling
-- statement), which cost a refusal on a full pool of 100 about half of its PostgreSQL CPU.
-- PL/pgSQL keeps the plan for the session. SELECT INTO, like the SQL function, runs it without
-- parallel workers, however large the pool.
CREATE OR REPLACE FUNCTION next_free_in_ms(p_pool integer) RETURNS bigint
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
  wait_ms bigint;
BEGIN
  SELECT CASE
      WHEN bool_or(t.lease_id IS NULL) THEN 0
      ELSE greatest(0, coalesce(
        ceil(extract(epoch FROM min(t.expires_at) - clock_timestamp()) * 1000)::bigint, 0))
    END
    INTO wait_ms
    FROM tokens t WHERE t.pool_id = p_pool AND t.retired_at IS NULL;
  RETURN wait_ms;
END;
$$;
