import type { Express, RequestHandler } from 'express';
import type { Delivery, Webhook, Webhooks } from '../domain/webhooks.js';
import { NotFoundError } from '../errors.js';
import { jsonBody } from './body.js';
import type { DeliveriesPageJson, DeliveryJson, WebhookJson, WebhookWithSecretJson } from './contract.js';
import { methodNotAllowed } from './errors.js';
import { sendJson } from './json.js';
import { iso } from './readModel.js';
import { deliveriesQuery, deliveryId, parse, webhookBody, webhookId } from './schemas.js';

// The admin routes that manage webhooks (docs/events.md, "Webhooks"). A secret is in the answers
// that make it (create, rotate) and in no other answer, nor in any log line.

function webhookJson(webhook: Webhook): WebhookJson {
  return {
    id: webhook.id,
    url: webhook.url,
    events: [...webhook.events],
    created_at: iso(webhook.createdAt),
    disabled_at: webhook.disabledAt === null ? null : iso(webhook.disabledAt),
  };
}

function deliveryJson(delivery: Delivery): DeliveryJson {
  return {
    id: delivery.id,
    event_id: delivery.eventId,
    type: delivery.type as DeliveryJson['type'],
    state: delivery.state,
    next_attempt_at: delivery.nextAttemptAt === null ? null : iso(delivery.nextAttemptAt),
    created_at: iso(delivery.createdAt),
    attempts: delivery.attempts.map((a) => ({
      started_at: iso(a.startedAt),
      status: a.status,
      duration_ms: a.durationMs,
      error: a.error,
    })),
  };
}

/** A webhook id from the path, or a 404 as for one that does not exist. */
function idOf(raw: unknown): string {
  const parsed = webhookId.safeParse(raw);
  if (!parsed.success) throw new NotFoundError({ webhook_id: raw });
  return parsed.data;
}

export function webhookRoutes(
  router: Pick<Express, 'route'>,
  deps: {
    webhooks: Webhooks;
    /** Makes a delivery's job run now (a replay). */
    runNow: (deliveryId: number) => Promise<void>;
    /** What an admin route runs first: who is calling, the admin budget, the admin scope. */
    first: readonly RequestHandler[];
  },
): void {
  const { webhooks, first } = deps;

  router
    .route('/api/admin/webhooks')
    .post(...first, ...jsonBody, async (req, res) => {
      const body = parse(webhookBody, req.body, 'body');
      const { webhook, secret } = await webhooks.create(body);
      const data: WebhookWithSecretJson = { ...webhookJson(webhook), secret };
      sendJson(res, 201, { data });
    })
    .get(...first, async (_req, res) => {
      sendJson(res, 200, { data: (await webhooks.list()).map(webhookJson) });
    })
    .all(methodNotAllowed(['GET', 'POST']));

  router
    .route('/api/admin/webhooks/:id')
    .delete(...first, async (req, res) => {
      sendJson(res, 200, { data: webhookJson(await webhooks.remove(idOf(req.params.id))) });
    })
    .all(methodNotAllowed(['DELETE']));

  router
    .route('/api/admin/webhooks/:id/rotate')
    .post(...first, async (req, res) => {
      const { webhook, secret } = await webhooks.rotate(idOf(req.params.id));
      const data: WebhookWithSecretJson = { ...webhookJson(webhook), secret };
      sendJson(res, 200, { data });
    })
    .all(methodNotAllowed(['POST']));

  router
    .route('/api/admin/webhooks/:id/deliveries')
    .get(...first, async (req, res) => {
      const id = idOf(req.params.id);
      const query = parse(deliveriesQuery, req.query, 'query');
      const deliveries = await webhooks.deliveries({ webhookId: id, before: query.before ?? null, limit: query.limit });
      const last = deliveries.at(-1);
      const data: DeliveriesPageJson = {
        deliveries: deliveries.map(deliveryJson),
        next_before: deliveries.length === query.limit && last !== undefined ? last.id : null,
      };
      sendJson(res, 200, { data });
    })
    .all(methodNotAllowed(['GET']));

  router
    .route('/api/admin/webhooks/:id/deliveries/:delivery_id/replay')
    .post(...first, async (req, res) => {
      const id = idOf(req.params.id);
      const parsed = deliveryId.safeParse(req.params.delivery_id);
      if (!parsed.success) throw new NotFoundError({ webhook_id: id, delivery_id: req.params.delivery_id });
      const delivery = await webhooks.replay({ webhookId: id, deliveryId: parsed.data });
      // The delivery is due in the database already: if the job cannot be added now, the sweep adds it.
      await deps.runNow(delivery.id).catch(() => undefined);
      sendJson(res, 202, { data: deliveryJson(delivery) });
    })
    .all(methodNotAllowed(['POST']));
}
