// The statements on webhooks, their deliveries and attempts (docs/events.md, "Webhooks";
// src/domain/webhooks.ts). Deliveries move only through conditional updates: a claim takes a
// pending, due delivery and moves next_attempt_at past the attempt's timeout, so two workers
// (or a job run twice) never send the same attempt at once.

import type { Pool, Queryable } from './pool.js';
import { query } from './pool.js';
import { withTransaction } from './tx.js';

export interface WebhookRow {
  id: string;
  url: string;
  events: string[];
  created_at: Date;
  disabled_at: Date | null;
}

const COLUMNS = 'id, url, events, created_at, disabled_at';

export async function insertWebhook(
  db: Queryable,
  args: { url: string; events: readonly string[]; secret: string },
): Promise<WebhookRow> {
  const rows = await query<WebhookRow>(
    db,
    'insert-webhook',
    `INSERT INTO webhooks (url, events, secret) VALUES ($1, $2, $3) RETURNING ${COLUMNS}`,
    [args.url, args.events, args.secret],
  );
  const [row] = rows;
  if (row === undefined) throw new Error('INSERT ... RETURNING answered no row');
  return row;
}

/** Every webhook, oldest first. */
export async function listWebhooks(db: Queryable): Promise<WebhookRow[]> {
  return query<WebhookRow>(db, 'list-webhooks', `SELECT ${COLUMNS} FROM webhooks ORDER BY created_at, id`);
}

export async function findWebhook(db: Queryable, id: string): Promise<WebhookRow | null> {
  const rows = await query<WebhookRow>(db, 'find-webhook', `SELECT ${COLUMNS} FROM webhooks WHERE id = $1`, [id]);
  return rows[0] ?? null;
}

/** Deletes a webhook with its deliveries and their attempts; null when there is none. */
export async function deleteWebhook(db: Queryable, id: string): Promise<WebhookRow | null> {
  const rows = await query<WebhookRow>(db, 'delete-webhook', `DELETE FROM webhooks WHERE id = $1 RETURNING ${COLUMNS}`, [id]);
  return rows[0] ?? null;
}

/**
 * A new secret; the one it replaces keeps signing for `graceMs` (a rotation during a grace
 * period drops the oldest). Null when there is no such webhook.
 */
export async function rotateWebhookSecret(
  db: Queryable,
  args: { id: string; secret: string; graceMs: number },
): Promise<WebhookRow | null> {
  const rows = await query<WebhookRow>(
    db,
    'rotate-webhook-secret',
    `UPDATE webhooks
     SET previous_secret = secret, secret = $2,
         previous_secret_until = clock_timestamp() + $3 * interval '1 millisecond'
     WHERE id = $1 RETURNING ${COLUMNS}`,
    [args.id, args.secret, args.graceMs],
  );
  return rows[0] ?? null;
}

export interface NewDeliveryRow {
  id: string;
  delay_ms: number;
}

/**
 * Turns the events after the fan-out cursor, up to `upTo` (a horizon: every id up to it is
 * final), into deliveries for the webhooks that chose their types, and moves the cursor to
 * `upTo`, in one transaction that holds the cursor's row: two workers never make the same
 * deliveries, and a worker that dies before the commit leaves the events to the next one.
 * Answers the deliveries made, with the delay until each is due. `firstDelayMs` is the first
 * entry of the retry schedule.
 */
export async function fanOutEvents(
  pool: Pool,
  args: { upTo: number; firstDelayMs: number },
): Promise<NewDeliveryRow[]> {
  return withTransaction(pool, async (tx) => {
    const cursor = await query<{ after: string }>(tx, 'lock-webhook-fanout', 'SELECT after FROM webhook_fanout FOR UPDATE');
    const after = Number(cursor[0]?.after ?? 0);
    if (after >= args.upTo) return [];
    const made = await query<NewDeliveryRow>(
      tx,
      'fan-out-events',
      `INSERT INTO webhook_deliveries (webhook_id, event_id, next_attempt_at)
       SELECT w.id, e.id, clock_timestamp() + $3 * interval '1 millisecond'
       FROM events e JOIN webhooks w ON e.type = ANY (w.events) AND e.at >= w.created_at AND w.disabled_at IS NULL
       WHERE e.id > $1 AND e.id <= $2
       ORDER BY e.id
       ON CONFLICT (webhook_id, event_id) DO NOTHING
       RETURNING id, $3::int AS delay_ms`,
      [after, args.upTo, args.firstDelayMs],
    );
    await query(tx, 'move-webhook-fanout', 'UPDATE webhook_fanout SET after = $1', [args.upTo]);
    return made;
  });
}

/** How far the event log has been turned into deliveries. */
export async function fanOutCursor(db: Queryable): Promise<number> {
  const rows = await query<{ after: string }>(db, 'webhook-fanout-cursor', 'SELECT after FROM webhook_fanout');
  return Number(rows[0]?.after ?? 0);
}

