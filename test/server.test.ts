import { once } from 'node:events';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLeases } from '../src/domain/leases.js';
import { createApp } from '../src/http/app.js';
import { createHttpServer } from '../src/http/server.js';
import { createMetrics } from '../src/metrics.js';
import { createTestDatabase, newUserId, testLogger, type TestDatabase } from './helpers.js';

// The service listens with src/http/server.ts, which has Node build requests and responses on
// Express's prototypes (the one speed device outside plain Express). The rest of the suite runs
// with it; this runs the same app with and without it and expects the same answers.

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
  await db.pool.query('INSERT INTO tokens (pool_id) SELECT 1 FROM generate_series(1, 2)');
});
afterAll(async () => {
  await db.drop();
});

async function serve(expressPrototypes: boolean): Promise<{ url: string; server: Server; app: ReturnType<typeof createApp> }> {
  const leases = createLeases({ pool: db.pool, poolId: 1, leaseTtlMs: 60_000, log: testLogger(), metrics: createMetrics() });
  const app = createApp({ leases, log: testLogger(), metrics: createMetrics(), adminApiKey: undefined });
  const server = createHttpServer(app, { expressPrototypes }).listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server, app };
}

async function close(server: Server): Promise<void> {
  server.closeAllConnections();
  server.close();
  await once(server, 'close');
}

/** What a client sees of an answer, less what differs on every request. */
async function seen(res: Response) {
  const body: unknown = await res.json();
  return { status: res.status, type: res.headers.get('content-type'), hasId: res.headers.has('x-request-id'), body };
}

describe.each([true, false])('the app served with expressPrototypes: %s', (expressPrototypes) => {
  it('activates, lists, releases and refuses as documented', async () => {
    const { url, server, app } = await serve(expressPrototypes);
    try {
      const user = newUserId();
      const post = (path: string, body: string, type = 'application/json') =>
        fetch(`${url}${path}`, { method: 'POST', headers: { 'content-type': type }, body });
      const activated = await post('/api/tokens/activate', JSON.stringify({ user_id: user }));
      const lease = await seen(activated);
      expect(lease).toMatchObject({ status: 201, type: 'application/json; charset=utf-8', hasId: true });
      const { token_id: tokenId, lease_id: leaseId } = (lease.body as { data: { token_id: string; lease_id: string } }).data;

      const list = await seen(await fetch(`${url}/api/tokens`));
      expect(list.status).toBe(200);
      expect((list.body as { data: Array<{ id: string; current_user_id: string | null }> }).data).toContainEqual(
        expect.objectContaining({ id: tokenId, current_user_id: user }),
      );

      expect(await seen(await post(`/api/tokens/${tokenId}/release`, JSON.stringify({ user_id: user, lease_id: leaseId })))).toMatchObject({
        status: 200,
        hasId: true,
      });
      expect((await seen(await post('/api/tokens/activate', '{'))).body).toMatchObject({ error: { code: 'invalid_json' } });
      expect((await seen(await post('/api/tokens/activate', 'x', 'text/plain'))).status).toBe(415);
      expect((await seen(await fetch(`${url}/nowhere`))).body).toMatchObject({ error: { code: 'not_found' } });
      if (expressPrototypes) {
        // Built on Express's prototypes from the start (seen before Express's own listener runs).
        const { request, response } = app;
        const prototypes = await new Promise<boolean[]>((resolve) => {
          server.prependOnceListener('request', (req, res) => resolve([Object.getPrototypeOf(req) === request, Object.getPrototypeOf(res) === response]));
          void fetch(`${url}/healthz`).then((res) => res.text());
        });
        expect(prototypes).toEqual([true, true]);
      }
    } finally {
      await close(server);
    }
  });
});
