import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inject, describe, expect, it } from 'vitest';
import { benchmark, type BenchReport } from '../bench/bench.js';
import { summarise } from '../bench/report.js';
import type { Measurement } from '../bench/run.js';
import { wrkVersion, type LoadGenerator } from '../bench/load.js';
import { GROUPS, SCENARIOS, type Group } from '../bench/scenarios.js';
import { testDatabasePrefix, uniqueName } from './harness/databases.js';
import { testRedisPrefix, testRedisUrl } from './redis.js';

// The benchmark's own smoke test: every scenario runs for about a second, at a tiny size, and
// the table comes out with a row for each. It asserts no timing: figures from a test run mean
// nothing (npm run bench measures; see the README's Performance section).

const wrk = wrkVersion() !== undefined;

/** A bench run of about a second per scenario, at a tiny size. */
async function smokeRun(groups: readonly Group[], load: LoadGenerator): Promise<BenchReport> {
  const workDir = mkdtempSync(join(tmpdir(), 'tl-bench-smoke-'));
  try {
    return await benchmark({
      groups,
      rounds: 1,
      warmupSec: 0,
      durationSec: 1,
      connections: 4,
      largePool: 1_000,
      expiryLeases: 20,
      expiryTtlMs: 2_000,
      subscribers: 10,
      eventActivations: 5,
      entry: 'src',
      load,
      databaseServerUrl: process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres',
      redisUrl: testRedisUrl,
      // Under the test run's prefixes, so its teardown removes whatever a failure leaves.
      databasePrefix: `${testDatabasePrefix(inject('runId'))}bench_${uniqueName()}_`,
      redisPrefix: testRedisPrefix(inject('runId')),
      workDir,
      progress: () => undefined,
    });
  } finally {
    rmSync(workDir, { recursive: true, force: true });
  }
}

function expectEveryRow(report: BenchReport): void {
  for (const row of report.rows) {
    // Lateness and latency may round to 0 ms; every other figure is a rate or a size.
    if (row.unit === 'ms') expect(row.value, row.label).toBeGreaterThanOrEqual(0);
    else expect(row.value, row.label).toBeGreaterThan(0);
    expect(row.errors, row.label).toBe(0);
    // PostgreSQL's CPU is measured per process, so a connection closing cannot make it negative.
    if (row.dbCpuMsPerOp !== undefined) expect(row.dbCpuMsPerOp, row.label).toBeGreaterThanOrEqual(0);
    expect(report.text).toContain(`| ${row.label}`);
  }
  expect(report.text).toMatch(/^targets met: \d+ of \d+/m);
}

describe('npm run bench', () => {
  // With the load generator the bench picks by default: wrk where it is installed.
  it('runs every scenario and prints one table with a row for each', async () => {
    const report = await smokeRun(GROUPS, wrk ? 'wrk' : 'autocannon');
    expect(report.rows.map((r) => r.key)).toEqual(SCENARIOS.map((s) => s.key));
    expectEveryRow(report);
  }, 240_000);

  // Every kind of HTTP load (cycle, activate, get, get-any, validate), users with JWTs among
  // them, with the other generator. Without the cycle and list groups, the jwt group measures
  // its AUTH_MODE=none baselines itself.
  it.skipIf(!wrk)('runs the HTTP scenarios with autocannon too', async () => {
    const report = await smokeRun(['exhausted', 'jwt', 'reads'], 'autocannon');
    expect(report.text).toContain('HTTP load: autocannon');
    expectEveryRow(report);
    const jwtRatios = report.rows.filter((r) => r.key === 'http-cycle-jwt' || r.key === 'list-jwt').map((r) => r.ratio);
    expect(jwtRatios).toEqual([expect.any(Number), expect.any(Number)]);
  }, 180_000);
});

describe("the bench's report", () => {
  const sizes = { largePool: 1_000, expiryLeases: 20, expiryTtlMs: 2_000, subscribers: 10 };
  const run = (key: Measurement['key'], round: number, value: number, versus?: number): Measurement => ({
    key,
    round,
    value,
    errors: 0,
    ...(versus === undefined ? {} : { versus }),
  });
  const ratioOf = (rows: ReturnType<typeof summarise>, key: Measurement['key']) => rows.find((r) => r.key === key)?.ratio;

  it('compares a run with the baseline figure measured around it, where there is one', () => {
    const rows = summarise(
      [
        run('http-cycle', 1, 1000),
        run('http-cycle-limited', 1, 900, 1000),
        run('http-cycle', 1, 500),
        run('http-cycle-limited', 1, 450, 500),
        run('http-cycle', 2, 800),
        run('http-cycle-limited', 2, 760, 800),
      ],
      sizes,
    );
    // The median of 0.9, 0.9 and 0.95; against each round's first HTTP run it would be 0.45 in round 1.
    expect(ratioOf(rows, 'http-cycle-limited')).toBeCloseTo(0.9);
  });

  it('else compares it with the first baseline run of its round', () => {
    const rows = summarise(
      [run('sql-cycle', 1, 1000), run('http-cycle', 1, 600), run('sql-cycle', 2, 2000), run('http-cycle', 2, 1400)],
      sizes,
    );
    expect(ratioOf(rows, 'http-cycle')).toBeCloseTo(0.65);
  });
});
