import { connect } from 'node:net';
import fc from 'fast-check';
import { anyOf, weighted } from './hostileRequests.js';

// Malformed HTTP for the fuzzer, written on raw sockets (Node's HTTP client would refuse to send
// it), and a reader of whatever the server writes back.

export interface RawReply {
  readonly status: number;
  readonly headers: Record<string, string>;
  readonly body: Buffer;
}

/** Splits what a server wrote into responses (status line, headers, Content-Length or chunked body). */
export function parseResponses(data: Buffer, methods: readonly string[] = []): RawReply[] {
  const replies: RawReply[] = [];
  let at = 0;
  while (at < data.length) {
    const head = methods[replies.length] === 'HEAD';
    const end = data.indexOf('\r\n\r\n', at);
    if (end === -1) break;
    const [statusLine = '', ...lines] = data.subarray(at, end).toString('latin1').split('\r\n');
    const status = /^HTTP\/1\.[01] (\d{3})/.exec(statusLine)?.[1];
    if (status === undefined) break;
    const headers: Record<string, string> = {};
    for (const line of lines) {
      const colon = line.indexOf(':');
      if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
    }
    at = end + 4;
    let body: Buffer = Buffer.alloc(0);
    const informational = Number(status) < 200;
    if (head || informational || Number(status) === 204 || Number(status) === 304) {
      // no body
    } else if (headers['content-length'] !== undefined) {
      const length = Number(headers['content-length']);
      body = data.subarray(at, at + length);
      at += length;
    } else if (headers['transfer-encoding']?.includes('chunked') === true) {
      const parts: Buffer[] = [];
      for (;;) {
        const lineEnd = data.indexOf('\r\n', at);
        if (lineEnd === -1) break;
        const size = parseInt(data.subarray(at, lineEnd).toString('latin1'), 16);
        at = lineEnd + 2;
        if (!(size > 0)) {
          at += 2;
          break;
        }
        parts.push(data.subarray(at, at + size));
        at += size + 2;
      }
      body = Buffer.concat(parts);
    } else {
      body = data.subarray(at);
      at = data.length;
    }
    // 100 Continue comes before the real answer to the same request.
    if (!informational) replies.push({ status: Number(status), headers, body });
  }
  return replies;
}

/**
 * Writes `bytes` on a fresh connection and collects everything the server writes back until it
 * closes the connection or `idleMs` pass without a byte (a request the server still waits on).
 */
export function sendRaw(
  port: number,
  bytes: Buffer,
  idleMs: number,
  methods: readonly string[] = [],
): Promise<{ replies: RawReply[]; closedByServer: boolean }> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let closedByServer = false;
    const finish = () => {
      clearTimeout(timer);
      socket.destroy();
      resolve({ replies: parseResponses(Buffer.concat(chunks), methods), closedByServer });
    };
    let timer = setTimeout(finish, idleMs);
    socket.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      clearTimeout(timer);
      timer = setTimeout(finish, idleMs);
    });
    socket.on('end', () => {
      closedByServer = true;
      finish();
    });
    socket.on('error', finish);
    socket.write(bytes);
  });
}

// ---- raw requests -----------------------------------------------------------------------------

interface RawParts {
  method: string;
  target: string;
  version: string;
  headers: string[];
  body: string;
}

const RAW_TARGETS = [
  '/api/tokens', '/api/tokens/activate', '/api/tokens/clear', '/healthz', '/readyz', '/api/tokens/activate?wait=0.0005',
  '/api/tokens/00000000-0000-0000-0000-000000000000/validate',
];

/** A well-formed request: Content-Length or valid chunking, a JSON body that grants nothing. */
const wellFormedRaw = fc
  .tuple(anyOf('GET', 'POST', 'HEAD', 'OPTIONS', 'PUT', 'DELETE'), anyOf(...RAW_TARGETS), fc.boolean(), anyOf('{"user_id":"not-a-uuid"}', '{}', '[]', '{"user_id":"0"}', ''))
  .map(([method, target, chunked, body]): RawParts => ({
    method,
    target,
    version: 'HTTP/1.1',
    headers: [
      'Host: 127.0.0.1',
      'Content-Type: application/json',
      chunked ? 'Transfer-Encoding: chunked' : `Content-Length: ${Buffer.byteLength(body)}`,
    ],
    body: chunked ? `${Buffer.byteLength(body).toString(16)}\r\n${body}\r\n0\r\n\r\n` : body,
  }));

