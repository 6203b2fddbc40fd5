// Webhooks (docs/events.md, "Webhooks"): endpoints that receive the events of the types they chose,
// signed as the Standard Webhooks specification describes. Each event becomes one delivery per
// webhook (the fan-out, from the event log up to its horizon); each delivery is attempted until a
// 2xx answer, after the delays of WEBHOOK_RETRY_SCHEDULE_MS. The rows are the truth: the
// delivery jobs in Redis only say when to look (src/jobs/deliveries.ts).

import type { Pool } from '../db/pool.js';
import * as sql from '../db/webhooks.js';
import { AppError, ERRORS, NotFoundError, ValidationError } from '../errors.js';
import { EVENT_TYPES, type EventType } from './events.js';
import { CLEAR_VALUES, type ValueSealer } from './values.js';
import { refusedUrl } from './webhookAddresses.js';
import { ATTEMPT_TIMEOUT_MS, type WebhookPoster } from './webhookPost.js';
import { newWebhookSecret, signatureHeader } from './webhookSignature.js';

export interface Webhook {
  readonly id: string;
  readonly url: string;
  readonly events: readonly EventType[];
  readonly createdAt: Date;
  /** When the endpoint answered 410 Gone; nothing is sent to it since. */
  readonly disabledAt: Date | null;
}

export interface DeliveryAttempt {
  readonly startedAt: Date;
  readonly status: number | null;
  readonly durationMs: number;
  readonly error: string | null;
}

export interface Delivery {
  readonly id: number;
  readonly eventId: number;
  /** The event's type; null once retention removed the event. */
  readonly type: string | null;
  readonly state: 'pending' | 'succeeded' | 'failed';
  readonly nextAttemptAt: Date | null;
  readonly createdAt: Date;
  readonly attempts: readonly DeliveryAttempt[];
}

/** A delivery to attempt `delayMs` from now (a job is added for it). */
export interface DueDelivery {
  readonly id: number;
  readonly delayMs: number;
}

/** What an attempt left: done (succeeded, failed for good, or nothing to do), or due again later. */
export type AttemptOutcome =
  | { readonly outcome: 'succeeded' | 'failed' | 'skipped' }
  | { readonly outcome: 'retry' | 'not_due'; readonly delayMs: number };

/** Longer than an attempt can take: while an attempt runs, no one else starts its delivery. */
const CLAIM_HOLD_MS = ATTEMPT_TIMEOUT_MS + 20_000;
/** The longest Retry-After honoured: a day. */
const MAX_RETRY_AFTER_MS = 86_400_000;

function toWebhook(row: sql.WebhookRow): Webhook {
  return {
    id: row.id,
    url: row.url,
    events: row.events.filter((t): t is EventType => (EVENT_TYPES as readonly string[]).includes(t)),
    createdAt: row.created_at,
    disabledAt: row.disabled_at,
  };
}

function toDelivery(row: sql.DeliveryRow): Delivery {
  return {
    id: Number(row.id),
    eventId: Number(row.event_id),
    type: row.type,
    state: row.state as Delivery['state'],
    nextAttemptAt: row.next_attempt_at,
    createdAt: row.created_at,
    attempts: row.attempts.map((a) => ({
      startedAt: new Date(a.started_at),
      status: a.status,
      durationMs: a.duration_ms,
      error: a.error,
    })),
  };
}

const iso = (date: Date | null) => (date === null ? null : date.toISOString());

/** The JSON body of an attempt: the event as GET /api/events gives it, without its id. */
export function deliveryBody(row: sql.ClaimedDeliveryRow): string | null {
  if (row.type === null || row.at === null) return null;
  return JSON.stringify({
    type: row.type,
    timestamp: row.at.toISOString(),
    data: {
      pool: row.pool,
      token_id: row.token_id,
      lease_id: row.lease_id,
      user_id: row.user_id,
      fence: row.fence === null ? null : Number(row.fence),
      started_at: iso(row.started_at),
      expires_at: iso(row.expires_at),
      ended_at: iso(row.ended_at),
    },
  });
}

/**
 * How a secret is stored. It signs every attempt, so it cannot be hashed; with TOKEN_VALUE_KEY
 * set it is sealed as token values are (src/domain/values.ts) and stored as `sealed:` and the
 * sealed bytes in base64, so that a dump of the database alone does not reveal it. Without the
 * key, and for secrets stored before it was set, it is the secret itself (`whsec_...`).
 */
const SEALED = 'sealed:';

export function storedSecret(sealer: ValueSealer, secret: string): string {
  return sealer.keyId === null ? secret : SEALED + sealer.seal(secret).toString('base64');
}

export function openedSecret(sealer: ValueSealer, stored: string): string {
  return stored.startsWith(SEALED) ? sealer.open(Buffer.from(stored.slice(SEALED.length), 'base64')) : stored;
}

/** The webhook-id of a delivery: the same on every attempt, replays included. */
export const messageId = (deliveryId: string | number) => `msg_${deliveryId}`;

