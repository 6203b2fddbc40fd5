-- An open lease in the shape of a usage row (ended_at and end_reason null), so that every
-- statement answers with one row type whether the lease it names is open or ended.
CREATE OR REPLACE FUNCTION as_usage(l leases) RETURNS usages
LANGUAGE sql IMMUTABLE
AS $$
  SELECT ROW(l.id, l.pool_id, l.token_id, l.user_id, l.fence, l.started_at, l.expires_at,
             NULL::timestamptz, NULL::text, l.client_id)::usages
$$;