/** Pending deliveries due within `withinMs`, soonest first, at most `limit`: the sweep gives each its job back. */
export async function dueDeliveries(db: Queryable, args: { withinMs: number; limit: number }): Promise<NewDeliveryRow[]> {
  return query<NewDeliveryRow>(
    db,
    'due-webhook-deliveries',
    `SELECT id, greatest(0, ceil(extract(epoch FROM next_attempt_at - clock_timestamp()) * 1000))::int AS delay_ms
     FROM webhook_deliveries
     WHERE state = 'pending' AND next_attempt_at <= clock_timestamp() + $1 * interval '1 millisecond'
     ORDER BY next_attempt_at
     LIMIT $2`,
    [args.withinMs, args.limit],
  );
}

/** What an attempt needs: the delivery, its webhook's URL and secrets, and the event. */
export interface ClaimedDeliveryRow {
  id: string;
  step: number;
  url: string;
  secrets: string[];
  disabled: boolean;
  event_id: string;
  type: string | null;
  at: Date | null;
  pool: string | null;
  token_id: string | null;
  lease_id: string | null;
  user_id: string | null;
  fence: string | null;
  started_at: Date | null;
  expires_at: Date | null;
  ended_at: Date | null;
}

/**
 * Claims the next attempt of a delivery if it is pending and due: next_attempt_at moves
 * `holdMs` on (past the attempt's timeout), so no one else starts it meanwhile; a worker that
 * dies mid-attempt leaves it to be attempted again then. Null when it is not pending and due.
 * The secrets are the current one, then the previous one while it still signs.
 */
export async function claimDelivery(db: Queryable, args: { id: string; holdMs: number }): Promise<ClaimedDeliveryRow | null> {
  const rows = await query<ClaimedDeliveryRow>(
    db,
    'claim-webhook-delivery',
    `WITH claimed AS (
       UPDATE webhook_deliveries d SET next_attempt_at = clock_timestamp() + $2 * interval '1 millisecond'
       WHERE d.id = $1 AND d.state = 'pending' AND d.next_attempt_at <= clock_timestamp()
       RETURNING d.id, d.step, d.webhook_id, d.event_id
     )
     SELECT c.id, c.step, w.url, w.disabled_at IS NOT NULL AS disabled, c.event_id,
            CASE WHEN w.previous_secret_until > clock_timestamp() THEN ARRAY[w.secret, w.previous_secret]
                 ELSE ARRAY[w.secret] END AS secrets,
            e.type, e.at, p.name AS pool, e.token_id, e.lease_id, e.user_id, e.fence, e.started_at, e.expires_at, e.ended_at
     FROM claimed c
     JOIN webhooks w ON w.id = c.webhook_id
     LEFT JOIN events e ON e.id = c.event_id
     LEFT JOIN pools p ON p.id = e.pool_id`,
    [args.id, args.holdMs],
  );
  return rows[0] ?? null;
}

/** A delivery's state and how long until it is due (null when not pending); null when there is none. */
export async function deliveryState(db: Queryable, id: string): Promise<{ state: string; delay_ms: number | null } | null> {
  const rows = await query<{ state: string; delay_ms: number | null }>(
    db,
    'webhook-delivery-state',
    `SELECT state, greatest(0, ceil(extract(epoch FROM next_attempt_at - clock_timestamp()) * 1000))::int AS delay_ms
     FROM webhook_deliveries WHERE id = $1`,
    [id],
  );
  return rows[0] ?? null;
}

/**
 * Writes an attempt down and moves its delivery on, in one statement: succeeded, failed, or
 * pending again after `retryInMs` (null: no retry, failed). `disable` disables the webhook
 * (410 Gone). Answers the delivery's new state and the delay until its next attempt.
 */
export async function recordAttempt(
  db: Queryable,
  args: {
    id: string;
    startedAt: Date;
    status: number | null;
    durationMs: number;
    error: string | null;
    succeeded: boolean;
    retryInMs: number | null;
    disable: boolean;
  },
): Promise<{ state: string; delay_ms: number | null }> {
  const rows = await query<{ state: string; delay_ms: number | null }>(
    db,
    'record-webhook-attempt',
    `WITH attempt AS (
       INSERT INTO webhook_attempts (delivery_id, started_at, status, duration_ms, error)
       VALUES ($1, $2, $3, $4, $5)
     ), moved AS (
       UPDATE webhook_deliveries d
       SET state = CASE WHEN $6 THEN 'succeeded' WHEN $7::int IS NULL THEN 'failed' ELSE 'pending' END,
           step = d.step + 1,
           next_attempt_at = CASE WHEN NOT $6 AND $7::int IS NOT NULL
                                  THEN clock_timestamp() + $7::int * interval '1 millisecond' END
       WHERE d.id = $1 AND d.state = 'pending'
       RETURNING d.state, d.webhook_id, $7::int AS delay_ms
     ), disabled AS (
       UPDATE webhooks w SET disabled_at = coalesce(w.disabled_at, clock_timestamp())
       FROM moved WHERE $8 AND w.id = moved.webhook_id
     )
     SELECT state, CASE WHEN state = 'pending' THEN delay_ms END AS delay_ms FROM moved`,
    [args.id, args.startedAt, args.status, args.durationMs, args.error, args.succeeded, args.retryInMs, args.disable],
  );
  return rows[0] ?? { state: 'gone', delay_ms: null };
}

