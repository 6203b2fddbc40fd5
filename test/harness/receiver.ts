import http from 'node:http';
import type { AddressInfo } from 'node:net';

// A webhook receiver on 127.0.0.1 for the tests and the bench: it keeps every request it gets
// (headers and raw body) and answers as `answer` says (200 by default).

export interface Received {
  readonly headers: Record<string, string>;
  readonly body: string;
  readonly at: number;
}

export interface Answer {
  readonly status: number;
  readonly headers?: Record<string, string>;
}

export interface Receiver {
  readonly url: string;
  readonly received: Received[];
  /** How the next requests are answered; gets the number of the request (1 for the first). */
  answer: (n: number, request: Received) => Answer;
  close(): Promise<void>;
}

export async function startReceiver(options: { keep?: boolean } = {}): Promise<Receiver> {
  const keep = options.keep ?? true;
  const received: Received[] = [];
  let count = 0;
  const receiver: Receiver = {
    url: '',
    received,
    answer: () => ({ status: 200 }),
    close: () => Promise.resolve(),
  };
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const request: Received = {
        headers: Object.fromEntries(Object.entries(req.headers).map(([k, v]) => [k, String(v)])),
        body: Buffer.concat(chunks).toString('utf8'),
        at: Date.now(),
      };
      count += 1;
      if (keep) received.push(request);
      const { status, headers } = receiver.answer(count, request);
      res.writeHead(status, headers);
      res.end();
    });
  });
  server.listen(0, '127.0.0.1');
  await new Promise<void>((resolve) => server.once('listening', resolve));
  const { port } = server.address() as AddressInfo;
  return Object.assign(receiver, {
    url: `http://127.0.0.1:${port}/hook`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  });
}
