import http from 'node:http';
import { brotliCompressSync, deflateSync, gzipSync } from 'node:zlib';
import fc from 'fast-check';

// Generators of hostile requests for the fuzzer, sent with Node's HTTP client: anything it agrees
// to send (odd methods, paths, headers and bodies). Malformed HTTP, which only Node's own parser
// sees, is in rawHttp.ts.

export interface HostileBody {
  /** What the body is, for reading a counterexample. */
  readonly kind: string;
  readonly text: string;
  readonly encoding: 'utf8' | 'latin1' | 'utf16le';
  /** Compressed before sending (whatever Content-Encoding says). */
  readonly compress?: 'gzip' | 'deflate' | 'br' | 'bomb' | undefined;
}

export interface HostileRequest {
  readonly method: string;
  /** The request target as sent: path and query, already percent-encoded where it is. */
  readonly path: string;
  /** Header lines in order; a name may repeat. Content-Length is added for a body. */
  readonly headers: ReadonlyArray<readonly [string, string]>;
  readonly body: HostileBody | undefined;
}

/**
 * Stands for the user's latest lease in a call's body: leases are known only once granted, so
 * the sender puts the id in (withLatestLease) as it sends.
 */
export const LATEST_LEASE = '00000000-0000-4000-8000-00000000ffff';

/** The call with the user's latest lease id (from `latest`, by user id) in place of LATEST_LEASE. */
export function withLatestLease(request: HostileRequest, latest: ReadonlyMap<string, string>): HostileRequest {
  if (request.body?.kind !== 'call') return request;
  const { text } = request.body;
  const userId = /"user_id":"([^"]+)"/.exec(text)?.[1];
  const leaseId = userId === undefined ? undefined : latest.get(userId);
  if (leaseId === undefined) return request;
  return { ...request, body: { ...request.body, text: text.replace(LATEST_LEASE, leaseId) } };
}

export interface World {
  /** The pool's token ids, so that paths name real tokens often. */
  readonly tokenIds: readonly string[];
  /** A few user ids used again and again, so that releases and renewals meet real leases. */
  readonly userIds: readonly string[];
  readonly adminApiKey: string;
}

export const weighted = <T>(...choices: Array<[number, fc.Arbitrary<T>]>) =>
  fc.oneof(...choices.map(([weight, arbitrary]) => ({ weight, arbitrary })));

export const anyOf = <T>(...values: T[]) => fc.constantFrom(...values);

/** Characters Node's HTTP client lets through in a header value (RFC 9110 field-vchar and obs-text). */
const headerChar = fc.oneof(
  fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)),
  fc.integer({ min: 0x80, max: 0xff }).map((c) => String.fromCharCode(c)),
  fc.constant('\t'),
);
const headerValue = (maxLength = 64) => fc.string({ unit: headerChar, maxLength });

/** Percent-encodes every byte of the UTF-8 form (lone surrogates become U+FFFD) except unreserved ones. */
export function percentEncode(text: string): string {
  return [...Buffer.from(text, 'utf8')]
    .map((b) => (/[A-Za-z0-9\-._~]/.test(String.fromCharCode(b)) ? String.fromCharCode(b) : `%${b.toString(16).toUpperCase().padStart(2, '0')}`))
    .join('');
}

// ---- paths ------------------------------------------------------------------------------------

const ROUTES = [
  '/api/tokens',
  '/api/tokens/activate',
  '/api/tokens/clear',
  '/api/tokens/:id',
  '/api/tokens/:id/history',
  '/api/tokens/:id/release',
  '/api/tokens/:id/renew',
  '/api/tokens/:id/validate',
  '/healthz',
  '/readyz',
  '/metrics',
];

