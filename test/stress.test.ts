import { describe, expect, inject, it } from 'vitest';
import { testDatabasePrefix } from './harness/databases.js';
import { describeViolations } from './invariants.js';
import { testRedisPrefix } from './redis.js';
import { defaultStressOptions, formatReport, runStress } from './stress/run.js';

// The CI-sized `npm run stress`: 3 ROLE=api and 2 ROLE=worker processes, 10,000 leases granted
// to a few hundred virtual users with one-second leases, then every invariant checked.

describe('npm run stress, CI-sized', () => {
  it('grants 10,000 leases in two pools across 3 API and 2 worker processes with every invariant intact', async () => {
    const runId = inject('runId');
    const report = await runStress({
      ...defaultStressOptions(),
      // Under the run's names, so the run's teardown removes them even if this test dies.
      databaseName: `${testDatabasePrefix(runId)}stress`,
      redisPrefix: testRedisPrefix(runId),
    });
    console.log(formatReport(report));

    // What the run did to the database: every invariant held, at least the 10,000 leases the
    // clients were granted are rows, every one of them ended after the drain.
    expect(report.violations, describeViolations(report.violations)).toEqual([]);
    const rows = Object.values(report.usagesByEndReason).reduce((sum, n) => sum + n, 0);
    expect(rows).toBeGreaterThanOrEqual(report.counts.created);
    expect(report.counts.created).toBeGreaterThanOrEqual(10_000);
    expect(report.usagesByEndReason.open ?? 0).toBe(0);
    // Every request answered, each with an answer the API promises for it; waiters were served.
    expect(report.counts.lost).toEqual({});
    expect(report.counts.unexpected).toEqual({});
    expect(report.counts.waits.served).toBeGreaterThan(0);
    // Every process shut down cleanly and logged no error.
    expect(report.processErrors).toEqual([]);
    expect(report.exits.filter((e) => e.code !== 0)).toEqual([]);
    // Each way a lease ends happened: by its job, by the sweep and lazily by an activation.
    expect(report.endedByMechanism['expired/job']).toBeGreaterThan(0);
    expect(report.endedByMechanism['expired/sweep']).toBeGreaterThan(0);
    expect(report.endedByMechanism['expired/activation']).toBeGreaterThan(0);
    // The metrics count every lease that ended, once, whichever way it ended.
    expect(report.uncounted).toEqual({});
  }, 300_000);
});
