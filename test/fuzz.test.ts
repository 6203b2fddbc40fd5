import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { startTestService } from './helpers.js';

// Requests the fuzzer found answered 500, kept as they shrank.
describe('requests the fuzzer found', () => {
  // ?wait= counts seconds, fractions allowed; one that is not a whole number of milliseconds
  // reached the waiting queue's integer milliseconds as 12.5 and PostgreSQL refused it
  // ("invalid input syntax for type integer"): POST /api/tokens/activate?wait=5e-324 answered 500.
  it('a wait that is not a whole number of milliseconds waits, then answers 409 pool_exhausted', async () => {
    const t = await startTestService({ POOL_SIZE: '1', LEASE_TTL_MS: '60000' });
    try {
      expect((await t.http.post('/api/tokens/activate').send({ user_id: randomUUID() })).status).toBe(201);
      for (const wait of ['5e-324', '0.0005', '0.0125']) {
        const res = await t.http.post(`/api/tokens/activate?wait=${wait}`).send({ user_id: randomUUID() });
        expect(res.status, `wait=${wait}`).toBe(409);
        expect(res.body.error.code).toBe('pool_exhausted');
      }
    } finally {
      await t.close();
    }
  });
});