const SEGMENT_TRICKS = [
  '..', '.', '%2e%2e', '%2E', '%2F', 'a%2Fb', '%5C', '%00', '%', '%Z', '%ZZ', '%C0%AE', '%C0%AF', '%FF%FE', '%E2%80%AE',
  '%ED%A0%80', '..%2F..%2Fetc%2Fpasswd', '..;', ';x=1', '%20', '+', '~', 'activate', 'clear', 'history', 'null',
  'undefined', '__proto__', 'constructor', 'prototype', '0', '-1', '1e9', '00000000-0000-0000-0000-000000000000',
  'ffffffff-ffff-ffff-ffff-ffffffffffff', '{00000000-0000-0000-0000-000000000000}', 'urn:uuid:00000000-0000-0000-0000-000000000000',
];

function tokenIdSegment(world: World) {
  return weighted<string>(
    [8, anyOf(...world.tokenIds)],
    [1, anyOf(...world.tokenIds).map((id) => id.toUpperCase())],
    [1, anyOf(...world.tokenIds).map((id) => `${id}%00`)],
    [2, fc.uuid()],
    [4, anyOf(...SEGMENT_TRICKS)],
    [1, fc.string({ unit: 'binary', maxLength: 30 }).map(percentEncode)],
    [1, fc.integer({ min: 100, max: 8_000 }).map((n) => 'a'.repeat(n))],
  );
}

const PATH_TRICKS: Array<(path: string) => string> = [
  (p) => `${p}/`,
  (p) => p.replace(/\//g, '//'),
  (p) => p.toUpperCase(),
  (p) => p.replace('/tokens', '/tokens/.'),
  (p) => p.replace('/tokens', '/x/../tokens'),
  (p) => `${p}/..`,
  (p) => `${p}%00`,
  (p) => `${p};x`,
  (p) => `${p}%20`,
  (p) => `${p}#fragment`,
  (p) => `/${p}`,
  (p) => p.replace(/\//g, '%2F'),
];

function query() {
  const number = anyOf(
    '0', '0.0005', '0.001', '0.0125', '1e-7', '5e-324', '-0', '-1', '61', '60.0001', '1e999', '-1e999', 'NaN', 'Infinity',
    '-Infinity', '', ' 1', '1 ', '0x10', '0b1', '1_000', '١', 'abc', '%00', '[]', '{}', '9'.repeat(400), '1e2', '500', '501', '1.5',
  );
  // Valid waits are kept short: a full pool would otherwise hold a request that long.
  const shortWait = fc.double({ min: 0, max: 0.05, noNaN: true }).map((s) => String(s));
  return weighted<string>(
    [10, fc.constant('')],
    [3, fc.oneof(number, shortWait).map((v) => `?wait=${v}`)],
    [2, number.map((v) => `?limit=${v}`)],
    [2, anyOf('ZjE', 'ZjA', 'Zg', 'Zjk5OTk5OTk5OTk5OTk5OTk5', '', '%00', '!!!', 'f1', 'ZjE=', 'x'.repeat(2000)).map((c) => `?cursor=${c}`)],
    [1, anyOf('?wait=0&wait=1', '?wait[]=1', '?wait[a]=1', '?limit=1&limit=2', '?__proto__=1', '?constructor=x&hasOwnProperty=1', '?=', '?&&&', '?wait', '?%=%', '?a=%ZZ')],
    [1, fc.integer({ min: 1_000, max: 8_000 }).map((n) => `?x=${'y'.repeat(n)}`)],
  );
}

export function hostilePath(world: World) {
  const route = fc.tuple(anyOf(...ROUTES), tokenIdSegment(world)).map(([r, id]) => r.replace(':id', id));
  const tricked = weighted<string>(
    [12, route],
    [2, fc.tuple(route, anyOf(...PATH_TRICKS)).map(([p, trick]) => trick(p))],
    [1, fc.array(fc.oneof(anyOf(...SEGMENT_TRICKS), fc.string({ unit: 'binary', maxLength: 10 }).map(percentEncode)), { maxLength: 6 }).map((s) => `/${s.join('/')}`)],
  );
  return fc.tuple(tricked, query()).map(([p, q]) => onTheWire(`${p}${q}`));
}

/** Node's client sends only U+0021..U+00FF in a request target: percent-encode the rest, keep the rest raw. */
function onTheWire(target: string): string {
  return target.replace(/[^\u0021-\u00ff]/gu, (c) => percentEncode(c));
}

// ---- bodies -----------------------------------------------------------------------------------

const NUMBER_TEXTS = [
  '0', '-1', '1.5', '1e3', '1E400', '-1e400', '9007199254740991', '9007199254740992', '123456789012345678901234567890', '1.0', '-0',
  '0.0000001', '1e-400', '2.5e-324', '"1"', 'null', 'true', '[]', '{}', '[1]', '{"$gt":0}',
];

function userText(world: World) {
  return weighted<string>(
    [10, anyOf(...world.userIds).map((u) => JSON.stringify(u))],
    [2, fc.uuid().map((u) => JSON.stringify(u))],
    [1, anyOf(...world.userIds).map((u) => JSON.stringify(u.toUpperCase()))],
    [1, anyOf(...world.userIds).map((u) => JSON.stringify(`{${u}}`))],
    [1, anyOf(...world.userIds).map((u) => JSON.stringify(` ${u}`))],
    [1, anyOf(...world.userIds).map((u) => JSON.stringify(`${u}\u0000`))],
    [2, fc.string({ unit: 'binary', maxLength: 60 }).map((s) => JSON.stringify(s))],
    [1, fc.integer({ min: 1_000, max: 20_000 }).map((n) => JSON.stringify('x'.repeat(n)))],
    [2, anyOf(...NUMBER_TEXTS)],
    [1, fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v))],
  );
}

