import { randomBytes } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import pg from 'pg';
import { checkInvariants, describeViolations, type Violation } from '../invariants.js';
import { everyActivationAnswered, startLoad, type LoadCounts } from '../harness/load.js';
import { startCluster, type Cluster } from './cluster.js';

// A stress run: a fresh deployment of several API and worker processes, many virtual users with
// short leases, then a drain and every invariant checked against what the clients saw.

export interface StressOptions {
  readonly apiProcesses: number;
  readonly workerProcesses: number;
  readonly clients: number;
  readonly usersPerClient: number;
  /** Stop the load once this many leases were granted... */
  readonly activations: number;
  /** ...or once this long has passed (null: no limit). */
  readonly durationMs: number | null;
  readonly ttlMs: number;
  readonly sweepIntervalMs: number;
  /** Tokens in all, split evenly over `pools` pools: `default` and named ones made by an admin. */
  readonly poolSize: number;
  readonly pools: number;
  readonly policy: 'reject' | 'evict_oldest';
  readonly waitRatio: number;
  readonly maxWaitSeconds: number;
  readonly clearEveryMs: number;
  /** PostgreSQL connections per process: the server is shared, keep the total modest. */
  readonly databasePoolMax: number;
  /** How long past the last expiry and a sweep interval a lease may stay open after the run. */
  readonly drainMarginMs: number;
  /** Check invariants 1-3 this often while the load runs; 0 never. */
  readonly checkEveryMs: number;
  readonly seed: number;
  readonly databaseName: string;
  readonly redisUrl: string;
  readonly redisPrefix: string;
}

export const defaultStressOptions = (): StressOptions => {
  const runId = `${Date.now().toString(36)}${process.pid.toString(36)}`;
  return {
    apiProcesses: 3,
    workerProcesses: 2,
    clients: 48,
    usersPerClient: 5,
    activations: 10_000,
    durationMs: null,
    ttlMs: 1_000,
    sweepIntervalMs: 300,
    poolSize: 160,
    pools: 2,
    policy: 'reject',
    waitRatio: 0.03,
    maxWaitSeconds: 1,
    clearEveryMs: 5_000,
    databasePoolMax: 5,
    drainMarginMs: 2_000,
    checkEveryMs: 5_000,
    seed: Math.floor(Math.random() * 2 ** 31),
    // Named like the test runs' databases, so a killed run is cleaned up by the next `npm test`.
    databaseName: `tl_test_${runId}_stress_${randomBytes(3).toString('hex')}`,
    redisUrl: process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379',
    redisPrefix: `tl-test-${runId}-stress-${randomBytes(3).toString('hex')}`,
  };
};

export interface StressReport {
  readonly options: StressOptions;
  readonly loadMs: number;
  readonly drainMs: number;
  readonly totalMs: number;
  readonly counts: LoadCounts;
  /** Usages in the database after the drain, by end_reason ('open' for none). */
  readonly usagesByEndReason: Record<string, number>;
  /**
   * Ended usages in the database minus those the metrics counted, by end_reason, where they
   * differ: every way a lease ends is counted once, so this is empty.
   */
  readonly uncounted: Record<string, number>;
  /** token_lease_leases_ended_total summed over every process, by "reason/by". */
  readonly endedByMechanism: Record<string, number>;
  readonly sweepRuns: Record<string, number>;
  readonly midRunChecks: number;
  readonly violations: readonly Violation[];
  /** Log lines at error or fatal from the service processes. */
  readonly processErrors: ReadonlyArray<Record<string, unknown>>;
  readonly exits: ReadonlyArray<{ role: string; code: number | null; signal: NodeJS.Signals | null }>;
}

const perPool = (options: StressOptions) => Math.max(1, Math.floor(options.poolSize / options.pools));

