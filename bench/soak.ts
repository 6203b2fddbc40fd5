import { join } from 'node:path';
import { encodeCursor } from '../src/http/schemas.js';
import { createMigratedDatabase } from '../test/harness/databases.js';
import type { ServiceProcess } from '../test/harness/processes.js';
import { startBenchService, withDatabaseClient } from './env.js';
import { runLoad, type LoadGenerator, type LoadResult } from './load.js';

// The long scenarios, run only when asked (npm run bench -- --only soak|history):
//
// soak: full-speed activate + release cycles for N minutes on one service (pool 100, the
// defaults), with no pause, clear or VACUUM in between, as a long-running deployment sees it;
// per minute the rate, the p99 and the dead rows of the hot tables. Targets: the last minute
// keeps at least 0.9 of the first minute's rate and at most 1.5 x its p99.
//
// history: the cycle on an empty history, then on one seeded with many usages (10 million by
// default, with generate_series: several GB), and a history page read first and last. Target:
// the cycle with the history keeps at least 0.9 of the rate without. Then the same with the
// exclusion constraint dropped, to show what its index costs.

export interface LongRunOptions {
  readonly minutes: number;
  /** soak: the service's HISTORY_RETENTION_DAYS, as given; undefined for its default. */
  readonly retentionDays?: string | undefined;
  readonly historyUsages: number;
  readonly connections: number;
  readonly load: LoadGenerator;
  readonly entry: 'dist' | 'src';
  readonly databaseServerUrl: string;
  readonly redisUrl: string;
  readonly databasePrefix: string;
  readonly redisPrefix: string;
  readonly workDir: string;
  readonly progress: (line: string) => void;
}

export interface SoakMinute {
  readonly minute: number;
  readonly cyclesPerSec: number;
  readonly p99Ms: number;
  readonly errors: number;
  /** What the errors were: each unexpected status with its count, and socket errors and timeouts. */
  readonly errorKinds: string;
  readonly deadTokens: number;
  readonly deadLeases: number;
  readonly deadUsages: number;
  /** The history: rows of `usages`, and its size with its indexes. */
  readonly usages: number;
  readonly usagesBytes: number;
  /** Share of the updates of `tokens` that were HOT, this minute. */
  readonly hotShare: number;
  readonly vacuums: number;
  /**
   * Shared-buffer pages read or hit in the soak's database per cycle, this minute: the work a
   * lease costs PostgreSQL, which other load on the machine does not change.
   */
  readonly pagesPerCycle: number;
}

const SOAK_TARGETS = { rate: 0.9, p99: 1.5 };
const HISTORY_TARGET = 0.9;

/** Starts the built service on `databaseUrl`, with the defaults and a pool of 100. */
async function startOn(
  options: LongRunOptions,
  name: string,
  databaseUrl: string,
  env: Record<string, string> = {},
): Promise<{ service: ServiceProcess; url: string }> {
  const service = await startBenchService({
    entry: options.entry,
    env: {
      DATABASE_URL: databaseUrl,
      REDIS_URL: options.redisUrl,
      REDIS_PREFIX: `${options.redisPrefix}-${name}`,
      POOL_SIZE: '100',
      LOG_LEVEL: 'info',
      ...env,
    },
    logFile: join(options.workDir, `${name}.log`),
  });
  return { service, url: await service.url() };
}

const databaseFor = (options: LongRunOptions, name: string) =>
  createMigratedDatabase(`${options.databasePrefix}${name}`, options.databaseServerUrl);

function cycle(options: LongRunOptions, url: string, seconds: number): Promise<LoadResult> {
  return runLoad(
    { kind: 'cycle', url, connections: options.connections, warmupSec: 0, durationSec: seconds, expect: [200, 201] },
    options.load,
  );
}

async function tableStats(databaseUrl: string) {
  return withDatabaseClient(databaseUrl, async (client) => {
    const { rows } = await client.query<{ relname: string; dead: number; live: number; upd: number; hot: number; vacuums: number; bytes: number }>(
      `SELECT relname, n_dead_tup::float8 AS dead, n_live_tup::float8 AS live, n_tup_upd::float8 AS upd,
              n_tup_hot_upd::float8 AS hot, vacuum_count::float8 AS vacuums,
              pg_total_relation_size(relid)::float8 AS bytes
       FROM pg_stat_user_tables WHERE relname IN ('tokens', 'leases', 'usages')`,
    );
    const of = (name: string) => rows.find((r) => r.relname === name) ?? { dead: 0, live: 0, upd: 0, hot: 0, vacuums: 0, bytes: 0 };
    const { rows: database } = await client.query<{ pages: number }>(
      `SELECT (blks_hit + blks_read)::float8 AS pages FROM pg_stat_database WHERE datname = current_database()`,
    );
    return { tokens: of('tokens'), leases: of('leases'), usages: of('usages'), pages: database[0]?.pages ?? 0 };
  });
}

