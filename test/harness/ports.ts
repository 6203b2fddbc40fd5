import { once } from 'node:events';
import { createServer } from 'node:net';

// Needs nothing from vitest: the stress CLI and the bench use it too.

/**
 * A port on 127.0.0.1 that was free a moment ago, for a child process that must be told its
 * port up front (it binds it a moment later).
 */
export async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  server.close();
  await once(server, 'close');
  if (typeof address !== 'object' || address === null) throw new Error('no port');
  return address.port;
}
