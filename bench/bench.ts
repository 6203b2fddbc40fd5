import { cpus, loadavg, totalmem } from 'node:os';
import { Redis } from 'ioredis';
import { withDatabaseClient } from './env.js';
import { withDatabase } from '../test/harness/databases.js';
import { wrkVersion } from './load.js';
import { formatTable, summarise, verdict, type Row } from './report.js';
import { runBench, SERVICE_POOL_MAX, type BenchOptions, type Measurement } from './run.js';

// The whole benchmark as a function: the CLI (bench/cli.ts) prints what it returns, and the smoke
// test runs it for about a second per scenario.

export interface Machine {
  readonly cpu: string;
  readonly cores: number;
  readonly memoryGb: number;
  readonly node: string;
  readonly postgres: string;
  readonly redis: string;
  /** 1-minute load average before and after the run: other work on the machine shows here. */
  readonly loadBefore: number;
  readonly loadAfter: number;
}

export interface BenchReport {
  readonly startedAt: string;
  readonly seconds: number;
  readonly options: Omit<BenchOptions, 'progress'>;
  readonly machine: Machine;
  readonly measurements: readonly Measurement[];
  readonly rows: readonly Row[];
  /** The header, the Markdown table and the verdict, as printed. */
  readonly text: string;
}

export async function benchmark(options: BenchOptions): Promise<BenchReport> {
  const startedAt = new Date();
  const loadBefore = loadavg()[0] ?? 0;
  const measurements = await runBench(options);
  const seconds = (Date.now() - startedAt.getTime()) / 1000;
  const machine = await describeMachine(options, loadBefore);
  const rows = summarise(measurements, options);
  const recorded: Omit<BenchOptions, 'progress'> & { progress?: unknown } = { ...options };
  delete recorded.progress;
  const text = [
    `token-lease bench, ${startedAt.toISOString()}, ${Math.round(seconds)} s`,
    `machine: ${machine.cores} x ${machine.cpu}, ${machine.memoryGb} GB; Node ${machine.node}; ${machine.postgres}; Redis ${machine.redis}`,
    `load average (1 min) before ${machine.loadBefore.toFixed(2)}, after ${machine.loadAfter.toFixed(2)}`,
    `${options.rounds} round(s) of ${options.durationSec} s per scenario after ${options.warmupSec} s of warm-up; ` +
      `${options.connections} connections; service pool ${SERVICE_POOL_MAX} connections; service: ${options.entry}; ` +
      `HTTP load: ${options.load === 'wrk' ? `${wrkVersion() ?? 'wrk'}, 1 thread` : 'autocannon'}`,
    '',
    formatTable(rows),
    '',
    verdict(rows),
  ].join('\n');
  return { startedAt: startedAt.toISOString(), seconds, options: recorded, machine, measurements, rows, text };
}

async function describeMachine(options: BenchOptions, loadBefore: number): Promise<Machine> {
  const postgres = await withDatabaseClient(withDatabase('postgres', options.databaseServerUrl), async (c) => {
    const { rows } = await c.query<{ version: string }>('SELECT current_setting($1) AS version', ['server_version']);
    return `PostgreSQL ${rows[0]?.version ?? '?'}`;
  });
  const redis = new Redis(options.redisUrl, { maxRetriesPerRequest: 1 });
  const info = await redis.info('server').finally(() => redis.disconnect());
  const version = /redis_version:(\S+)/.exec(info)?.[1] ?? '?';
  const hz = /^hz:(\d+)/m.exec(info)?.[1];
  const redisVersion = hz === undefined ? version : `${version} (hz ${hz})`;
  const [cpu] = cpus();
  return {
    cpu: cpu?.model.trim() ?? '?',
    cores: cpus().length,
    memoryGb: Math.round(totalmem() / 1024 ** 3),
    node: process.version,
    postgres,
    redis: redisVersion,
    loadBefore,
    loadAfter: loadavg()[0] ?? 0,
  };
}
