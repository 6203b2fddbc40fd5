import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { afterEach, describe, expect, it } from 'vitest';
import { createHttpServer } from '../src/http/server.js';

// The service's HTTP server (src/http/server.ts) builds requests and responses on Express's
// prototypes, so that Express never has to change them. The rest of the suite runs every request
// through it (the test service listens with it); this checks the construction itself, and that
// Express and Node behave as with a plain server.

const servers: Array<ReturnType<typeof createHttpServer>> = [];
afterEach(async () => {
  await Promise.all(
    servers.splice(0).map(async (server) => {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    }),
  );
});

async function serve(app: express.Express) {
  const server = createHttpServer(app);
  servers.push(server);
  const seen: Array<{ request: boolean; response: boolean }> = [];
  // Runs before Express, which is the server's first 'request' listener.
  server.prependListener('request', (req, res) => {
    seen.push({
      request: Object.getPrototypeOf(req) === app.request,
      response: Object.getPrototypeOf(res) === app.response,
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
}

describe('createHttpServer', () => {
  it("creates each request and response on the app's own prototypes", async () => {
    const app = express();
    app.get('/x', (_req, res) => {
      res.send('ok');
    });
    const { url, seen } = await serve(app);
    await (await fetch(`${url}/x`)).text();
    await (await fetch(`${url}/x`)).text();
    expect(seen).toEqual([
      { request: true, response: true },
      { request: true, response: true },
    ]);
  });

  it('serves Express as a plain server does: routing, params, bodies, headers, errors', async () => {
    const app = express();
    app.use(express.json());
    app.post('/echo/:id', (req, res) => {
      res.status(201).set('X-Id', req.params.id).json({ id: req.params.id, body: req.body as unknown, app: req.app === app });
    });
    app.get('/fail', () => {
      throw new Error('boom');
    });
    const { url } = await serve(app);

    const echoed = await fetch(`${url}/echo/a1`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ n: 1 }),
    });
    expect(echoed.status).toBe(201);
    expect(echoed.headers.get('x-id')).toBe('a1');
    expect(await echoed.json()).toEqual({ id: 'a1', body: { n: 1 }, app: true });

    expect((await fetch(`${url}/nowhere`)).status).toBe(404);
    expect((await fetch(`${url}/fail`)).status).toBe(500);
  });
});