const fenceText = weighted<string>(
  [6, fc.integer({ min: 1, max: 4 }).map(String)],
  [4, anyOf(...NUMBER_TEXTS)],
  [1, fc.double().map((d) => JSON.stringify(d))],
  [1, fc.bigInt().map(String)],
);

const KEYS = ['user_id', 'fence', '__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', '', 'USER_ID', 'user_id ', 'userId', 'wait', '\u0000', 'ключ', '🔑'];

function objectText(world: World) {
  // The usual shape, with a fence now and then, or a free list of entries where keys repeat.
  const plain = fc
    .tuple(userText(world), fc.option(fenceText, { nil: undefined }))
    .map(([u, f]) => (f === undefined ? `{"user_id":${u}}` : `{"user_id":${u},"fence":${f}}`));
  const entry = fc.tuple(
    weighted<string>([4, fc.constant('user_id')], [2, fc.constant('fence')], [3, anyOf(...KEYS)], [1, fc.string({ maxLength: 8 })]),
    fc.oneof(userText(world), fenceText),
  );
  const free = fc
    .array(entry, { maxLength: 6 })
    .map((entries) => `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${v}`).join(',')}}`);
  const prototypeTricks = anyOf(...world.userIds).chain((u) =>
    anyOf(
      `{"__proto__":{"user_id":"${u}"}}`,
      `{"constructor":{"prototype":{"user_id":"${u}"}}}`,
      `{"user_id":"${u}","__proto__":{"fence":1}}`,
      `{"user_id":"${u}","user_id":"${u}x"}`,
      `{"user_id":"${u}x","user_id":"${u}"}`,
      `{"fence":1,"user_id":"${u}","fence":"1"}`,
    ),
  );
  return weighted<string>([8, plain], [3, free], [2, prototypeTricks]);
}

const MALFORMED = [
  '{', '}', "{'user_id':'x'}", '{"user_id":"a",}', '{"user_id" "a"}', '[1,2', 'nul', 'tru', '"unterminated', '{"a":1}{"b":2}',
  '\ufeff{"user_id":"x"}', '{"user_id":"\\ud800"}', '{"user_id":"\\x41"}', '{"user_id":"\\u00"}', '/* c */ {}', '{"a":01}', 'NaN',
  'Infinity', '{"a":.5}', '\u0000', ' ', '\n\t', '', '{"a":1e}', '{"a":-}', '{"a":"\u0001"}',
];

function sized(world: World) {
  // Just under, at and over the 16 KiB limit (16384 bytes), and far over it.
  return fc.tuple(anyOf(16_383, 16_384, 16_385, 16_400, 32_768, 100_000), anyOf(...world.userIds)).map(([size, u]) => {
    const head = `{"user_id":"${u}","pad":"`;
    return `${head}${'x'.repeat(Math.max(0, size - head.length - 2))}"}`;
  });
}