/** Fails a pending delivery without an attempt (its webhook is disabled, its event gone). */
export async function abandonDelivery(db: Queryable, id: string): Promise<void> {
  await query(
    db,
    'abandon-webhook-delivery',
    `UPDATE webhook_deliveries SET state = 'failed', next_attempt_at = NULL WHERE id = $1 AND state = 'pending'`,
    [id],
  );
}

export interface DeliveryRow {
  id: string;
  event_id: string;
  type: string | null;
  state: string;
  next_attempt_at: Date | null;
  created_at: Date;
  attempts: Array<{ started_at: string; status: number | null; duration_ms: number; error: string | null }>;
}

const DELIVERY_COLUMNS = `d.id, d.event_id, e.type, d.state, d.next_attempt_at, d.created_at,
  coalesce((SELECT json_agg(json_build_object('started_at', a.started_at, 'status', a.status,
                                             'duration_ms', a.duration_ms, 'error', a.error) ORDER BY a.id)
            FROM webhook_attempts a WHERE a.delivery_id = d.id), '[]') AS attempts`;

/** A webhook's deliveries, newest first, before the delivery `before` (null: from the newest), with every attempt. */
export async function listDeliveries(
  db: Queryable,
  args: { webhookId: string; before: number | null; limit: number },
): Promise<DeliveryRow[]> {
  return query<DeliveryRow>(
    db,
    'list-webhook-deliveries',
    `SELECT ${DELIVERY_COLUMNS}
     FROM webhook_deliveries d LEFT JOIN events e ON e.id = d.event_id
     WHERE d.webhook_id = $1 AND ($2::bigint IS NULL OR d.id < $2::bigint)
     ORDER BY d.id DESC
     LIMIT $3`,
    [args.webhookId, args.before, args.limit],
  );
}

/**
 * Makes a delivery due now, at the start of the schedule, whatever its state (a replay); its
 * attempts stay in the log. Null when the webhook has no such delivery.
 */
export async function replayDelivery(db: Queryable, args: { webhookId: string; id: string }): Promise<DeliveryRow | null> {
  const rows = await query<DeliveryRow>(
    db,
    'replay-webhook-delivery',
    `WITH replayed AS (
       UPDATE webhook_deliveries SET state = 'pending', step = 0, next_attempt_at = clock_timestamp()
       WHERE id = $2 AND webhook_id = $1
       RETURNING *
     )
     SELECT ${DELIVERY_COLUMNS} FROM replayed d LEFT JOIN events e ON e.id = d.event_id`,
    [args.webhookId, args.id],
  );
  return rows[0] ?? null;
}

/** Removes up to `limit` deliveries (with their attempts) made more than `days` days ago. */
export async function deleteOldDeliveries(db: Queryable, args: { days: number; limit: number }): Promise<number> {
  const rows = await query<{ n: number }>(
    db,
    'delete-old-webhook-deliveries',
    `WITH old AS (
       SELECT id FROM webhook_deliveries WHERE created_at < now() - $1::float8 * interval '1 day' ORDER BY id LIMIT $2
     ), gone AS (
       DELETE FROM webhook_deliveries d USING old WHERE d.id = old.id RETURNING 1
     )
     SELECT count(*)::int AS n FROM gone`,
    [args.days, args.limit],
  );
  return rows[0]?.n ?? 0;
}

/**
 * Whether a webhook secret is sealed under another key than `keyId` (null: TOKEN_VALUE_KEY not
 * set): such a secret could not sign its deliveries. See storedSecret (src/domain/webhooks.ts).
 */
export async function webhookSecretSealedElsewhere(db: Queryable, keyId: Buffer | null): Promise<boolean> {
  const rows = await query(
    db,
    'webhook-secret-sealed-elsewhere',
    `SELECT 1 FROM webhooks w, unnest(ARRAY[w.secret, w.previous_secret]) AS s(stored)
     WHERE s.stored LIKE 'sealed:%'
       AND ($1::bytea IS NULL OR substring(decode(substr(s.stored, 8), 'base64') FROM 2 FOR 4) <> $1::bytea)
     LIMIT 1`,
    [keyId],
  );
  return rows.length > 0;
}
