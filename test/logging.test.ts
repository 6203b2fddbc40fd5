import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger } from '../src/logger.js';
import { createPool } from '../src/db/pool.js';
import { createTestDatabase, newUserId, startTestService, type TestService } from './helpers.js';
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
  reqId?: string;
  status?: number;
  code?: string;
  url?: string;
  leaseId?: string;
  tokenId?: string;
  userId?: string;
  reason?: string;
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
  it('one per request with its id; a full pool’s refusals and the probes are debug, the rest info', async () => {
    const { log, lines } = capturingLogger();
    t = await startTestService({ POOL_SIZE: '1' }, { log });
    const granted = await t.http.post('/api/tokens/activate').set('X-Request-Id', 'order-42').send({ user_id: newUserId() });
    expect(granted.status).toBe(201);
    expect(granted.headers['x-request-id']).toBe('order-42');
    const refused = await t.http.post('/api/tokens/activate').set('X-Request-Id', 'not plain!').send({ user_id: newUserId() });
    expect(refused.status).toBe(409);
    const generated = refused.headers['x-request-id'];
    expect(generated).toMatch(/^[0-9a-f-]{36}$/);
    expect((await t.http.get('/api/nothing-here')).status).toBe(404);
    expect((await t.http.get('/healthz')).status).toBe(200);
    expect((await t.http.get('/api/tokens')).status).toBe(200);

    const requests = await waitFor(() => {
      const found = lines.filter((line) => line.msg === 'request');
      return found.length >= 5 && found;
    });
    const debug = pino.levels.values.debug;
    const info = pino.levels.values.info;
    expect(requests.map(({ level, status, code, url }) => ({ level, status, code, url }))).toEqual([
      { level: info, status: 201, code: undefined, url: '/api/tokens/activate' },
      { level: debug, status: 409, code: 'pool_exhausted', url: '/api/tokens/activate' },
      { level: info, status: 404, code: 'not_found', url: '/api/nothing-here' },
      { level: debug, status: 200, code: undefined, url: '/healthz' },
      { level: info, status: 200, code: undefined, url: '/api/tokens' },
    ]);
    expect(requests[0]?.reqId).toBe('order-42');
    expect(requests[1]?.reqId).toBe(generated);
    expect(new Set(requests.map((line) => line.reqId)).size).toBe(requests.length);
  });

  it('lease events are info lines with the lease, token and user ids, and the id of the request that made them', async () => {
    const { log, lines } = capturingLogger();
    t = await startTestService({ POOL_SIZE: '1' }, { log });
    const userId = newUserId();
    const { body } = await t.http.post('/api/tokens/activate').set('X-Request-Id', 'take-1').send({ user_id: userId }).expect(201);
    const lease = (body as { data: { token_id: string; lease_id: string } }).data;
    await t.http
      .post(`/api/tokens/${lease.token_id}/release`)
      .set('X-Request-Id', 'give-back-1')
      .send({ user_id: userId, lease_id: lease.lease_id })
      .expect(200);

    const events = await waitFor(() => {
      const found = lines.filter((line) => line.msg === 'lease granted' || line.msg === 'lease ended');
      return found.length >= 2 && found;
    });
    const info = pino.levels.values.info;
    expect(
      events.map(({ level, msg, leaseId, tokenId, userId: user, reason, reqId }) => ({ level, msg, leaseId, tokenId, user, reason, reqId })),
    ).toEqual([
      { level: info, msg: 'lease granted', leaseId: lease.lease_id, tokenId: lease.token_id, user: userId, reason: undefined, reqId: 'take-1' },
      { level: info, msg: 'lease ended', leaseId: lease.lease_id, tokenId: lease.token_id, user: userId, reason: 'released', reqId: 'give-back-1' },
    ]);
  });
});

describe('error log lines', () => {
  it('leave out the connection pg-pool attaches to an idle connection’s error', async () => {
    const written: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        written.push(chunk.toString());
        done();
      },
    });
    const db = await createTestDatabase();
    const pool = createPool(
      { connectionString: db.url, max: 1, statementTimeoutMs: 5_000, connectTimeoutMs: 5_000, idleTimeoutMs: 10_000, applicationName: 'log-test' },
      createLogger({ level: 'warn', destination: sink }),
    );
    try {
      await pool.query('SELECT 1');
      await db.pool.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'log-test'`);
      const line = await waitFor(() => written.find((text) => text.includes('idle database connection failed')));
      const parsed = JSON.parse(line) as { err: Record<string, unknown> };
      expect(parsed.err['code']).toBe('57P01');
      expect(parsed.err['message']).toContain('terminating connection');
      expect(parsed.err).not.toHaveProperty('client');
      expect(line.length).toBeLessThan(4_000);
    } finally {
      await pool.end();
      await db.drop();
    }
  });
});
