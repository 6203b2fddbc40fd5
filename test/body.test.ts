import { randomUUID } from 'node:crypto';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestService, type TestService } from './helpers.js';
import { parseResponses } from './rawHttp.js';

// JSON bodies are read by one of two readers (src/http/body.ts): a plain one for the usual
// request (Content-Type exactly application/json, a Content-Length within the limit) and
// body-parser for every other. Both must give the same answer to the same bytes. Each body here
// goes once as `application/json` (the plain reader) and once as `application/json;
// charset="utf-8"` (the same media type, spelled so that only body-parser takes it).

const PLAIN = 'application/json';
const BODY_PARSER = 'application/json; charset="utf-8"';
const LIMIT = 16 * 1024;

const userId = randomUUID();
const valid = JSON.stringify({ user_id: userId, fence: 1 });
/** A valid body of exactly `bytes` bytes. */
const padded = (bytes: number) => {
  const head = `{"user_id":"${userId}","fence":1,"padding":"`;
  return `${head}${'x'.repeat(bytes - head.length - 2)}"}`;
};

const BODIES: Record<string, Buffer> = {
  valid: Buffer.from(valid),
  'a byte order mark first': Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(valid)]),
  'cut short': Buffer.from('{"user_id": '),
  'only white space': Buffer.from('   \n'),
  null: Buffer.from('null'),
  'a number': Buffer.from('42'),
  'a string': Buffer.from('"x"'),
  'an array': Buffer.from('[]'),
  'an empty object': Buffer.from('{}'),
  'invalid UTF-8 in a string': Buffer.concat([Buffer.from('{"user_id":"'), Buffer.from([0xff, 0xfe]), Buffer.from('"}')]),
  'invalid UTF-8 outside strings': Buffer.concat([Buffer.from('{"user_id":1'), Buffer.from([0xc3]), Buffer.from('}')]),
  'a NUL byte': Buffer.from('{"user_id":"a\u0000b"}'),
  'duplicate keys': Buffer.from(`{"user_id":"x","user_id":"${userId}","fence":1}`),
  '__proto__ as a key': Buffer.from(`{"__proto__":{"fence":1},"user_id":"${userId}"}`),
  'deep nesting': Buffer.from(`${'['.repeat(3000)}${']'.repeat(3000)}`),
  'trailing garbage': Buffer.from(`${valid}x`),
  'UTF-16': Buffer.from(valid, 'utf16le'),
  'exactly the limit': Buffer.from(padded(LIMIT)),
  'one byte over the limit': Buffer.from(padded(LIMIT + 1)),
};

describe('reading JSON bodies', () => {
  let t: TestService;
  let tokenId: string;

  beforeAll(async () => {
    t = await startTestService({ POOL_SIZE: '3' });
    const list = await t.http.get('/api/tokens');
    tokenId = (list.body as { data: Array<{ id: string }> }).data[0]?.id ?? '';
  });
  afterAll(async () => {
    await t.close();
  });

  /** Validate reads the body and writes nothing, so the same request can be asked again. */
  async function answer(type: string, body: Buffer) {
    const [reply] = parseResponses(await rawRequest(type, [body]));
    return { status: reply?.status, body: JSON.parse(reply?.body.toString('utf8') ?? '') as unknown };
  }

  /**
   * Writes one request on a raw socket (an HTTP client would re-encode some of these bodies), the
   * body in parts 10 ms apart, and returns all that came back.
   */
  function rawRequest(type: string, parts: readonly Buffer[], options: { abortAfterFirst?: boolean } = {}): Promise<Buffer> {
    const url = new URL(t.url);
    return new Promise((resolve, reject) => {
      const socket = connect(Number(url.port), url.hostname);
      const received: Buffer[] = [];
      socket.on('data', (chunk: Buffer) => received.push(chunk));
      socket.on('error', reject);
      socket.on('close', () => resolve(Buffer.concat(received)));
      const length = parts.reduce((sum, part) => sum + part.length, 0);
      socket.write(
        `POST /api/tokens/${tokenId}/validate HTTP/1.1\r\nHost: x\r\nContent-Type: ${type}\r\n` +
          `Content-Length: ${length}\r\nConnection: close\r\n\r\n`,
      );
      socket.write(parts[0] ?? Buffer.alloc(0));
      if (options.abortAfterFirst === true) {
        setTimeout(() => socket.destroy(), 20);
        return;
      }
      let at = 1;
      const next = () => {
        if (at >= parts.length) return;
        socket.write(parts[at] as Buffer);
        at += 1;
        setTimeout(next, 10);
      };
      setTimeout(next, 10);
    });
  }

  it.each(Object.entries(BODIES))('answers a body with %s alike from both readers', async (_name, body) => {
    const plain = await answer(PLAIN, body);
    const parsed = await answer(BODY_PARSER, body);
    expect(plain).toEqual(parsed);
    expect(plain.status).toBeLessThan(500);
  });

  it('takes the limit as body-parser does: 16 KiB is read, one byte more is 413', async () => {
    expect((await answer(PLAIN, BODIES['exactly the limit'] as Buffer)).status).toBe(200);
    expect((await answer(PLAIN, BODIES['one byte over the limit'] as Buffer)).status).toBe(413);
  });

  it('reads a body that arrives in several parts', async () => {
    const bytes = Buffer.from(valid);
    const parts = [bytes.subarray(0, 5), bytes.subarray(5, 30), bytes.subarray(30)];
    const [reply] = parseResponses(await rawRequest(PLAIN, parts));
    expect(reply?.status).toBe(200);
  });

  it('keeps serving after a client leaves in the middle of its body', async () => {
    await rawRequest(PLAIN, [Buffer.from(valid).subarray(0, 10)], { abortAfterFirst: true });
    expect((await answer(PLAIN, BODIES.valid as Buffer)).status).toBe(200);
  });
});