export async function runSoak(options: LongRunOptions): Promise<string> {
  const databaseUrl = await databaseFor(options, 'soak');
  const retention: Record<string, string> =
    options.retentionDays === undefined ? {} : { HISTORY_RETENTION_DAYS: options.retentionDays };
  const { service, url } = await startOn(options, 'soak', databaseUrl, retention);
  const minutes: SoakMinute[] = [];
  try {
    let before = await tableStats(databaseUrl);
    for (let minute = 1; minute <= options.minutes; minute += 1) {
      const result = await cycle(options, url, 60);
      const after = await tableStats(databaseUrl);
      const updates = after.tokens.upd - before.tokens.upd;
      minutes.push({
        minute,
        cyclesPerSec: result.cycles / result.seconds,
        p99Ms: result.latencyMs.p99,
        errors: result.errors,
        errorKinds: errorKinds(result),
        deadTokens: after.tokens.dead,
        deadLeases: after.leases.dead,
        deadUsages: after.usages.dead,
        usages: after.usages.live,
        usagesBytes: after.usages.bytes,
        hotShare: updates === 0 ? 1 : (after.tokens.hot - before.tokens.hot) / updates,
        vacuums: (['tokens', 'leases', 'usages'] as const).reduce((n, t) => n + after[t].vacuums - before[t].vacuums, 0),
        pagesPerCycle: result.cycles === 0 ? 0 : (after.pages - before.pages) / result.cycles,
      });
      const m = minutes.at(-1)!;
      options.progress(`soak: minute ${minute}: ${m.cyclesPerSec.toFixed(0)} cycles/s, p99 ${m.p99Ms.toFixed(1)} ms`);
      before = after;
    }
  } finally {
    await service.stop();
  }
  return formatSoak(minutes);
}

const CYCLE_STATUSES = ['200', '201'];

function errorKinds(result: LoadResult): string {
  const unexpected = Object.entries(result.statuses).filter(([status]) => !CYCLE_STATUSES.includes(status));
  const sockets = result.errors - unexpected.reduce((sum, [, count]) => sum + count, 0);
  const kinds = unexpected.map(([status, count]) => `${status}: ${count}`);
  if (sockets > 0) kinds.push(`socket errors and timeouts: ${sockets}`);
  return kinds.join(', ');
}

export function formatSoak(minutes: readonly SoakMinute[]): string {
  const lines = [
    '| Minute | Cycles/s | p99 ms | Errors | Pages per cycle | Dead rows tokens | Dead rows leases | Dead rows usages | Usages | Usages MB | HOT updates of tokens | VACUUMs |',
    '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...minutes.map(
      (m) =>
        `| ${m.minute} | ${m.cyclesPerSec.toFixed(0)} | ${m.p99Ms.toFixed(1)} | ${m.errors}${m.errorKinds === '' ? '' : ` (${m.errorKinds})`} | ${m.pagesPerCycle.toFixed(1)} | ${m.deadTokens} | ${m.deadLeases} | ${m.deadUsages} | ${m.usages} | ${(m.usagesBytes / 1e6).toFixed(1)} | ${(m.hotShare * 100).toFixed(1)}% | ${m.vacuums} |`,
    ),
  ];
  const first = minutes[0];
  const last = minutes.at(-1);
  if (first !== undefined && last !== undefined) {
    const rate = last.cyclesPerSec / first.cyclesPerSec;
    const p99 = last.p99Ms / first.p99Ms;
    const pages = last.pagesPerCycle / first.pagesPerCycle;
    lines.push(
      '',
      `last minute / first minute: rate ${rate.toFixed(2)} (target >= ${SOAK_TARGETS.rate}: ${rate >= SOAK_TARGETS.rate ? 'met' : 'MISSED'}), ` +
        `p99 ${p99.toFixed(2)} (target <= ${SOAK_TARGETS.p99}: ${p99 <= SOAK_TARGETS.p99 ? 'met' : 'MISSED'}), ` +
        `pages per cycle ${pages.toFixed(2)}`,
    );
  }
  return lines.join('\n');
}