export function createWebhooks(deps: {
  pool: Pool;
  /** WEBHOOK_RETRY_SCHEDULE_MS: the delay before the first attempt, then before each retry. */
  retryScheduleMs: readonly number[];
  rotationGraceMs: number;
  allowPrivate: boolean;
  /** Seals the secrets with TOKEN_VALUE_KEY; absent: stored in clear. */
  sealer?: ValueSealer;
}) {
  const { pool, retryScheduleMs } = deps;
  const sealer = deps.sealer ?? CLEAR_VALUES;

  async function existing(id: string): Promise<sql.WebhookRow> {
    const row = await sql.findWebhook(pool, id);
    if (row === null) throw new NotFoundError({ webhook_id: id });
    return row;
  }

  return {
    /** Makes a webhook; its secret is in this answer (and a rotation's) only. */
    async create(args: { url: string; events: readonly EventType[] }): Promise<{ webhook: Webhook; secret: string }> {
      const refused = await refusedUrl(new URL(args.url), deps.allowPrivate);
      if (refused !== null) throw new ValidationError([{ field: 'url', message: refused }]);
      const secret = newWebhookSecret();
      const row = await sql.insertWebhook(pool, { url: args.url, events: [...new Set(args.events)], secret: storedSecret(sealer, secret) });
      return { webhook: toWebhook(row), secret };
    },

    async list(): Promise<Webhook[]> {
      return (await sql.listWebhooks(pool)).map(toWebhook);
    },

    /** Deletes a webhook and its delivery log; its pending deliveries are never attempted. */
    async remove(id: string): Promise<Webhook> {
      const row = await sql.deleteWebhook(pool, id);
      if (row === null) throw new NotFoundError({ webhook_id: id });
      return toWebhook(row);
    },

    /** A new secret; the previous one keeps signing for WEBHOOK_ROTATION_GRACE_MS. */
    async rotate(id: string): Promise<{ webhook: Webhook; secret: string }> {
      const secret = newWebhookSecret();
      const row = await sql.rotateWebhookSecret(pool, { id, secret: storedSecret(sealer, secret), graceMs: deps.rotationGraceMs });
      if (row === null) throw new NotFoundError({ webhook_id: id });
      return { webhook: toWebhook(row), secret };
    },

    async deliveries(args: { webhookId: string; before: number | null; limit: number }): Promise<Delivery[]> {
      await existing(args.webhookId);
      return (await sql.listDeliveries(pool, args)).map(toDelivery);
    },

    /** Attempts a delivery again, now, at the start of the schedule, whatever its state. */
    async replay(args: { webhookId: string; deliveryId: number }): Promise<Delivery> {
      const webhook = await existing(args.webhookId);
      if (webhook.disabled_at !== null) {
        throw new AppError(ERRORS.webhook_disabled, { webhook_id: args.webhookId });
      }
      const row = await sql.replayDelivery(pool, { webhookId: args.webhookId, id: String(args.deliveryId) });
      if (row === null) throw new NotFoundError({ webhook_id: args.webhookId, delivery_id: args.deliveryId });
      return toDelivery(row);
    },

    /** Turns the events up to `upTo` (a horizon) into deliveries; answers the new ones. */
    async fanOut(upTo: number): Promise<DueDelivery[]> {
      const made = await sql.fanOutEvents(pool, { upTo, firstDelayMs: retryScheduleMs[0] ?? 0 });
      return made.map((row) => ({ id: Number(row.id), delayMs: row.delay_ms }));
    },

    fanOutCursor: () => sql.fanOutCursor(pool),

    /** Pending deliveries due within `withinMs`: the sweep adds their jobs (those that exist stay). */
    async due(withinMs: number, limit: number): Promise<DueDelivery[]> {
      return (await sql.dueDeliveries(pool, { withinMs, limit })).map((row) => ({ id: Number(row.id), delayMs: row.delay_ms }));
    },

    /**
     * One attempt of a delivery, if it is pending and due: claims it, posts it signed, and records
     * what came back. Safe to run twice or at once from two workers: only one claims an attempt.
     */
    async attempt(deliveryId: number, poster: WebhookPoster, now: () => number = Date.now): Promise<AttemptOutcome> {
      const id = String(deliveryId);
      const claimed = await sql.claimDelivery(pool, { id, holdMs: CLAIM_HOLD_MS });
      if (claimed === null) {
        const state = await sql.deliveryState(pool, id);
        if (state?.state === 'pending' && state.delay_ms !== null) return { outcome: 'not_due', delayMs: state.delay_ms };
        return { outcome: 'skipped' };
      }
      const body = deliveryBody(claimed);
      if (claimed.disabled || body === null) {
        // A disabled endpoint gets nothing more; an event retention removed cannot be sent.
        await sql.abandonDelivery(pool, id);
        return { outcome: 'failed' };
      }
      const startedAt = new Date(now());
      const timestamp = Math.floor(startedAt.getTime() / 1000);
      const webhookId = messageId(claimed.id);
      const result = await poster.post(
        claimed.url,
        {
          'webhook-id': webhookId,
          'webhook-timestamp': String(timestamp),
          'webhook-signature': signatureHeader(
            claimed.secrets.map((stored) => openedSecret(sealer, stored)),
            webhookId,
            timestamp,
            body,
          ),
          'user-agent': 'token-lease-webhooks',
        },
        body,
      );
      const succeeded = result.status !== null && result.status >= 200 && result.status < 300;
      const gone = result.status === 410;
      const nextStep = claimed.step + 1;
      const scheduled = retryScheduleMs[nextStep];
      const retryInMs =
        succeeded || gone || scheduled === undefined
          ? null
          : Math.max(scheduled, Math.min(result.retryAfterMs ?? 0, MAX_RETRY_AFTER_MS));
      const moved = await sql.recordAttempt(pool, {
        id,
        startedAt,
        status: result.status,
        durationMs: Math.max(0, Math.round(now() - startedAt.getTime())),
        error: gone ? 'answered 410: the webhook is disabled' : result.error,
        succeeded,
        retryInMs,
        disable: gone,
      });
      if (moved.state === 'pending' && moved.delay_ms !== null) return { outcome: 'retry', delayMs: moved.delay_ms };
      return { outcome: succeeded ? 'succeeded' : 'failed' };
    },
  };
}

export type Webhooks = ReturnType<typeof createWebhooks>;
