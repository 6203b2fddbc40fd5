import { afterAll, expect } from 'vitest';
import { openResources } from './helpers.js';

// A test file that leaves a service, pool or database open fails here, after its own hooks.
afterAll(() => {
  expect(openResources(), 'resources left open by this test file').toEqual([]);
});
