import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp } from '../src/http/app.js';
import { createPool } from '../src/db/pool.js';
import { createLeases } from '../src/domain/leases.js';
import { createMetrics } from '../src/metrics.js';
import supertest from 'supertest';
import { newUserId, startTestService, testLogger, type TestService } from './helpers.js';

describe('unexpected errors', () => {
  let t: TestService;

  beforeAll(async () => {
    t = await startTestService({ POOL_SIZE: '1' });
  });
  afterAll(async () => {
    await t.close();
  });

  it('answer 500 internal with no stack trace in the body', async () => {
    // A real failure from PostgreSQL: the activation function is gone from this database.
    await t.db.pool.query('DROP FUNCTION activate_lease(integer, uuid, integer, boolean, bigint, uuid)');

    const res = await t.http.post('/api/tokens/activate').send({ user_id: newUserId() });

    expect(res.status).toBe(500);
    expect(res.body).toEqual({ error: { code: 'internal', message: 'internal error', details: {} } });
    expect(res.text).not.toMatch(/activate_lease|at .*\.ts|stack/);
  });
});

describe('PostgreSQL unreachable', () => {
  // Port 9 (discard) on loopback: nothing listens, connections are refused at once.
  const pool = createPool(
    {
      connectionString: 'postgres://postgres@127.0.0.1:9/none',
      max: 2,
      statementTimeoutMs: 1_000,
      connectTimeoutMs: 500,
      idleTimeoutMs: 10_000,
      applicationName: 'test',
    },
    testLogger(),
  );
  const metrics = createMetrics();
  const leases = createLeases({ pool, poolId: 1, poolName: 'default', leaseTtlMs: 1_000, log: testLogger(), metrics });
  const http = supertest(createApp({ leases, log: testLogger(), metrics, adminApiKey: undefined }));

  afterAll(async () => {
    await pool.end();
  });

  it('/readyz answers 503 not_ready naming PostgreSQL', async () => {
    const res = await http.get('/readyz');
    expect(res.status).toBe(503);
    expect(res.body.error.code).toBe('not_ready');
    expect(res.body.error.details.checks.postgres).toBe('down');
  });

  it('/healthz still answers 200: the process is alive', async () => {
    expect((await http.get('/healthz')).status).toBe(200);
  });

  it('an activation answers 503 unavailable with a JSON body and a Retry-After', async () => {
    const res = await http.post('/api/tokens/activate').send({ user_id: newUserId() });
    expect(res.status).toBe(503);
    expect(res.body.error.code).toBe('unavailable');
    expect(res.headers['retry-after']).toBe('1');
  });
});
