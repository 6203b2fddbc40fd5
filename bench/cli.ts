import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { benchmark } from './bench.js';
import { deleteRedisKeys } from '../test/redis.js';
import { root } from './env.js';
import { dropDatabases } from '../test/harness/databases.js';
import { wrkVersion } from './load.js';
import { runHistory, runSoak } from './soak.js';
import { DEFAULT_GROUPS, GROUPS, type Group } from './scenarios.js';

// npm run bench [-- options]: see --help.

const HELP = `Usage: npm run bench -- [options]

  --only GROUPS       comma-separated, from: ${GROUPS.join(', ')}
                      (default: all but ceilings and processes; \`--only cycle,ceilings\`
                      adds to the cycle the same SQL behind bare node:http and bare Express;
                      jwt runs the cycle and the list again with AUTH_MODE=jwt)
                      or, run only when asked and alone: soak, history
  --minutes N         soak: minutes of full-speed cycles (default 5)
  --retention-days D  soak: the service's HISTORY_RETENTION_DAYS (decimals allowed; 0.002 is
                      under 3 minutes, to see the history level off; default: the service's)
  --history-usages N  history: usages seeded into the history (default 10000000, about 4 GB)
  --rounds N          rounds; in each, a compared run sits between two of its baseline (default 3)
  --duration S        seconds measured per scenario and round (default 5; wrk takes whole seconds)
  --warmup S          seconds of unmeasured load before each measurement (default 1)
  --connections N     HTTP connections, and raw SQL concurrency (default 50)
  --large-pool N      tokens in the large pool (default 1000000)
  --expiry-leases N   leases in the expiry scenario (default 2000)
  --subscribers N     events: stream subscribers, over two API processes (default 1000)
  --event-activations N
                      events, webhooks: activations measured per round, 20 a second
                      (default 100)
  --entry dist|src    run the compiled build (default; built first) or the sources via tsx
  --load wrk|autocannon
                      what generates the HTTP load (default: wrk if installed, else autocannon;
                      wrk leaves more of the machine to the service: see docs/performance.md)
  --json FILE         where to write every measurement (default bench/results/<run>.json)

Environment: BENCH_DATABASE_URL (any database on the PostgreSQL server to use; default
postgres://postgres@127.0.0.1:5432/postgres), BENCH_REDIS_URL (default redis://127.0.0.1:6379),
BENCH_SERVICE_NODE_ARGS (extra node flags for the service processes, space-separated; for a CPU
profile: "--cpu-prof --cpu-prof-dir=bench/results/profiles").
Creates databases tl_bench_<run>_* and Redis keys tl-bench-<run>-*, and removes them at the end.
`;

