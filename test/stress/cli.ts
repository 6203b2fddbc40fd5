import { parseArgs } from 'node:util';
import { defaultStressOptions, formatReport, runStress, stressPassed, type StressOptions } from './run.js';

// npm run stress -- [options]: one multi-process stress run against the local PostgreSQL
// (TEST_DATABASE_URL) and Redis (TEST_REDIS_URL), in a database and key prefix of its own that
// are removed afterwards. Exits 0 only when every invariant held and nothing unexpected happened.

const HELP = `usage: npm run stress -- [options]

  --api N             API processes (ROLE=api)                          default 3
  --workers N         worker processes (ROLE=worker), at least 1        default 2
  --clients N         concurrent virtual clients                        default 48
  --users N           virtual users per client                          default 5
  --activations N     stop after N leases were granted                  default 10000
  --duration S        or after S seconds (alone: no activation target)
  --ttl MS            LEASE_TTL_MS                                      default 1000
  --sweep MS          SWEEP_INTERVAL_MS                                 default 300
  --pool N            tokens in all, split evenly over the pools            default 160
  --pools N           pools: default and N-1 named ones                 default 2
  --policy P          reject | evict_oldest                             default reject
  --wait-ratio R      share of activations sent with ?wait=             default 0.03
  --max-wait S        longest ?wait= in seconds                         default 1
  --clear-every MS    an admin clears every MS (0: never)               default 5000
  --db-pool N         DATABASE_POOL_MAX per process                     default 5
  --margin MS         drain margin past expiry + sweep interval         default 2000
  --check-every MS    check invariants 1-3 while running (0: never)     default 5000
  --seed N            seed of the clients' random choices
`;

function parseOptions(argv: string[]): StressOptions | null {
  const { values } = parseArgs({
    args: argv,
    options: {
      api: { type: 'string' },
      workers: { type: 'string' },
      clients: { type: 'string' },
      users: { type: 'string' },
      activations: { type: 'string' },
      duration: { type: 'string' },
      ttl: { type: 'string' },
      sweep: { type: 'string' },
      pool: { type: 'string' },
      pools: { type: 'string' },
      policy: { type: 'string' },
      'wait-ratio': { type: 'string' },
      'max-wait': { type: 'string' },
      'clear-every': { type: 'string' },
      'db-pool': { type: 'string' },
      margin: { type: 'string' },
      'check-every': { type: 'string' },
      seed: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help === true) return null;
  const defaults = defaultStressOptions();
  const number = (name: string, raw: string | undefined, fallback: number, min = 0): number => {
    if (raw === undefined) return fallback;
    const value = Number(raw);
    if (!Number.isFinite(value) || value < min) throw new Error(`--${name} must be a number >= ${min}`);
    return value;
  };
  const policy = values.policy ?? defaults.policy;
  if (policy !== 'reject' && policy !== 'evict_oldest') throw new Error('--policy must be reject or evict_oldest');
  const durationMs = values.duration === undefined ? null : number('duration', values.duration, 0, 1) * 1000;
  const onlyDuration = durationMs !== null && values.activations === undefined;
  return {
    ...defaults,
    apiProcesses: number('api', values.api, defaults.apiProcesses, 1),
    workerProcesses: number('workers', values.workers, defaults.workerProcesses, 1),
    clients: number('clients', values.clients, defaults.clients, 1),
    usersPerClient: number('users', values.users, defaults.usersPerClient, 1),
    activations: onlyDuration ? Infinity : number('activations', values.activations, defaults.activations, 1),
    durationMs,
    ttlMs: number('ttl', values.ttl, defaults.ttlMs, 100),
    sweepIntervalMs: number('sweep', values.sweep, defaults.sweepIntervalMs, 10),
    poolSize: number('pool', values.pool, defaults.poolSize, 1),
    pools: number('pools', values.pools, defaults.pools, 1),
    policy,
    waitRatio: number('wait-ratio', values['wait-ratio'], defaults.waitRatio),
    maxWaitSeconds: number('max-wait', values['max-wait'], defaults.maxWaitSeconds),
    clearEveryMs: number('clear-every', values['clear-every'], defaults.clearEveryMs),
    databasePoolMax: number('db-pool', values['db-pool'], defaults.databasePoolMax, 1),
    drainMarginMs: number('margin', values.margin, defaults.drainMarginMs),
    checkEveryMs: number('check-every', values['check-every'], defaults.checkEveryMs),
    seed: number('seed', values.seed, defaults.seed),
  };
}

async function main(): Promise<number> {
  let options: StressOptions | null;
  try {
    options = parseOptions(process.argv.slice(2));
  } catch (error) {
    process.stderr.write(`stress: ${error instanceof Error ? error.message : String(error)}\n\n${HELP}`);
    return 2;
  }
  if (options === null) {
    process.stdout.write(HELP);
    return 0;
  }
  // Ctrl-C stops the load; the run still drains, checks and removes its database and keys.
  const stop = new AbortController();
  process.once('SIGINT', () => stop.abort());
  process.once('SIGTERM', () => stop.abort());
  const report = await runStress(options, (line) => process.stderr.write(`stress: ${line}\n`), stop.signal);
  process.stdout.write(`${formatReport(report)}\n`);
  return stressPassed(report) ? 0 : 1;
}

process.exitCode = await main();