const deep = fc.tuple(fc.integer({ min: 100, max: 8_000 }), fc.boolean()).map(([depth, arrays]) =>
  arrays ? `${'['.repeat(depth)}${']'.repeat(depth)}` : `${'{"a":'.repeat(Math.floor(depth / 2))}1${'}'.repeat(Math.floor(depth / 2))}`,
);

export function hostileBody(world: World) {
  const text = weighted<[string, string]>(
    [10, objectText(world).map((t) => ['object', t])],
    [2, fc.jsonValue({ maxDepth: 4 }).map((v) => ['json value', JSON.stringify(v)])],
    [2, anyOf(...MALFORMED).map((t) => ['malformed', t])],
    [1, objectText(world).chain((t) => fc.nat({ max: Math.max(0, t.length - 1) }).map((n) => ['truncated', t.slice(0, n)]))],
    [1, fc.string({ unit: 'binary', maxLength: 200 }).map((t) => ['random text', t])],
    [1, sized(world).map((t) => ['sized', t])],
    [1, deep.map((t) => ['deep', t])],
  );
  return fc
    .tuple(
      text,
      weighted<HostileBody['encoding']>([12, fc.constant('utf8')], [1, fc.constant('latin1')], [1, fc.constant('utf16le')]),
      weighted<HostileBody['compress']>([14, fc.constant(undefined)], [1, anyOf('gzip', 'deflate', 'br', 'bomb')]),
    )
    .map(([[kind, t], encoding, compress]): HostileBody => ({ kind, text: t, encoding, compress }));
}

// 10 MiB of spaces, gzipped once: a few KiB that a server inflating without a limit would choke on.
let bombTail: Buffer | undefined;

export function bodyBytes(body: HostileBody): Buffer {
  const raw = Buffer.from(body.text, body.encoding);
  switch (body.compress) {
    case 'gzip':
      return gzipSync(raw);
    case 'deflate':
      return deflateSync(raw);
    case 'br':
      return brotliCompressSync(raw);
    case 'bomb':
      // Two gzip members, one stream: the body, then the 10 MiB. The limit applies to the inflated body.
      bombTail ??= gzipSync(Buffer.alloc(10 * 1024 * 1024, 0x20));
      return Buffer.concat([gzipSync(raw), bombTail]);
    default:
      return raw;
  }
}

// ---- headers and methods ----------------------------------------------------------------------

const CONTENT_TYPES = [
  'application/json; charset=utf-8', 'application/json; charset=UTF-16', 'application/json; charset=utf-16le', 'application/json; charset=latin1',
  'application/json; charset=bogus', 'application/json; charset=utf-7', 'application/json; charset="utf-8"', 'APPLICATION/JSON',
  'application/json;', 'application/json; foo=bar', 'application/json;;;', 'application/vnd.api+json', 'application/ld+json',
  'application/+json', 'text/plain', 'text/json', 'text/html', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x',
  'multipart/form-data', '*/*', 'application/*', '', ';', 'application/json, text/plain', 'application/octet-stream', 'json',
];

const EXTRA_HEADERS: Array<[string, string]> = [
  ['Accept', 'text/html'], ['Accept', '*/*;q=0'], ['Accept-Charset', 'utf-16'], ['Accept-Encoding', 'br;q=2'], ['Transfer-Encoding', 'chunked'],
  ['Expect', '100-continue'], ['Expect', 'the-unexpected'], ['Connection', 'close'], ['Connection', 'upgrade'], ['Upgrade', 'websocket'],
  ['Upgrade', 'h2c'], ['X-HTTP-Method-Override', 'DELETE'], ['Host', 'evil.example'], ['Host', ''], ['Cookie', 'a=b; __proto__=x'],
  ['X-Forwarded-For', '1.2.3.4, ::1'], ['X-Forwarded-Proto', 'gopher'], ['Content-Language', 'xx'], ['If-None-Match', '*'],
  ['Range', 'bytes=0-1'], ['Origin', 'null'], ['TE', 'trailers'], ['Max-Forwards', '0'], ['Content-MD5', 'x'], ['Keep-Alive', 'timeout=0'],
];

