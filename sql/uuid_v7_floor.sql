-- The lowest version 7 UUID for the time `at`: every usage that started before `at` has a
-- smaller id (ids are uuid_v7(started_at)), so `id < uuid_v7_floor(t)` reads the history up to
-- t by its primary key.
CREATE OR REPLACE FUNCTION uuid_v7_floor(at timestamptz) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
  SELECT encode(
    substring(int8send(floor(extract(epoch FROM at) * 1000)::bigint) FROM 3) || '\x00000000000000000000'::bytea,
    'hex')::uuid
$$;
