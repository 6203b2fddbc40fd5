import type pg from 'pg';
import { describe, expect, it } from 'vitest';
import { createLeaseChanges, type ChangeChannel } from '../src/domain/changes.js';
import { createLeases } from '../src/domain/leases.js';
import { createMetrics } from '../src/metrics.js';
import { createTestDatabase, newUserId, openUsages, testLogger } from './helpers.js';
import { waitFor } from './harness/waitFor.js';

// How one process announces its changes to the others (NOTIFY token_lease_changes), with a
// channel standing in for the connection, to make it fail in ways a real one rarely does.

function channel(publish: () => Promise<void>): ChangeChannel & { published: number } {
  const fake = {
    published: 0,
    subscribe: () => () => undefined,
    publish: () => {
      fake.published += 1;
      return publish();
    },
    isListening: () => true,
  };
  return fake;
}

describe('change announcements', () => {
  it('give up on a connection that never answers, so that a shutdown is not held up', async () => {
    const silent = channel(() => new Promise<void>(() => undefined));
    const changes = createLeaseChanges({ channel: silent, processId: 'p', log: testLogger() });
    changes.changed();
    await waitFor(() => silent.published === 1, { what: 'the announcement' });

    const started = Date.now();
    await changes.close();
    expect(Date.now() - started).toBeLessThan(3_000);
  });

  it('are sent again after one failed, instead of being dropped', async () => {
    let failing = true;
    const flaky = channel(() => (failing ? Promise.reject(new Error('connection down')) : Promise.resolve()));
    const changes = createLeaseChanges({ channel: flaky, processId: 'p', log: testLogger() });
    changes.changed();
    await waitFor(() => flaky.published === 1, { what: 'the first announcement' });
    failing = false;
    await waitFor(() => flaky.published === 2, { what: 'the announcement to be sent again' });
    await changes.close();
  });
});

describe('changes counted by the lease operations', () => {
  it('count a write whose answer was lost, since it may have committed', async () => {
    // The statement commits and then its answer goes missing, as when the connection drops
    // between the two: the caller gets an error, and its retry must still read its own write.
    const db = await createTestDatabase();
    try {
      await db.pool.query('INSERT INTO tokens (created_at) SELECT now() FROM generate_series(1, 2)');
      let loseAnswer = false;
      const lossy = new Proxy(db.pool, {
        get(target, property, receiver) {
          if (property !== 'query') return Reflect.get(target, property, receiver) as unknown;
          // The service always passes one QueryConfig ({ name, text, values }).
          return async (config: pg.QueryConfig) => {
            const result = await target.query(config);
            if (loseAnswer) {
              loseAnswer = false;
              throw new Error('Connection terminated unexpectedly');
            }
            return result;
          };
        },
      });
      let changes = 0;
      const leases = createLeases({
        pool: lossy,
        leaseTtlMs: 60_000,
        log: testLogger(),
        metrics: createMetrics(),
        changes: { changed: () => (changes += 1) },
      });

      loseAnswer = true;
      await expect(leases.activate(newUserId())).rejects.toThrow();

      expect(await openUsages(db)).toHaveLength(1);
      expect(changes).toBe(1);
    } finally {
      await db.drop();
    }
  });
});