const { values } = parseArgs({
  options: {
    only: { type: 'string' },
    rounds: { type: 'string', default: '3' },
    duration: { type: 'string', default: '5' },
    warmup: { type: 'string', default: '1' },
    connections: { type: 'string', default: '50' },
    'large-pool': { type: 'string', default: '1000000' },
    'expiry-leases': { type: 'string', default: '2000' },
    subscribers: { type: 'string', default: '1000' },
    'event-activations': { type: 'string', default: '100' },
    minutes: { type: 'string', default: '5' },
    'retention-days': { type: 'string' },
    'history-usages': { type: 'string', default: '10000000' },
    entry: { type: 'string', default: 'dist' },
    load: { type: 'string' },
    json: { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});

if (values.help) {
  process.stdout.write(HELP);
  process.exit(0);
}

function positive(name: string, raw: string): number {
  const n = Number(raw);
  if (!Number.isFinite(n) || n <= 0) {
    process.stderr.write(`--${name} must be a positive number\n${HELP}`);
    process.exit(2);
  }
  return n;
}

const groups = (values.only?.split(',') ?? [...DEFAULT_GROUPS]).map((g) => g.trim());
const LONG_RUNS = ['soak', 'history'];
const longRuns = groups.filter((g) => LONG_RUNS.includes(g));
if (longRuns.length > 0 && longRuns.length !== groups.length) {
  process.stderr.write(`soak and history run alone: ${groups.join(', ')}\n${HELP}`);
  process.exit(2);
}
const unknown = groups.filter((g) => !(GROUPS as readonly string[]).includes(g) && !LONG_RUNS.includes(g));
if (unknown.length > 0 || (values.entry !== 'dist' && values.entry !== 'src')) {
  process.stderr.write(`unknown group or entry: ${[...unknown, values.entry].join(', ')}\n${HELP}`);
  process.exit(2);
}

const wrk = wrkVersion();
const load = values.load ?? (wrk === undefined ? 'autocannon' : 'wrk');
if (load !== 'wrk' && load !== 'autocannon') {
  process.stderr.write(`unknown load generator: ${load}\n${HELP}`);
  process.exit(2);
}
if (load === 'wrk' && wrk === undefined) {
  process.stderr.write('--load wrk: wrk is not installed (Debian and Ubuntu: apt-get install wrk)\n');
  process.exit(2);
}
if (values.load === undefined && wrk === undefined) {
  process.stderr.write(
    'wrk is not installed, so autocannon generates the load; it takes more of the CPU the service ' +
      'runs on, and the HTTP figures come out lower (see docs/performance.md)\n',
  );
}

if (values.entry === 'dist') {
  const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
  const build = spawnSync(process.execPath, [tsc, '-p', 'tsconfig.build.json'], { cwd: root, stdio: 'inherit' });
  if (build.status !== 0) process.exit(1);
}

const runId = `${Date.now().toString(36)}${process.pid.toString(36)}`;
const databaseServerUrl = process.env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const redisUrl = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379';
const databasePrefix = `tl_bench_${runId}_`;
const redisPrefix = `tl-bench-${runId}`;
const resultsDir = join(root, 'bench', 'results');
mkdirSync(resultsDir, { recursive: true });

// Ctrl-C reaches the services too (same process group) and they shut down; what they leave
// behind is removed here.
process.once('SIGINT', () => {
  process.stderr.write('interrupted: removing the run\'s databases and Redis keys\n');
  void Promise.allSettled([
    dropDatabases(databasePrefix, databaseServerUrl),
    deleteRedisKeys(redisUrl, `${redisPrefix}-*`),
  ]).then(() => process.exit(130));
});

if (longRuns.length > 0) {
  const workDir = join(resultsDir, runId);
  mkdirSync(workDir, { recursive: true });
  const options = {
    minutes: positive('minutes', values.minutes),
    retentionDays: values['retention-days'],
    historyUsages: positive('history-usages', values['history-usages']),
    connections: positive('connections', values.connections),
    load: load === 'wrk' ? ('wrk' as const) : ('autocannon' as const),
    entry: values.entry === 'src' ? ('src' as const) : ('dist' as const),
    databaseServerUrl,
    redisUrl,
    databasePrefix,
    redisPrefix,
    workDir,
    progress: (line: string) => process.stderr.write(`${line}\n`),
  };
  try {
    for (const run of longRuns) {
      const text = run === 'soak' ? await runSoak(options) : await runHistory(options);
      writeFileSync(join(workDir, `${run}.md`), `${text}\n`);
      process.stdout.write(`\n${run}:\n${text}\n`);
    }
  } finally {
    await dropDatabases(databasePrefix, databaseServerUrl);
    await deleteRedisKeys(redisUrl, `${redisPrefix}-*`);
  }
  process.exit(0);
}

const report = await benchmark({
  groups: groups as Group[],
  rounds: positive('rounds', values.rounds),
  durationSec: positive('duration', values.duration),
  warmupSec: Number(values.warmup),
  connections: positive('connections', values.connections),
  largePool: positive('large-pool', values['large-pool']),
  expiryLeases: positive('expiry-leases', values['expiry-leases']),
  expiryTtlMs: 2_000,
  subscribers: positive('subscribers', values.subscribers),
  eventActivations: positive('event-activations', values['event-activations']),
  entry: values.entry,
  load,
  databaseServerUrl,
  redisUrl,
  databasePrefix,
  redisPrefix,
  workDir: join(resultsDir, runId),
  progress: (line) => process.stderr.write(`${line}\n`),
});

const jsonFile = values.json ?? join(resultsDir, `${runId}.json`);
writeFileSync(jsonFile, `${JSON.stringify(report, null, 2)}\n`);
process.stdout.write(`${report.text}\n\nmeasurements: ${jsonFile}\n`);
