import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { newUserId, startTestService, type TestService } from './helpers.js';
import { waitFor } from './harness/waitFor.js';

// The request log: one line per request, at a level that keeps the log readable under load.

let t: TestService | undefined;
afterEach(async () => {
  await t?.close();
  t = undefined;
});

interface RequestLine {
  level: number;
  msg: string;
  status?: number;
  code?: string;
  url?: string;
}

function capturingLogger() {
  const lines: RequestLine[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(JSON.parse(chunk.toString()) as RequestLine);
      done();
    },
  });
  return { log: pino({ level: 'debug' }, sink), lines };
}

describe('request log lines', () => {
  it('carry the error code; a full pool’s refusals are debug, other 4xx info', async () => {
    const { log, lines } = capturingLogger();
    t = await startTestService({ POOL_SIZE: '1' }, { log });
    expect((await t.http.post('/api/tokens/activate').send({ user_id: newUserId() })).status).toBe(201);
    expect((await t.http.post('/api/tokens/activate').send({ user_id: newUserId() })).status).toBe(409);
    expect((await t.http.get('/api/nothing-here')).status).toBe(404);

    const requests = await waitFor(() => {
      const found = lines.filter((line) => line.msg === 'request');
      return found.length >= 3 && found;
    });
    const debug = pino.levels.values.debug;
    const info = pino.levels.values.info;
    expect(requests.map(({ level, status, code }) => ({ level, status, code }))).toEqual([
      { level: debug, status: 201, code: undefined },
      { level: debug, status: 409, code: 'pool_exhausted' },
      { level: info, status: 404, code: 'not_found' },
    ]);
  });
});
