import { once } from 'node:events';
import { createServer, type RequestListener, type Server } from 'node:http';
import type { Logger } from '../logger.js';

export interface Listening {
  readonly server: Server;
  readonly port: number;
  /** Stops taking connections and resolves once in-flight requests have been answered. */
  close(): Promise<void>;
}

export async function listen(listener: RequestListener, options: { host: string; port: number }, log: Logger): Promise<Listening> {
  // Requests Node's parser refuses (bad HTTP, headers over 16 KiB, no Host, an unmet Expect) get
  // Node's own bare 4xx and never reach the app.
  const server = createServer(listener).listen(options.port, options.host);
  await once(server, 'listening');
  const address = server.address();
  const port = typeof address === 'object' && address !== null ? address.port : options.port;
  log.info({ host: options.host, port }, 'listening');

  async function close(): Promise<void> {
    const closed = new Promise<void>((resolve, reject) => {
      server.close((err) => (err === undefined ? resolve() : reject(err)));
    });
    // Keep-alive connections with no request in flight would hold close() open; drop them now
    // and again as in-flight requests finish.
    server.closeIdleConnections();
    const sweeper = setInterval(() => server.closeIdleConnections(), 50);
    try {
      await closed;
    } finally {
      clearInterval(sweeper);
    }
  }

  return { server, port, close };
}
