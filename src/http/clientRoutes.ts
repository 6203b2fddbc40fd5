import type { Express, RequestHandler } from 'express';
import type { ApiClient, ApiClients } from '../domain/clients.js';
import { NotFoundError } from '../errors.js';
import { jsonBody } from './body.js';
import type { ClientJson, NewClientJson, RevokedClientJson } from './contract.js';
import { methodNotAllowed } from './errors.js';
import { sendJson } from './json.js';
import { iso } from './readModel.js';
import { clientBody, clientId, parse } from './schemas.js';

// The admin routes that manage API clients (AUTH_MODE=api_key; docs/security.md). A key is in
// the answer that makes its client and in no other answer, nor in any log line.

function clientJson(client: ApiClient): ClientJson {
  return {
    id: client.id,
    name: client.name,
    scopes: [...client.scopes],
    created_at: iso(client.createdAt),
    last_used_at: client.lastUsedAt === null ? null : iso(client.lastUsedAt),
  };
}

export function clientRoutes(
  router: Pick<Express, 'route'>,
  deps: {
    clients: ApiClients;
    /** What an admin route runs first: who is calling, the admin budget, the admin scope. */
    first: readonly RequestHandler[];
  },
): void {
  const { clients, first } = deps;

  router
    .route('/api/admin/clients')
    .post(...first, ...jsonBody, async (req, res) => {
      const body = parse(clientBody, req.body, 'body');
      const { client, key } = await clients.create(body);
      const data: NewClientJson = {
        id: client.id,
        name: client.name,
        scopes: [...client.scopes],
        key,
        created_at: iso(client.createdAt),
      };
      sendJson(res, 201, { data });
    })
    .get(...first, async (_req, res) => {
      sendJson(res, 200, { data: (await clients.list()).map(clientJson) });
    })
    .all(methodNotAllowed(['GET', 'POST']));

  router
    .route('/api/admin/clients/:id')
    .delete(...first, async (req, res) => {
      const parsed = clientId.safeParse(req.params.id);
      if (!parsed.success) throw new NotFoundError({ client_id: req.params.id });
      const client = await clients.revoke(parsed.data);
      const data: RevokedClientJson = { ...clientJson(client), revoked_at: iso(client.revokedAt) };
      sendJson(res, 200, { data });
    })
    .all(methodNotAllowed(['DELETE']));
}
