import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import express from 'express';

// The bare HTTP baselines: a minimal server answering GET /api/tokens with a static JSON body
// (the service's own answer, captured just before), already serialised, so that the figure is
// the ceiling of the framework itself. Express gets the service's settings (no ETag, no
// X-Powered-By); node:http shows what the framework costs.
//
// Usage: bareServer.ts express|node BODY_FILE; prints the port it listens on.

const [kind, bodyFile] = process.argv.slice(2);
if ((kind !== 'express' && kind !== 'node') || bodyFile === undefined) {
  process.stderr.write('usage: bareServer.ts express|node BODY_FILE\n');
  process.exit(2);
}
const body = readFileSync(bodyFile);
const contentType = 'application/json; charset=utf-8';

let server;
if (kind === 'express') {
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  app.get('/api/tokens', (_req, res) => {
    res.set('Content-Type', contentType).send(body);
  });
  server = app.listen(0, '127.0.0.1');
} else {
  server = createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/api/tokens') {
      res.writeHead(200, { 'Content-Type': contentType, 'Content-Length': body.length });
      res.end(body);
      return;
    }
    res.writeHead(404).end();
  });
  server.listen(0, '127.0.0.1');
}
server.on('listening', () => {
  const address = server.address();
  process.stdout.write(`${typeof address === 'object' && address !== null ? address.port : 0}\n`);
});
process.once('SIGTERM', () => server.close(() => process.exit(0)));