export function hostileHeaders(world: World, hasBody: boolean) {
  const key = world.adminApiKey;
  const contentType = weighted<string | undefined>(
    [hasBody ? 10 : 1, fc.constant('application/json')],
    [4, anyOf(...CONTENT_TYPES)],
    [hasBody ? 1 : 6, fc.constant(undefined)],
    [1, headerValue()],
  );
  const contentEncoding = weighted<string | undefined>(
    [12, fc.constant(undefined)],
    [2, anyOf('gzip', 'deflate', 'br', 'identity', 'GZIP', 'gzip, deflate', 'compress', 'x-gzip', 'bogus', '', 'gzip, identity')],
  );
  const authorization = weighted<string | undefined>(
    [10, fc.constant(undefined)],
    [2, fc.constant(`Bearer ${key}`)],
    [2, anyOf('Bearer wrong', `bearer ${key}`, 'Bearer', 'Bearer ', 'Basic Zm9vOmJhcg==', `Bearer ${key} extra`, `Bearer   ${key}   `, 'Token x', `Bearer ${key}\t`)],
    [1, headerValue(200)],
    [1, fc.integer({ min: 1_000, max: 8_000 }).map((n) => `Bearer ${'k'.repeat(n)}`)],
    // Tokens shaped like JWTs: alg none, a broken signature, a header that is not JSON.
    [1, anyOf('Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.', 'Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln', 'Bearer e30.e30.e30', 'Bearer a.b.c')],
  );
  const requestId = weighted<string | undefined>([10, fc.constant(undefined)], [1, headerValue(200)], [1, fc.constant('r'.repeat(8_000))]);
  const extra = weighted<Array<[string, string]>>(
    [10, fc.constant([])],
    [3, fc.array(anyOf(...EXTRA_HEADERS), { maxLength: 3 })],
    [1, fc.array(fc.tuple(fc.stringMatching(/^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}$/), headerValue()), { maxLength: 4 })],
    [1, fc.integer({ min: 4_000, max: 20_000 }).map((n): Array<[string, string]> => [['X-Big', 'b'.repeat(n)]])],
    [1, fc.integer({ min: 50, max: 200 }).map((n) => Array.from({ length: n }, (_, i): [string, string] => [`X-Many-${i}`, String(i)]))],
  );
  const duplicate = fc.boolean();
  return fc
    .tuple(contentType, contentEncoding, authorization, requestId, extra, duplicate, anyOf(...CONTENT_TYPES))
    .map(([type, encoding, auth, reqId, more, twice, secondType]) => {
      const lines: Array<[string, string]> = [];
      if (type !== undefined) lines.push(['Content-Type', type]);
      if (twice && type !== undefined) lines.push(['Content-Type', secondType]);
      if (encoding !== undefined) lines.push(['Content-Encoding', encoding]);
      if (auth !== undefined) lines.push(['Authorization', auth]);
      if (twice && auth !== undefined) lines.push(['Authorization', 'Bearer wrong']);
      if (reqId !== undefined) lines.push(['X-Request-Id', reqId]);
      if (twice && reqId !== undefined) lines.push(['X-Request-Id', 'second']);
      return [...lines, ...more];
    });
}

export const hostileMethod = weighted<string>(
  [10, anyOf('POST', 'GET')],
  [3, anyOf('PUT', 'DELETE', 'PATCH', 'HEAD', 'OPTIONS')],
  [1, anyOf('PROPFIND', 'TRACE', 'QUERY', 'PURGE', 'LINK', 'SEARCH', 'M-SEARCH', 'NOTIFY', 'MKCOL', 'COPY', 'LOCK', 'REPORT', 'ACL', 'SOURCE')],
  [1, anyOf('get', 'Post', 'FOO', 'BREW', 'X'.repeat(100))],
);

