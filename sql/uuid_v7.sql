-- A version 7 UUID (RFC 9562) for the time `at`: usage ids grow with time, so the history's
-- primary key is appended to at its right edge instead of written all over.
CREATE OR REPLACE FUNCTION uuid_v7(at timestamptz) RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE
AS $$
  SELECT encode(
    set_bit(set_bit(
      overlay(uuid_send(gen_random_uuid())
              PLACING substring(int8send(floor(extract(epoch FROM at) * 1000)::bigint) FROM 3)
              FROM 1 FOR 6),
      52, 1), 53, 1),
    'hex')::uuid
$$;