const BAD_HEADER_LINES = [
  'NoColon', ' folded: continuation', 'X-Folded: a\r\n continued', 'Bad Name: x', 'X-Nul: a\u0000b', 'X-Del: \u007f', 'X-Bare-CR: a\rb',
  'X-\u00e9: x', ': empty-name', 'Content-Length: -1', 'Content-Length: abc', 'Content-Length: 5\r\nContent-Length: 6',
  'Content-Length: 99999999999999999999999', 'Content-Length: 0x10', 'Content-Length: 1', 'Transfer-Encoding: chunked\r\nContent-Length: 5',
  'Transfer-Encoding: gzip, chunked', 'Transfer-Encoding: chunked, identity', 'Transfer-Encoding: xchunked', 'Expect: 100-continue',
  'Expect: surprise', 'Connection: upgrade\r\nUpgrade: websocket', 'Authorization: Bearer \u00ff\u00fe', `X-Huge: ${'h'.repeat(20_000)}`,
  'Host: a\r\nHost: b', 'Content-Type: text/plain', 'Content-Encoding: gzip', 'Content-Type: application/json; charset=utf-16',
];

// One thing wrong with an otherwise well-formed request.
const RAW_CORRUPTIONS: Array<fc.Arbitrary<(r: RawParts) => RawParts>> = [
  anyOf('get', 'CONNECT', 'PRI', 'M-SEARCH', 'TRACE', 'QUERY', '', 'GET GET', 'P\u00d6ST', 'POST\u0000', 'G\tET', 'X'.repeat(100)).map((method) => (r: RawParts) => ({ ...r, method })),
  fc.string({ unit: 'binary-ascii', maxLength: 8 }).map((method) => (r: RawParts) => ({ ...r, method })),
  anyOf('*', 'http://127.0.0.1/api/tokens', 'http://evil.example/healthz', '//api/tokens', 'api/tokens', '/api/tokens/\u00e9', '/api/tokens/\u2603', '/api/tokens/ x', '/api/tokens/\u0000', '/%', '/?\u0000=1', '127.0.0.1:80', '', '/\\api\\tokens')
    .map((target) => (r: RawParts) => ({ ...r, target })),
  fc.integer({ min: 1, max: 20_000 }).map((n) => (r: RawParts) => ({ ...r, target: `/${'u'.repeat(n)}` })),
  anyOf('HTTP/1.0', 'HTTP/2.0', 'HTTP/0.9', 'HTTP/1.2', 'HTTP/9.9', 'http/1.1', '', 'HTTP/1.1 extra', 'HTTP/1', 'HTTP/1.1\u0000').map((version) => (r: RawParts) => ({ ...r, version })),
  anyOf(...BAD_HEADER_LINES).map((line) => (r: RawParts) => ({ ...r, headers: [...r.headers, line] })),
  fc.string({ unit: 'binary-ascii', maxLength: 30 }).map((line) => (r: RawParts) => ({ ...r, headers: [...r.headers, line] })),
  fc.constant((r: RawParts) => ({ ...r, headers: r.headers.filter((h) => !h.startsWith('Host:')) })),
  anyOf('zz\r\n{}\r\n0\r\n\r\n', '5\r\n{"a":\r\n0\r\n\r\n', '5;ext=1\r\n{"a":\r\n0\r\n\r\n', 'ffffffffffffffff\r\nx\r\n', '0\r\n\r\n', '{"user_id":', '\u0000\u0001\u0002')
    .map((body) => (r: RawParts) => ({ ...r, body })),
];

export interface RawRequest {
  readonly text: string;
  /** The method of each pipelined request, in order (a HEAD answer has no body). */
  readonly methods: readonly string[];
}

/** Malformed HTTP: mostly well-formed requests, pipelined, each with at most one thing wrong. */
export const rawRequest: fc.Arbitrary<RawRequest> = fc
  .array(
    fc.tuple(wellFormedRaw, weighted<((r: RawParts) => RawParts) | null>([1, fc.constant(null)], [3, fc.oneof(...RAW_CORRUPTIONS)]), anyOf('\r\n', '\r\n', '\r\n', '\r\n', '\n', '\r')),
    { minLength: 1, maxLength: 3 },
  )
  .map((requests) => {
    const parts = requests.map(([request, corrupt]) => (corrupt === null ? request : corrupt(request)));
    const text = parts
      .map((r, i) => {
        const eol = requests[i]?.[2] ?? '\r\n';
        // The last request asks the server to close, so that an answered connection ends at once.
        const headers = i === parts.length - 1 ? [...r.headers, 'Connection: close'] : r.headers;
        return `${`${r.method} ${r.target} ${r.version}`.trimEnd()}${eol}${headers.join(eol)}${eol}${eol}${r.body}`;
      })
      .join('');
    return { text, methods: parts.map((r) => r.method) };
  });
