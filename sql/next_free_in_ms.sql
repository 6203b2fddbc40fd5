-- How long a refused activation should wait before trying again: 0 when a token of the pool is
-- free (the waiters ahead are about to take it), else until the earliest lease runs out. Retired
-- tokens are never free again.
CREATE OR REPLACE FUNCTION next_free_in_ms(p_pool integer) RETURNS bigint
LANGUAGE sql VOLATILE
AS $$
  SELECT CASE
    WHEN bool_or(t.lease_id IS NULL) THEN 0
    ELSE greatest(0, coalesce(
      ceil(extract(epoch FROM min(t.expires_at) - clock_timestamp()) * 1000)::bigint, 0))
  END
  FROM tokens t WHERE t.pool_id = p_pool AND t.retired_at IS NULL
$$;