/** Anything: each part drawn on its own. */
function wildRequest(world: World): fc.Arbitrary<HostileRequest> {
  return fc
    .tuple(hostileMethod, hostilePath(world), fc.option(hostileBody(world), { nil: undefined, freq: 4 }))
    .chain(([method, path, body]) =>
      hostileHeaders(world, body !== undefined).map((headers): HostileRequest => ({ method, path, headers, body })),
    );
}

/**
 * A call a real client would make (activate, now and then with a short wait; release; renew;
 * validate) by one of the few users, so that the pool fills up, leases are held and released,
 * and the wild requests meet a server in every state.
 */
function wellFormedCall(world: World): fc.Arbitrary<HostileRequest> {
  const path = weighted<string>(
    [6, fc.constant('/api/tokens/activate')],
    [1, fc.double({ min: 0, max: 0.05, noNaN: true }).map((s) => `/api/tokens/activate?wait=${s}`)],
    [3, fc.tuple(anyOf(...world.tokenIds), anyOf('release', 'renew', 'validate')).map(([id, op]) => `/api/tokens/${id}/${op}`)],
  );
  const call = fc
    .tuple(path, anyOf(...world.userIds), fc.integer({ min: 1, max: 6 }))
    .map(([p, user, fence]): HostileRequest => ({
      method: 'POST',
      path: p,
      headers: [['Content-Type', 'application/json']],
      body: { kind: 'call', text: JSON.stringify({ user_id: user, fence, lease_id: LATEST_LEASE }), encoding: 'utf8' },
    }));
  // An operator clearing the pool, with the right key, a wrong one or none.
  const clear = anyOf<Array<[string, string]>>([['Authorization', `Bearer ${world.adminApiKey}`]], [['Authorization', 'Bearer not-the-admin-key']], []).map(
    (headers): HostileRequest => ({ method: 'POST', path: '/api/tokens/clear', headers, body: undefined }),
  );
  return weighted<HostileRequest>([10, call], [1, clear]);
}

export function hostileRequest(world: World): fc.Arbitrary<HostileRequest> {
  return weighted<HostileRequest>([4, wildRequest(world)], [1, wellFormedCall(world)]);
}

/** The request line and header lines of a request, as Node's client would write them. */
export function requestHead(request: HostileRequest): Buffer {
  const lines = [`${request.method.toUpperCase()} ${request.path} HTTP/1.1`, 'Host: 127.0.0.1'];
  for (const [name, value] of request.headers) if (name.toLowerCase() !== 'host') lines.push(`${name}: ${value}`);
  lines.push('Content-Length: 0', 'Connection: close');
  return Buffer.from(`${lines.join('\r\n')}\r\n\r\n`, 'latin1');
}

// ---- sending ----------------------------------------------------------------------------------

export interface Reply {
  readonly status: number;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: Buffer;
}

/** Sends one request with Node's HTTP client; rejects when no answer comes within `timeoutMs`. */
export function send(agent: http.Agent, port: number, request: HostileRequest, timeoutMs: number): Promise<Reply> {
  const bytes = request.body === undefined ? undefined : bodyBytes(request.body);
  // A name given twice is sent as two lines, except Host, which Node's client takes only once.
  const headers: Record<string, string | string[]> = {};
  for (const [name, value] of request.headers) {
    const previous = headers[name];
    headers[name] = previous === undefined || name.toLowerCase() === 'host' ? value : [previous, value].flat();
  }
  // Node's client sends a GET body with no length at all; the server would read it as a second request.
  const chunked = request.headers.some(([name, value]) => name.toLowerCase() === 'transfer-encoding' && value === 'chunked');
  if (bytes !== undefined && !chunked) headers['Content-Length'] = String(bytes.length);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, agent, method: request.method, path: request.path, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(bytes);
  });
}