/** `default` and the named pools the run leases from, each of `perPool` tokens. */
async function makePools(apiUrl: string, options: StressOptions, adminApiKey: string): Promise<string[]> {
  const names = ['default'];
  for (let i = 2; i <= options.pools; i += 1) {
    const name = `stress-${i}`;
    const res = await fetch(`${apiUrl}/api/admin/pools`, {
      method: 'POST',
      headers: { authorization: `Bearer ${adminApiKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ name, size: perPool(options) }),
    });
    if (res.status !== 201) throw new Error(`pool ${name} was not made: ${res.status} ${await res.text()}`);
    names.push(name);
  }
  return names;
}

export async function runStress(
  options: StressOptions,
  progress: (line: string) => void = () => undefined,
  signal?: AbortSignal,
): Promise<StressReport> {
  const started = Date.now();
  const adminApiKey = randomBytes(16).toString('hex');
  let cluster: Cluster | undefined;
  try {
    progress(`starting ${options.apiProcesses} api and ${options.workerProcesses} worker processes`);
    cluster = await startCluster(
      {
        databaseName: options.databaseName,
        redisUrl: options.redisUrl,
        redisPrefix: options.redisPrefix,
        apiProcesses: options.apiProcesses,
        workerProcesses: options.workerProcesses,
        env: {
          POOL_SIZE: String(perPool(options)),
          LEASE_TTL_MS: String(options.ttlMs),
          SWEEP_INTERVAL_MS: String(options.sweepIntervalMs),
          POOL_FULL_POLICY: options.policy,
          DATABASE_POOL_MAX: String(options.databasePoolMax),
          ADMIN_API_KEY: adminApiKey,
        },
      },
    );
    const db = cluster.databaseUrl;
    const pools = await makePools(cluster.apis[0]?.url ?? '', options, adminApiKey);

    const midRun = checkWhileRunning(db, options.checkEveryMs);
    const loadStarted = Date.now();
    const load = startLoad({
      baseUrls: cluster.apis.map((n) => n.url),
      clients: options.clients,
      usersPerClient: options.usersPerClient,
      activations: options.activations,
      durationMs: options.durationMs,
      waitShare: options.waitRatio,
      waitSeconds: options.maxWaitSeconds,
      // The clients send their next request as soon as the last is answered.
      thinkMs: 0,
      deadlineMs: 30_000,
      clearEveryMs: options.clearEveryMs,
      adminApiKey,
      pools,
      seed: options.seed,
      signal,
    });
    const { counts } = load;
    const ticker = setInterval(() => progress(describeProgress(counts, Date.now() - loadStarted)), 5_000);
    await load.finished.finally(() => clearInterval(ticker));
    const loadMs = Date.now() - loadStarted;
    const midRunResult = await midRun.stop();
    progress(`load done: ${describeProgress(counts, loadMs)}`);

    const drainStarted = Date.now();
    await drain(db, options.sweepIntervalMs + options.drainMarginMs);
    const drainMs = Date.now() - drainStarted;
    progress(`drained in ${drainMs} ms; checking invariants`);

    const violations = distinct([
      ...midRunResult.violations,
      ...(await checkInvariants(db, {
        drained: { sweepIntervalMs: options.sweepIntervalMs, marginMs: options.drainMarginMs },
        observations: load.observations,
        everyAnswerSeen: everyActivationAnswered(load.answers),
      })),
    ]);
    const usagesByEndReason = await countUsagesByEndReason(db);
    const nodes = [...cluster.apis, ...cluster.workers];
    const metrics = await scrapeMetrics(nodes.map((n) => n.url));
    const exits = await cluster.stop();
    return {
      options,
      loadMs,
      drainMs,
      totalMs: Date.now() - started,
      counts,
      usagesByEndReason,
      uncounted: uncounted(usagesByEndReason, metrics.ended),
      endedByMechanism: metrics.ended,
      sweepRuns: metrics.sweeps,
      midRunChecks: midRunResult.checks,
      violations,
      processErrors: nodes.flatMap((n) =>
        n.logs.filter((l) => l.level === 'error' || l.level === 'fatal' || l.level === 'raw').map((l) => ({ role: n.role, ...l })),
      ),
      exits,
    };
  } finally {
    if (cluster !== undefined) {
      await cluster.stop();
      await cluster.destroy();
    }
  }
}

/** A violation seen while running and again at the end is reported once. */
function distinct(violations: readonly Violation[]): Violation[] {
  const seen = new Set<string>();
  return violations.filter((v) => {
    const key = JSON.stringify(v);
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

function describeProgress(counts: LoadCounts, elapsedMs: number): string {
  const seconds = Math.max(1, elapsedMs) / 1000;
  return `${Math.round(seconds)} s: ${counts.created} activations, ${counts.requests} requests (${Math.round(counts.requests / seconds)}/s)`;
}

/** Checks invariants 1-3 every `everyMs` while the load runs (each in one snapshot). */
function checkWhileRunning(databaseUrl: string, everyMs: number) {
  const violations: Violation[] = [];
  let checks = 0;
  const stopped = new AbortController();
  // Never rejects on its own (a run that failed may not stop it): a failed check ends the loop
  // and is thrown by stop().
  const loop = (async (): Promise<Error | undefined> => {
    if (everyMs <= 0) return undefined;
    for (;;) {
      await delay(everyMs, undefined, { signal: stopped.signal }).catch(() => undefined);
      if (stopped.signal.aborted) return undefined;
      try {
        violations.push(...(await checkInvariants(databaseUrl)));
      } catch (error) {
        return error instanceof Error ? error : new Error(String(error));
      }
      checks += 1;
    }
  })();
  return {
    async stop() {
      stopped.abort();
      const failure = await loop;
      if (failure !== undefined) throw failure;
      return { violations, checks };
    },
  };
}

/**
 * Waits until every open lease has been ended, or until the last one's expiry plus `graceMs`
 * has passed (then invariant 4 reports what is left).
 */
async function drain(databaseUrl: string, graceMs: number): Promise<void> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    const { rows } = await client.query<{ deadline_ms: string | null }>(
      `SELECT extract(epoch FROM max(expires_at) - now()) * 1000 AS deadline_ms
       FROM all_usages WHERE ended_at IS NULL`,
    );
    const deadline = Date.now() + Math.max(0, Number(rows[0]?.deadline_ms ?? 0)) + graceMs;
    for (;;) {
      const open = await client.query('SELECT 1 FROM all_usages WHERE ended_at IS NULL LIMIT 1');
      if (open.rows.length === 0 || Date.now() > deadline) return;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  } finally {
    await client.end();
  }
}

async function countUsagesByEndReason(databaseUrl: string): Promise<Record<string, number>> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    const { rows } = await client.query<{ reason: string; n: number }>(
      `SELECT coalesce(end_reason, 'open') AS reason, count(*)::int AS n FROM all_usages GROUP BY 1 ORDER BY 1`,
    );
    return Object.fromEntries(rows.map((r) => [r.reason, r.n]));
  } finally {
    await client.end();
  }
}

function uncounted(usagesByEndReason: Record<string, number>, ended: Record<string, number>): Record<string, number> {
  const counted: Record<string, number> = {};
  for (const [key, n] of Object.entries(ended)) {
    const reason = key.split('/')[0] ?? key;
    counted[reason] = (counted[reason] ?? 0) + n;
  }
  const differences: Record<string, number> = {};
  for (const reason of new Set([...Object.keys(counted), ...Object.keys(usagesByEndReason)])) {
    if (reason === 'open') continue;
    const difference = (usagesByEndReason[reason] ?? 0) - (counted[reason] ?? 0);
    if (difference !== 0) differences[reason] = difference;
  }
  return differences;
}

async function scrapeMetrics(urls: readonly string[]) {
  const ended: Record<string, number> = {};
  const sweeps: Record<string, number> = {};
  for (const url of urls) {
    const text = await (await fetch(`${url}/metrics`)).text();
    for (const line of text.split('\n')) {
      const endedMatch = /^token_lease_leases_ended_total\{reason="(\w+)",by="(\w+)"\} (\d+)/.exec(line);
      if (endedMatch !== null) {
        const key = `${endedMatch[1]}/${endedMatch[2]}`;
        ended[key] = (ended[key] ?? 0) + Number(endedMatch[3]);
      }
      const sweepMatch = /^token_lease_sweep_runs_total\{result="(\w+)"\} (\d+)/.exec(line);
      if (sweepMatch !== null) {
        const key = sweepMatch[1] ?? '';
        sweeps[key] = (sweeps[key] ?? 0) + Number(sweepMatch[2]);
      }
    }
  }
  return { ended, sweeps };
}

/** Whether a run found nothing wrong: no violation, no 5xx or other unexpected answer, clean exits. */
export function stressPassed(report: StressReport): boolean {
  return (
    report.violations.length === 0 &&
    Object.keys(report.counts.unexpected).length === 0 &&
    Object.keys(report.counts.lost).length === 0 &&
    report.processErrors.length === 0 &&
    Object.keys(report.uncounted).length === 0 &&
    report.exits.every((e) => e.code === 0)
  );
}

/** The report as the CLI prints it: counts first, then every violation. */
export function formatReport(report: StressReport): string {
  const { counts, options } = report;
  const sum = (record: Record<string, number>) => Object.values(record).reduce((a, b) => a + b, 0);
  const list = (record: Record<string, number>) =>
    Object.keys(record).length === 0 ? 'none' : Object.entries(record).map(([k, v]) => `${k} ${v}`).join(', ');
  const conflicts = counts.exhausted + sum(counts.releaseRefused) + sum(counts.renewRefused);
  const lines = [
    `stress: ${options.apiProcesses} api + ${options.workerProcesses} worker processes, ${options.clients} clients x ${options.usersPerClient} users, ${options.pools} pools of ${perPool(options)}, TTL ${options.ttlMs} ms, sweep every ${options.sweepIntervalMs} ms, policy ${options.policy}, seed ${options.seed}`,
    `time: load ${(report.loadMs / 1000).toFixed(1)} s, drain ${(report.drainMs / 1000).toFixed(1)} s, total ${(report.totalMs / 1000).toFixed(1)} s`,
    `requests: ${counts.requests} (${Math.round(counts.requests / Math.max(0.001, report.loadMs / 1000))}/s), no answer: ${list(counts.lost)}`,
    `activations: ${counts.created} granted (201), ${counts.existing} existing (200), ${counts.exhausted} pool_exhausted (409)`,
    `waits: ${counts.waits.sent} sent, ${counts.waits.served} served, ${counts.waits.timedOut} timed out, ${counts.waits.tooMany} too_many_waiters`,
    `releases: ${counts.releases} (200); refused: ${list(counts.releaseRefused)}`,
    `renewals: ${counts.renewals} (200); refused: ${list(counts.renewRefused)}`,
    `validations: ${counts.valid} valid; invalid: ${list(counts.invalid)}`,
    `reads: ${counts.reads} (200)`,
    `clears: ${counts.clears}, ending ${counts.clearedTokens} leases`,
    `409s: ${conflicts}`,
    `usages by end_reason: ${list(report.usagesByEndReason)}`,
    `expiries: ${report.usagesByEndReason.expired ?? 0} (lazy, by an activation: ${report.endedByMechanism['expired/activation'] ?? 0}); evictions: ${report.usagesByEndReason.evicted ?? 0}`,
    `ended usages the metrics did not count: ${list(report.uncounted)}`,
    `leases ended by mechanism (reason/by): ${list(report.endedByMechanism)}`,
    `sweep runs: ${list(report.sweepRuns)}`,
    `unexpected answers: ${list(counts.unexpected)}`,
    `process errors logged: ${report.processErrors.length}; exits: ${report.exits.map((e) => `${e.role} ${e.code ?? e.signal}`).join(', ')}`,
    `invariant checks while running: ${report.midRunChecks}`,
    `violations: ${report.violations.length}`,
  ];
  for (const line of report.processErrors.slice(0, 5)) lines.push(`  process error: ${JSON.stringify(line)}`);
  if (report.violations.length > 0) lines.push(describeViolations(report.violations));
  return lines.join('\n');
}
