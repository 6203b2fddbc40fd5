import { once } from 'node:events';
import { connect, createServer, type Socket } from 'node:net';

// A TCP proxy the fault tests put between the service and PostgreSQL or Redis, so they can break
// the network without touching the machine's shared servers. Every fault is one call:
//
//   refuse()     new connections are reset as soon as they arrive (the server looks down)
//   cutAll()     every live connection is reset, both ways (a crash, a failover, a cable pulled)
//   blackhole()  nothing passes either way and nothing is closed, on live and new connections
//                alike: a network partition. Clients see silence, not an error, and must time out.
//   resume() / accept()   undo blackhole() / refuse(). Bytes held by a black hole flow on
//                resume(), late, as TCP retransmits them when a real partition heals.

export interface TcpProxy {
  readonly port: number;
  /** `targetUrl` (postgres://, redis://) with its host and port replaced by the proxy's. */
  url(targetUrl: string): string;
  refuse(): void;
  accept(): void;
  /** Resets every live connection; returns how many there were. */
  cutAll(): number;
  blackhole(): void;
  resume(): void;
  /** Live connections (client side). */
  connections(): number;
  /** Stops listening and resets every connection. */
  close(): Promise<void>;
}

interface Pair {
  readonly client: Socket;
  upstream: Socket | undefined;
}

export async function startTcpProxy(target: { host: string; port: number }): Promise<TcpProxy> {
  const pairs = new Set<Pair>();
  let accepting = true;
  let held = false;

  function drop(pair: Pair): void {
    pairs.delete(pair);
    pair.client.destroy();
    pair.upstream?.destroy();
  }

  // Hand-written forwarding rather than pipe(): pipe() resumes a source on 'drain', which would
  // let bytes through a black hole.
  function forward(from: Socket, to: Socket): void {
    from.on('data', (chunk: Buffer) => {
      if (!to.write(chunk)) from.pause();
    });
    to.on('drain', () => {
      if (!held) from.resume();
    });
    from.on('end', () => to.end());
  }

  function connectUpstream(pair: Pair): void {
    const upstream = connect(target.port, target.host);
    pair.upstream = upstream;
    upstream.on('error', () => drop(pair));
    upstream.on('close', () => drop(pair));
    forward(pair.client, upstream);
    forward(upstream, pair.client);
    upstream.once('connect', () => {
      if (held) upstream.pause();
      else pair.client.resume();
    });
  }

  const server = createServer({ pauseOnConnect: true }, (client) => {
    if (!accepting) {
      client.on('error', () => undefined);
      client.resetAndDestroy();
      return;
    }
    const pair: Pair = { client, upstream: undefined };
    pairs.add(pair);
    client.on('error', () => drop(pair));
    client.on('close', () => drop(pair));
    // In a black hole the connection is accepted (the SYN got an answer long ago) but nothing
    // reaches the server until resume().
    if (!held) connectUpstream(pair);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  if (typeof address !== 'object' || address === null) throw new Error('proxy has no port');
  const port = address.port;

  return {
    port,
    url(targetUrl) {
      const url = new URL(targetUrl);
      url.hostname = '127.0.0.1';
      url.port = String(port);
      return url.toString();
    },
    refuse() {
      accepting = false;
    },
    accept() {
      accepting = true;
    },
    cutAll() {
      const count = pairs.size;
      for (const pair of [...pairs]) {
        pairs.delete(pair);
        pair.client.resetAndDestroy();
        pair.upstream?.resetAndDestroy();
      }
      return count;
    },
    blackhole() {
      held = true;
      for (const pair of pairs) {
        pair.client.pause();
        pair.upstream?.pause();
      }
    },
    resume() {
      held = false;
      for (const pair of pairs) {
        if (pair.upstream === undefined) {
          connectUpstream(pair);
        } else {
          pair.client.resume();
          pair.upstream.resume();
        }
      }
    },
    connections: () => pairs.size,
    async close() {
      accepting = false;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const pair of [...pairs]) {
        pairs.delete(pair);
        pair.client.resetAndDestroy();
        pair.upstream?.resetAndDestroy();
      }
      await closed;
    },
  };
}
