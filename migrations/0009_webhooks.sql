-- Up Migration

-- Webhooks (docs/events.md, "Webhooks"): endpoints that receive the events of the types they
-- chose, each event as one delivery, attempted until a 2xx answer or the retry schedule runs out.
--
-- The secret is kept as given to the admin (whsec_...): it signs every attempt, so it cannot be
-- hashed. During a rotation the previous one signs too, until previous_secret_until.
CREATE TABLE webhooks (
  id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  url                    text NOT NULL,
  events                 text[] NOT NULL CHECK (cardinality(events) > 0),
  secret                 text NOT NULL,
  previous_secret        text,
  previous_secret_until  timestamptz,
  created_at             timestamptz NOT NULL DEFAULT clock_timestamp(),
  -- Set when the endpoint answered 410 Gone: nothing more is sent to it.
  disabled_at            timestamptz
);

-- One event for one webhook. state: pending until an attempt succeeds (succeeded) or the
-- schedule runs out or the endpoint is disabled (failed). next_attempt_at is when the next
-- attempt may start; an attempt in flight moves it past its own timeout, so that no other
-- worker starts the same delivery meanwhile. step is the position in WEBHOOK_RETRY_SCHEDULE_MS
-- (a replay starts it over).
CREATE TABLE webhook_deliveries (
  id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  webhook_id       uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
  event_id         bigint NOT NULL,
  state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'succeeded', 'failed')),
  step             integer NOT NULL DEFAULT 0,
  next_attempt_at  timestamptz,
  created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
  UNIQUE (webhook_id, event_id),
  CHECK ((state = 'pending') = (next_attempt_at IS NOT NULL))
);
-- The sweep's question: which pending deliveries are due.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
-- The delivery log, newest first, of one webhook.
CREATE INDEX webhook_deliveries_by_webhook ON webhook_deliveries (webhook_id, id DESC);

-- Every attempt of a delivery: when it started, the answer's status (null: none), how long it
-- took, and what went wrong.
CREATE TABLE webhook_attempts (
  id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  delivery_id  bigint NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
  started_at   timestamptz NOT NULL,
  status       integer,
  duration_ms  integer NOT NULL,
  error        text
);
CREATE INDEX webhook_attempts_by_delivery ON webhook_attempts (delivery_id, id);

-- How far the event log has been turned into deliveries: every event up to `after` has its
-- deliveries (docs/events.md). One row; the worker that moves it locks it.
CREATE TABLE webhook_fanout (
  one_row  boolean PRIMARY KEY DEFAULT true CHECK (one_row),
  after    bigint NOT NULL
);
-- Webhooks made from now on hear of events from now on.
INSERT INTO webhook_fanout (after) SELECT coalesce(max(id), 0) FROM events;
