-- Up Migration

-- Named pools with settings of their own. A setting left null follows the service's
-- (LEASE_TTL_MS, MAX_LEASE_MS, POOL_FULL_POLICY, MAX_WAITERS); the lease statements read the
-- pool's row, so a change applies to the next lease in every process. `size` is how many tokens
-- the pool is kept at: it only grows, and tokens are never deleted.
ALTER TABLE pools
  ADD COLUMN size          bigint NOT NULL DEFAULT 0 CHECK (size BETWEEN 0 AND 10000000),
  ADD COLUMN lease_ttl_ms  integer CHECK (lease_ttl_ms >= 100),
  ADD COLUMN max_lease_ms  integer CHECK (max_lease_ms >= 100),
  ADD COLUMN full_policy   text CHECK (full_policy IN ('reject', 'evict_oldest')),
  ADD COLUMN max_waiters   integer CHECK (max_waiters BETWEEN 0 AND 100000),
  ADD CONSTRAINT pools_name_format CHECK (name ~ '^[a-z0-9-]{1,63}$'),
  ADD CONSTRAINT pools_max_lease_after_ttl CHECK (max_lease_ms >= lease_ttl_ms);

UPDATE pools p SET size = (SELECT count(*) FROM tokens t WHERE t.pool_id = p.id);
