import { describe, expect, it } from 'vitest';
import { createLeaseChanges, type ChangeChannel } from '../src/domain/changes.js';
import { testLogger } from './helpers.js';
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
