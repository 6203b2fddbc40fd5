import http from 'node:http';

// A lean JSON client for the load generator: node:http over keep-alive sockets, so the
// generator spends the two cores it shares with the service on requests, not on connection
// set-up or on fetch's stream machinery.

export interface Answer {
  readonly status: number;
  readonly body: any;
}

export interface HttpClient {
  request(method: 'GET' | 'POST', url: string, options?: { body?: unknown; headers?: Record<string, string>; timeoutMs?: number }): Promise<Answer>;
  close(): void;
}

export function createHttpClient(): HttpClient {
  // An idle socket is dropped before the server's keep-alive timeout (5 s, announced in the
  // Keep-Alive header) can close it under a request just being sent on it.
  const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity, timeout: 4_000 });

  function request(
    method: 'GET' | 'POST',
    url: string,
    options: { body?: unknown; headers?: Record<string, string>; timeoutMs?: number } = {},
  ): Promise<Answer> {
    const payload = options.body === undefined ? undefined : JSON.stringify(options.body);
    return new Promise((resolve, reject) => {
      const req = http.request(
        url,
        {
          method,
          agent,
          headers: {
            ...(payload === undefined
              ? {}
              : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) }),
            ...options.headers,
          },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (chunk: Buffer) => chunks.push(chunk));
          res.on('error', reject);
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString();
            let body: unknown = text;
            if ((res.headers['content-type'] ?? '').includes('json')) {
              try {
                body = JSON.parse(text);
              } catch {
                // Kept as text: the caller reports it as an unexpected answer.
              }
            }
            resolve({ status: res.statusCode ?? 0, body });
          });
        },
      );
      req.setTimeout(options.timeoutMs ?? 30_000, () => req.destroy(new Error(`${method} ${url} timed out`)));
      req.on('error', reject);
      req.end(payload);
    });
  }

  return { request, close: () => agent.destroy() };
}