/** Adds `count` ended usages, spread over the pool's tokens and back in time, in batches. */
async function seedHistory(databaseUrl: string, count: number, progress: (line: string) => void): Promise<void> {
  const batch = 1_000_000;
  for (let done = 0; done < count; done += batch) {
    const n = Math.min(batch, count - done);
    await withDatabaseClient(databaseUrl, (client) =>
      client.query(
        // Each token's usages are back to back, 1 s each, ending a year ago and earlier; fences
        // stay below the live ones (which the service numbers from last_fence).
        `WITH t AS (SELECT id, row_number() OVER (ORDER BY position) - 1 AS i, count(*) OVER () AS n FROM tokens)
         INSERT INTO usages (id, pool_id, token_id, user_id, fence, started_at, expires_at, ended_at, end_reason)
         SELECT uuid_v7(s), 1, t.id, gen_random_uuid(), k / t.n + 1, s, s + interval '2 minutes', s + interval '1 second', 'released'
         FROM generate_series($1::bigint, $1::bigint + $2 - 1) k
         JOIN t ON t.i = k % t.n
         CROSS JOIN LATERAL (SELECT now() - interval '365 days' - ($3::bigint - k / t.n) * interval '1 second' AS s) x`,
        [done, n, Math.ceil(count / 100)],
      ),
    );
    progress(`history: ${done + n} usages seeded`);
  }
  await withDatabaseClient(databaseUrl, async (client) => {
    await client.query(`UPDATE tokens t SET last_fence = f.m FROM (SELECT token_id, max(fence) AS m FROM usages GROUP BY token_id) f WHERE f.token_id = t.id`);
    await client.query('VACUUM (ANALYZE) tokens, usages');
  });
}

export async function runHistory(options: LongRunOptions): Promise<string> {
  const seconds = 20;
  const rows: string[] = ['| Scenario | Cycles/s | p99 ms |', '| --- | ---: | ---: |'];
  // The history pages' table, after the cycles'.
  const pages: string[] = [];
  const row = (name: string, r: LoadResult) => rows.push(`| ${name} | ${(r.cycles / r.seconds).toFixed(0)} | ${r.latencyMs.p99.toFixed(1)} |`);

  const empty = await startOn(options, 'history_empty', await databaseFor(options, 'history_empty'));
  let emptyRate: number;
  try {
    await cycle(options, empty.url, 2); // warm-up
    const r = await cycle(options, empty.url, seconds);
    emptyRate = r.cycles / r.seconds;
    row('empty history', r);
  } finally {
    await empty.service.stop();
  }

  const fullDatabase = await databaseFor(options, 'history_full');
  const keepAll = { HISTORY_RETENTION_DAYS: '0' };
  // Started once to seed the pool's tokens, stopped while the history is seeded with nothing
  // else running, then started again.
  await (await startOn(options, 'history_full', fullDatabase, keepAll)).service.stop();
  const lines: string[] = [];
  await seedHistory(fullDatabase, options.historyUsages, options.progress);
  const full = await startOn(options, 'history_full', fullDatabase, keepAll);
  try {
    await cycle(options, full.url, 2);
    const r = await cycle(options, full.url, seconds);
    row(`${options.historyUsages.toLocaleString('en')} usages in history`, r);
    const ratio = r.cycles / r.seconds / emptyRate;
    lines.push(`with history / empty: ${ratio.toFixed(2)} (target >= ${HISTORY_TARGET}: ${ratio >= HISTORY_TARGET ? 'met' : 'MISSED'})`);

    const tokenId = await withDatabaseClient(fullDatabase, async (c) => (await c.query<{ id: string }>('SELECT id FROM tokens ORDER BY position LIMIT 1')).rows[0]?.id);
    const page = async (cursor: string | null) =>
      runLoad(
        {
          kind: 'get',
          path: `/api/tokens/${tokenId}/history?limit=50${cursor === null ? '' : `&cursor=${cursor}`}`,
          url: full.url,
          connections: options.connections,
          warmupSec: 1,
          durationSec: 5,
          expect: [200],
        },
        options.load,
      );
    const firstPage = await page(null);
    const lastPage = await page(encodeCursor(51));
    pages.push('', '| History page | Requests/s | p99 ms |', '| --- | ---: | ---: |');
    pages.push(`| first | ${(firstPage.requests / firstPage.seconds).toFixed(0)} | ${firstPage.latencyMs.p99.toFixed(1)} |`);
    pages.push(`| last | ${(lastPage.requests / lastPage.seconds).toFixed(0)} | ${lastPage.latencyMs.p99.toFixed(1)} |`);

    // What the no-overlap constraint's index costs on the same history.
    await withDatabaseClient(fullDatabase, (c) => c.query('ALTER TABLE usages DROP CONSTRAINT usages_no_overlap'));
    const without = await cycle(options, full.url, seconds);
    row('same history, without usages_no_overlap', without);
    const cost = 1 - r.cycles / r.seconds / (without.cycles / without.seconds);
    lines.push(`usages_no_overlap costs ${(cost * 100).toFixed(1)}% of the cycle rate with this history`);
  } finally {
    await full.service.stop();
  }
  return [...rows, ...pages, '', ...lines].join('\n');
}
