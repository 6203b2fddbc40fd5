import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import express from 'express';
import { activateLease, findPoolId, releaseLease } from '../src/db/queries.js';
import { JSON_TYPE as contentType } from '../src/http/json.js';
import { sqlCyclePool } from './sqlCycle.js';

// The bare HTTP baselines.
// - node|express BODY_FILE: a minimal server answering GET /api/tokens with a static JSON body
//   (the service's own answer, captured just before), already serialised, so that the figure is
//   the ceiling of the framework itself. Express gets the service's settings (no ETag, no
//   X-Powered-By) on a plain node:http server; node:http shows what the framework costs.
// - node-cycle|express-cycle DATABASE_URL POOL_MAX LEASE_TTL_MS: the raw SQL cycle served over
//   HTTP: POST activate and release run the service's statements through node-postgres and
//   answer the fields the load needs, with no validation, release job, metrics or log; on
//   node:http, or on two Express routes with the same handler. They
//   show what HTTP alone, and then Express, cost the cycle on this machine, and so what the
//   service adds to that.
//
// Usage: bareServer.ts KIND ARGS...; prints the port it listens on.

const KINDS = ['node', 'express', 'node-cycle', 'express-cycle'] as const;
const [kind, ...args] = process.argv.slice(2);
if (!KINDS.includes(kind as (typeof KINDS)[number]) || args.length === 0) {
  process.stderr.write(
    'usage: bareServer.ts node|express BODY_FILE | node-cycle|express-cycle DATABASE_URL POOL_MAX LEASE_TTL_MS\n',
  );
  process.exit(2);
}
const onExpress = kind === 'express' || kind === 'express-cycle';

let server;
if (kind === 'node-cycle' || kind === 'express-cycle') {
  const [databaseUrl = '', poolMax, leaseTtlMs] = args;
  const cycle = cycleHandler(databaseUrl, Number(poolMax), Number(leaseTtlMs));
  if (onExpress) {
    const app = expressApp();
    app.post('/api/tokens/activate', cycle);
    app.post('/api/tokens/:id/release', cycle);
    server = createServer(app).listen(0, '127.0.0.1');
  } else {
    server = createServer(cycle).listen(0, '127.0.0.1');
  }
} else {
  const body = readFileSync(args[0] ?? '');
  if (onExpress) {
    const app = expressApp();
    app.get('/api/tokens', (_req, res) => {
      res.set('Content-Type', contentType).send(body);
    });
    server = createServer(app).listen(0, '127.0.0.1');
  } else {
    server = createServer((req, res) => {
      if (req.method === 'GET' && req.url === '/api/tokens') {
        res.writeHead(200, { 'Content-Type': contentType, 'Content-Length': body.length });
        res.end(body);
        return;
      }
      res.writeHead(404).end();
    }).listen(0, '127.0.0.1');
  }
}
server.on('listening', () => {
  const address = server.address();
  process.stdout.write(`${typeof address === 'object' && address !== null ? address.port : 0}\n`);
});
process.once('SIGTERM', () => server.close(() => process.exit(0)));

function expressApp() {
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  return app;
}

function cycleHandler(databaseUrl: string, max: number, ttlMs: number) {
  const pool = sqlCyclePool(databaseUrl, max);
  const poolId = findPoolId(pool, 'default').then((id) => id ?? 1);
  const release = /^\/api\/tokens\/([0-9a-f-]{36})\/release$/;
  const answer = (res: ServerResponse, status: number, data: unknown) => {
    const text = JSON.stringify({ data });
    res.writeHead(status, { 'Content-Type': contentType, 'Content-Length': Buffer.byteLength(text) }).end(text);
  };
  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const { user_id: userId, lease_id: leaseId } = JSON.parse(Buffer.concat(chunks).toString('utf8')) as {
      user_id: string;
      lease_id: string;
    };
    if (req.url === '/api/tokens/activate') {
      const row = await activateLease(pool, { poolId: await poolId, userId, ttlMs, evictOldest: false, waiterId: null });
      // The holder as the service names it: wrk's load script releases by the answer alone.
      if (row.outcome === 'created') answer(res, 201, { token_id: row.token_id, user_id: userId, lease_id: row.lease_id });
      else answer(res, 409, { outcome: row.outcome });
      return;
    }
    const tokenId = release.exec(req.url ?? '')?.[1];
    if (tokenId === undefined) {
      res.writeHead(404).end();
      return;
    }
    const ended = await releaseLease(pool, { tokenId, userId, leaseId });
    answer(res, ended.outcome === 'released' ? 200 : 409, { token_id: tokenId, lease_id: leaseId });
  }
  return (req: IncomingMessage, res: ServerResponse) => {
    handle(req, res).catch(() => {
      if (!res.headersSent) res.writeHead(500);
      res.end();
    });
  };
}
