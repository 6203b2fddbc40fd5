import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import {
  BENCH_ADMIN_KEY,
  BENCH_JWT_SECRET,
  postgresCpuMeter,
  processCpuMeter,
  root,
  rssOf,
  signJwtUsers,
  startBenchService,
  vacuum,
  withDatabaseClient,
  writeUsersFile,
  type CpuMeter,
  type JwtUser,
} from './env.js';
import { createMigratedDatabase, dropDatabases } from '../test/harness/databases.js';
import type { ServiceProcess } from '../test/harness/processes.js';
import { deleteRedisKeys } from '../test/redis.js';
import { runLoad, type LoadGenerator, type LoadKind } from './load.js';
import { EXPIRY_MAX_LATENESS_MS, type Group, type ScenarioKey } from './scenarios.js';
import { measureEventLatency, summariseLatency } from './events.js';
import { measureWebhooks } from './webhooks.js';
import { runSqlCycle } from './sqlCycle.js';
import { percentile } from './stats.js';

// Runs the selected groups, round after round (so that a baseline and the scenario compared with
// it are measured minutes, not hours, apart, and a noisy moment hits both), and returns every
// measurement. Each group prepares the state it needs before each of its runs.

export interface BenchOptions {
  readonly groups: readonly Group[];
  readonly rounds: number;
  readonly warmupSec: number;
  readonly durationSec: number;
  readonly connections: number;
  readonly largePool: number;
  readonly expiryLeases: number;
  readonly expiryTtlMs: number;
  /** The events group: streams opened, and activations measured per round. */
  readonly subscribers: number;
  readonly eventActivations: number;
  readonly entry: 'dist' | 'src';
  /** What generates the HTTP load (see bench/load.ts). */
  readonly load: LoadGenerator;
  /** Any database on the PostgreSQL server to use. */
  readonly databaseServerUrl: string;
  readonly redisUrl: string;
  /** Every database the run creates starts with this, and is dropped at the end. */
  readonly databasePrefix: string;
  /** Every Redis key the run's services write starts with this, and is deleted at the end. */
  readonly redisPrefix: string;
  /** Service logs and captured bodies go here. */
  readonly workDir: string;
  readonly progress: (line: string) => void;
}

export interface Measurement {
  readonly key: ScenarioKey;
  readonly round: number;
  /** Per second (cycles or requests), or ms for expiry, or bytes for rss. */
  readonly value: number;
  readonly p50Ms?: number;
  readonly p99Ms?: number;
  readonly maxMs?: number;
  readonly errors: number;
  /** CPU time the process under test spent per operation (Linux only). */
  readonly cpuMsPerOp?: number;
  /** CPU time the PostgreSQL server spent per operation (Linux, server on this machine only). */
  readonly dbCpuMsPerOp?: number;
  readonly samples?: number;
  readonly note?: string;
  /**
   * The baseline's figure this run is compared with: the mean of the baseline's runs just before
   * and just after it in the same round (see runChain). Absent: the round's first baseline run.
   */
  readonly versus?: number;
}

/** The service's pool settings, which the raw SQL baseline copies. */
export const SERVICE_POOL_MAX = 10;
const MAIN_POOL = 100;
// No release job may fall due during the run: thousands of them firing at once would load the
// machine in the middle of another scenario. Expiry is measured on a service of its own.
const LONG_TTL_MS = 3_600_000;
const HELD_FOR_READS = 50;
/** RATE_LIMIT_PER_MINUTE for the cycle with limits on: the most it accepts, never reached. */
const UNREACHED_LIMIT = 1_000_000_000;
/**
 * AUTH_MODE=jwt: users signed before the run. Activations take them in turn, so a user comes back
 * only after this many others, long after its last lease was released.
 */
const JWT_USERS = 1_000;
/** Activations per second in the events group: each one's event goes to every subscriber. */
const EVENT_RATE = 20;
/** Seconds of unmeasured cycles a service process gets as it starts (see warmUp). */
const SERVICE_WARMUP_SEC = 2;

interface Target {
  readonly url: string;
  /** The process that serves it, for its CPU time. */
  readonly pid?: number | undefined;
  /** The service's database; absent for the bare HTTP servers, which use none. */
  readonly databaseUrl?: string;
  /** AUTH_MODE=jwt: the users requests act as, each with its JWT; absent: no credentials. */
  readonly auth?: JwtUsers | undefined;
}

interface JwtUsers {
  readonly users: readonly JwtUser[];
  /** Every user, for the load generators (LoadSpec.usersFile). */
  readonly usersFile: string;
  /** The users who read the token list: half of them hold the leases held for reads. */
  readonly readersFile: string;
}

export async function runBench(options: BenchOptions): Promise<Measurement[]> {
  const measurements: Measurement[] = [];
  const services: ServiceProcess[] = [];
  const say = options.progress;
  const postgresCpu = postgresCpuMeter(options.databaseServerUrl);

  /** Records one run of `ops` operations: its rate, latencies, and CPU per operation; returns the run's index. */
  function record(
    key: ScenarioKey,
    round: number,
    run: {
      ops: number;
      seconds: number;
      latencyMs: { p50: number; p99: number; max: number };
      errors: number;
      cpuSeconds: number | undefined;
      dbCpuSeconds: number | undefined;
    },
  ): number {
    const perOp = (seconds: number | undefined) =>
      seconds !== undefined && run.ops > 0 ? (seconds * 1000) / run.ops : undefined;
    const value = run.ops / run.seconds;
    measurements.push({
      key,
      round,
      value,
      p50Ms: run.latencyMs.p50,
      p99Ms: run.latencyMs.p99,
      maxMs: run.latencyMs.max,
      errors: run.errors,
      cpuMsPerOp: perOp(run.cpuSeconds),
      dbCpuMsPerOp: perOp(run.dbCpuSeconds),
    });
    return measurements.length - 1;
  }

  /** Compares run `index` with the mean of `baselines` (indices of the baseline's runs around it). */
  function compare(index: number, baselines: readonly number[]): void {
    const run = measurements[index];
    const figures = baselines.map((i) => measurements[i]?.value ?? 0);
    if (run === undefined || figures.length === 0) return;
    measurements[index] = { ...run, versus: figures.reduce((sum, x) => sum + x, 0) / figures.length };
  }

  mkdirSync(options.workDir, { recursive: true });

  async function startTarget(
    name: string,
    env: Record<string, string>,
    setup?: (databaseUrl: string) => Promise<void>,
  ): Promise<Target & { databaseUrl: string; service: ServiceProcess }> {
    const databaseUrl = await createMigratedDatabase(`${options.databasePrefix}${name}`, options.databaseServerUrl);
    await setup?.(databaseUrl);
    const service = await startBenchService({
      entry: options.entry,
      logFile: join(options.workDir, `service-${name}.log`),
      env: {
        DATABASE_URL: databaseUrl,
        DATABASE_POOL_MAX: String(SERVICE_POOL_MAX),
        REDIS_URL: options.redisUrl,
        REDIS_PREFIX: `${options.redisPrefix}-${name}`,
        ROLE: 'all',
        ...env,
      },
    });
    services.push(service);
    return { databaseUrl, url: await service.url(), pid: service.pid, service };
  }

  /**
   * A new process runs its first seconds of load on code V8 has not optimised yet: its first
   * cycle run cost a third more CPU per cycle than the next ones. One unmeasured run of cycles
   * as it starts (then a clear) keeps that out of round 1; the per-run warm-up is too short.
   */
  async function warmUp(target: Target): Promise<void> {
    if (options.warmupSec <= 0) return;
    const cycles = {
      kind: 'cycle',
      url: target.url,
      connections: options.connections,
      warmupSec: 0,
      durationSec: SERVICE_WARMUP_SEC,
      expect: [200, 201],
      usersFile: target.auth?.usersFile,
    } as const;
    await runLoad(cycles, options.load);
    await clear(target.url);
  }

  async function startWarmTarget(...args: Parameters<typeof startTarget>) {
    const target = await startTarget(...args);
    await warmUp(target);
    return target;
  }

  const lazily = <T>(make: () => Promise<T>) => {
    let made: Promise<T> | undefined;
    return () => (made ??= make());
  };
  const main = lazily(() => startWarmTarget('main', { POOL_SIZE: String(MAIN_POOL), LEASE_TTL_MS: String(LONG_TTL_MS) }));
  // Every request counted in Redis, against a limit no caller reaches.
  const limited = lazily(() =>
    startWarmTarget('limited', {
      POOL_SIZE: String(MAIN_POOL),
      LEASE_TTL_MS: String(LONG_TTL_MS),
      RATE_LIMIT_PER_MINUTE: String(UNREACHED_LIMIT),
      ADMIN_RATE_LIMIT_PER_MINUTE: String(UNREACHED_LIMIT),
    }),
  );
  const twoProcesses = lazily(() =>
    startWarmTarget('two', { POOL_SIZE: String(MAIN_POOL), LEASE_TTL_MS: String(LONG_TTL_MS), API_PROCESSES: '2' }),
  );
  const large = lazily(() =>
    startWarmTarget('large', { POOL_SIZE: String(options.largePool), LEASE_TTL_MS: String(LONG_TTL_MS) }, async (url) => {
      say(`seeding ${options.largePool} tokens`);
      await withDatabaseClient(url, (client) =>
        client.query('INSERT INTO tokens (pool_id) SELECT 1 FROM generate_series(1, $1::int)', [
          options.largePool,
        ]),
      );
    }),
  );
  /** The jwt group: the cycle and the list again as users with JWTs, on a service of its own. */
  const has = (group: Group) => options.groups.includes(group);
  const withJwt = has('jwt');
  const jwt = lazily(async () => {
    const users = await signJwtUsers(JWT_USERS);
    const auth: JwtUsers = {
      users,
      usersFile: writeUsersFile(join(options.workDir, 'jwt-users.txt'), users),
      readersFile: writeUsersFile(join(options.workDir, 'jwt-readers.txt'), users.slice(0, 2 * HELD_FOR_READS)),
    };
    const env = { POOL_SIZE: String(MAIN_POOL), LEASE_TTL_MS: String(LONG_TTL_MS), AUTH_MODE: 'jwt', JWT_SECRET: BENCH_JWT_SECRET };
    const target = { ...(await startTarget('jwt', env)), auth };
    await warmUp(target);
    return target;
  });
  // Two API processes behind one port (node:cluster hands connections out in turn), so the
  // streams are spread over both and every event crosses from the process that made it.
  const events = lazily(() =>
    startTarget('events', {
      POOL_SIZE: String(MAIN_POOL),
      LEASE_TTL_MS: String(LONG_TTL_MS),
      API_PROCESSES: '2',
      MAX_STREAMS: String(options.subscribers),
    }),
  );
  // Webhooks to a receiver on 127.0.0.1, which only WEBHOOK_ALLOW_PRIVATE=true allows.
  const webhooks = lazily(() =>
    startTarget('webhooks', { POOL_SIZE: String(MAIN_POOL), LEASE_TTL_MS: String(LONG_TTL_MS), WEBHOOK_ALLOW_PRIVATE: 'true' }),
  );
  const expiry = lazily(() =>
    startTarget('expiry', { POOL_SIZE: String(options.expiryLeases), LEASE_TTL_MS: String(options.expiryTtlMs) }),
  );

  /**
   * Loads `target` after a warm-up and records the figure, per request or per cycle; returns the
   * run's index. With AUTH_MODE=jwt the requests act as the users of `usersFile`.
   */
  async function measure(
    key: ScenarioKey,
    round: number,
    target: Target,
    kind: LoadKind,
    expect: number[],
    usersFile = target.auth?.usersFile,
  ) {
    const serviceCpu = target.pid === undefined ? undefined : processCpuMeter(target.pid);
    const serverCpu = target.databaseUrl === undefined ? undefined : postgresCpu;
    let cpuSince: ReturnType<CpuMeter> | undefined;
    let dbCpuSince: ReturnType<CpuMeter> | undefined;
    const result = await runLoad(
      {
        ...kind,
        url: target.url,
        connections: options.connections,
        warmupSec: options.warmupSec,
        durationSec: options.durationSec,
        expect,
        usersFile,
      },
      options.load,
      () => {
        cpuSince = serviceCpu?.();
        dbCpuSince = serverCpu?.();
      },
    );
    const per = kind.kind === 'cycle' ? 'cycles' : 'requests';
    const index = record(key, round, {
      ops: per === 'cycles' ? result.cycles : result.requests,
      seconds: result.seconds,
      latencyMs: result.latencyMs,
      errors: result.errors,
      cpuSeconds: cpuSince?.(),
      dbCpuSeconds: dbCpuSince?.(),
    });
    const { p99 } = result.latencyMs;
    say(`  ${key}: ${Math.round(measurements[index]?.value ?? 0)} ${per}/s, p99 ${p99} ms, ${result.errors} errors`);
    return index;
  }

  /**
   * Empties the pool of `target` and vacuums it, with PostgreSQL's statistics taken while as many
   * leases are open as the cycle keeps open (one per connection), as autovacuum would take them
   * under this load. Taken on an empty pool, they tell the planner that no usage is open, and it
   * then reads every open lease to find one (every partial index on open usages looks equally
   * empty, so it may pick any), and that costs a cycle more the longer its leases stay open.
   */
  async function freshPool(target: Target & { databaseUrl: string }) {
    await clear(target.url);
    await hold(target, options.connections);
    await vacuum(target.databaseUrl);
    await clear(target.url);
  }

  async function sqlCycle(key: ScenarioKey, round: number, target: Target & { databaseUrl: string }) {
    await freshPool(target);
    const result = await runSqlCycle({
      databaseUrl: target.databaseUrl,
      poolMax: SERVICE_POOL_MAX,
      concurrency: options.connections,
      warmupSec: options.warmupSec,
      durationSec: options.durationSec,
      leaseTtlMs: LONG_TTL_MS,
      serverCpu: postgresCpu,
    });
    const index = record(key, round, {
      ops: result.cycles,
      seconds: result.seconds,
      latencyMs: result.latencyMs,
      errors: result.errors,
      cpuSeconds: result.cpuMs / 1000,
      dbCpuSeconds: result.serverCpuMs === undefined ? undefined : result.serverCpuMs / 1000,
    });
    const { p99 } = result.latencyMs;
    say(`  ${key}: ${Math.round(result.cycles / result.seconds)} cycles/s, p99 ${p99.toFixed(1)} ms, ${result.errors} errors`);
    return index;
  }

  async function httpCycle(key: ScenarioKey, round: number, target: Target & { databaseUrl: string }) {
    await freshPool(target);
    const index = await measure(key, round, target, { kind: 'cycle' }, [200, 201]);
    await clear(target.url);
    return index;
  }

  /** The groups whose HTTP cycles are compared with the cycle on `main`, measured in one chain. */
  const CHAINED: readonly Group[] = ['cycle', 'jwt', 'limits', 'processes', 'large'];

  /**
   * The cycle group's runs and every run compared with them, as one chain a round: each compared
   * run between two runs of its baseline, and the chain symmetric about its middle:
   *
   *   raw SQL, HTTP, jwt, HTTP, limits, HTTP, API_PROCESSES=2, HTTP, pool of 1M, HTTP, raw SQL
   *
   * (with the groups selected). A run is compared with the mean of its baseline's runs on either
   * side: the HTTP runs with the two raw SQL runs, the others with the HTTP runs around them. The
   * machine's speed drifts for minutes at a time; run one after the other in a fixed order, a run
   * and the baseline it was compared with met different phases of it.
   */
  async function runChain(round: number): Promise<void> {
    const m = await main();
    const between: Array<() => Promise<number>> = [];
    // Each compared service served nothing since its last round, while the main one's last cycles
    // ran seconds ago: it gets as recent a load, unmeasured, before its run.
    const recentlyWarmed = async (key: ScenarioKey, target: Target & { databaseUrl: string }) => {
      await warmUp(target);
      return httpCycle(key, round, target);
    };
    if (withJwt) between.push(async () => recentlyWarmed('http-cycle-jwt', await jwt()));
    if (has('limits')) between.push(async () => recentlyWarmed('http-cycle-limited', await limited()));
    // The supervisor's pid would count its own CPU only: per-operation CPU is left out.
    if (has('processes')) between.push(async () => recentlyWarmed('http-cycle-2', { ...(await twoProcesses()), pid: undefined }));
    if (has('large')) between.push(async () => recentlyWarmed('http-cycle-large', await large()));
    const sql = has('cycle') ? [await sqlCycle('sql-cycle', round, m)] : [];
    const http = [await httpCycle('http-cycle', round, m)];
    for (const run of between) {
      const index = await run();
      http.push(await httpCycle('http-cycle', round, m));
      compare(index, http.slice(-2));
    }
    if (has('cycle')) {
      sql.push(await sqlCycle('sql-cycle', round, m));
      for (const index of http) compare(index, sql);
    }
    if (has('large')) await sqlCycle('sql-cycle-large', round, await large());
  }

  // The chained groups run as one chain, in the place of the first of them; the others' entries
  // are empty.
  const firstChained = options.groups.find((g) => CHAINED.includes(g));
  const chained = (group: Group) => (round: number) => (group === firstChained ? runChain(round) : Promise.resolve());
  const groups: Record<Group, (round: number) => Promise<void>> = {
    cycle: chained('cycle'),
    limits: chained('limits'),
    processes: chained('processes'),
    async ceilings(round) {
      const m = await main();
      for (const kind of ['node-cycle', 'express-cycle'] as const) {
        const bare = await startBareServer(kind, [m.databaseUrl, String(SERVICE_POOL_MAX), String(LONG_TTL_MS)]);
        try {
          // The load stops in the middle of cycles, so each run leaves up to one lease per
          // connection; the service's clear ends them.
          await freshPool(m);
          await measure(kind, round, { ...bare, databaseUrl: m.databaseUrl }, { kind: 'cycle' }, [200, 201]);
        } finally {
          await bare.stop();
        }
      }
      await clear(m.url);
    },
    large: chained('large'),
    async exhausted(round) {
      const m = await main();
      await clear(m.url);
      await hold(m, MAIN_POOL);
      await vacuum(m.databaseUrl);
      await measure('exhausted', round, m, { kind: 'activate' }, [409]);
      await clear(m.url);
    },
    async list(round) {
      const m = await main();
      await clear(m.url);
      await hold(m, HELD_FOR_READS);
      await vacuum(m.databaseUrl);
      const bodyFile = join(options.workDir, 'tokens.json');
      writeFileSync(bodyFile, Buffer.from(await (await fetch(`${m.url}/api/tokens`)).arrayBuffer()));
      const bare = async (kind: 'node' | 'express') => {
        const server = await startBareServer(kind, [bodyFile]);
        try {
          return await measure(kind === 'node' ? 'bare-node' : 'bare-express', round, server, { kind: 'get', path: '/api/tokens' }, [200]);
        } finally {
          await server.stop();
        }
      };
      const list = () => measure('list', round, m, { kind: 'get', path: '/api/tokens' }, [200]);
      // Express, the list, (the list with JWTs, the list,) Express: as the cycle's chain.
      await bare('node');
      const express = [await bare('express')];
      const lists = [await list()];
      if (withJwt) {
        // The leases held on main stay held meanwhile.
        const index = await heldList('list-jwt', round, await jwt());
        lists.push(await list());
        compare(index, lists);
      }
      express.push(await bare('express'));
      for (const index of lists) compare(index, express);
      await clear(m.url);
    },
    async jwt(round) {
      await chained('jwt')(round);
      // The list with JWTs between two runs of the list: in the list group when it runs, else here.
      if (!has('list')) {
        const lists = [await heldList('list', round, await main())];
        const index = await heldList('list-jwt', round, await jwt());
        lists.push(await heldList('list', round, await main()));
        compare(index, lists);
      }
    },
    async reads(round) {
      const m = await main();
      await clear(m.url);
      const held = await hold(m, HELD_FOR_READS);
      await vacuum(m.databaseUrl);
      const paths = held.map((lease) => `/api/tokens/${lease.tokenId}`);
      await measure('token', round, m, { kind: 'get-any', paths }, [200]);
      await measure('validate', round, m, { kind: 'validate', leases: held }, [200]);
      await clear(m.url);
    },
    async events(round) {
      const e = await events();
      await clear(e.url);
      const { samples, errors } = await measureEventLatency({
        url: e.url,
        subscribers: options.subscribers,
        activations: options.eventActivations,
        rate: EVENT_RATE,
      });
      const { p50, p99, max } = summariseLatency(samples);
      say(`  event-latency: ${samples.length} deliveries, p50 ${p50.toFixed(1)} ms, p99 ${p99.toFixed(1)} ms, max ${max.toFixed(0)} ms`);
      measurements.push({ key: 'event-latency', round, value: p99, p50Ms: p50, p99Ms: p99, maxMs: max, errors, samples: samples.length });
      await clear(e.url);
    },
    async webhooks(round) {
      const w = await webhooks();
      await clear(w.url);
      const figures = await measureWebhooks({
        url: w.url,
        databaseUrl: w.databaseUrl,
        activations: options.eventActivations,
        rate: EVENT_RATE,
        durationSec: options.durationSec,
        connections: options.connections,
        load: options.load,
      });
      const { lagMs } = figures;
      say(`  webhook-lag: ${lagMs.samples} deliveries, p50 ${lagMs.p50.toFixed(0)} ms, p99 ${lagMs.p99.toFixed(0)} ms, max ${lagMs.max.toFixed(0)} ms`);
      say(`  webhook-deliveries: ${figures.deliveries} in a burst, ${Math.round(figures.perSecond)} deliveries/s, ${figures.errors} errors`);
      measurements.push({
        key: 'webhook-lag',
        round,
        value: lagMs.p99,
        p50Ms: lagMs.p50,
        p99Ms: lagMs.p99,
        maxMs: lagMs.max,
        errors: figures.errors,
        samples: lagMs.samples,
      });
      measurements.push({ key: 'webhook-deliveries', round, value: figures.perSecond, errors: 0, samples: figures.deliveries });
      await clear(w.url);
    },
    async expiry(round) {
      const e = await expiry();
      await clear(e.url);
      await vacuum(e.databaseUrl);
      measurements.push(await measureExpiry(e, round));
    },
  };

  /** GET /api/tokens with HELD_FOR_READS leases held, as the list group measures it. */
  async function heldList(key: ScenarioKey, round: number, target: Target & { databaseUrl: string }) {
    await clear(target.url);
    await hold(target, HELD_FOR_READS);
    await vacuum(target.databaseUrl);
    const index = await measure(key, round, target, { kind: 'get', path: '/api/tokens' }, [200], target.auth?.readersFile);
    await clear(target.url);
    return index;
  }

  /**
   * Grants `count` leases spread evenly over one TTL (so their expiries are staggered the same
   * way), waits until all have ended, and returns each one's lateness (ended_at - expires_at, by
   * the database clock) and the activations that failed.
   */
  async function expiryBurst(target: Target & { databaseUrl: string }, count: number) {
    const ttlMs = options.expiryTtlMs;
    const since = await withDatabaseClient(
      target.databaseUrl,
      async (c) => (await c.query<{ now: Date }>('SELECT now()')).rows[0]?.now,
    );
    const created = await runLoad({
      kind: 'activate',
      url: target.url,
      connections: Math.min(options.connections, 20),
      warmupSec: 0,
      durationSec: 60,
      amount: count,
      overallRate: Math.max(1, Math.round(count / (ttlMs / 1000))),
      expect: [201],
    }, options.load);
    const deadline = Date.now() + ttlMs + 15_000;
    const lateness = await withDatabaseClient(target.databaseUrl, async (client) => {
      for (;;) {
        const { rows } = await client.query<{ open: number }>(
          'SELECT count(*)::int AS open FROM all_usages WHERE started_at >= $1 AND ended_at IS NULL',
          [since],
        );
        if ((rows[0]?.open ?? 0) === 0 || Date.now() > deadline) break;
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
      // A lease still open at the deadline counts with the lateness it has so far.
      const { rows } = await client.query<{ ms: number }>(
        `SELECT (extract(epoch FROM coalesce(ended_at, now()) - expires_at) * 1000)::float8 AS ms
         FROM all_usages WHERE started_at >= $1 ORDER BY 1`,
        [since],
      );
      return rows.map((r) => r.ms);
    });
    return { lateness, failed: created.errors + (count - lateness.length) };
  }

  async function measureExpiry(target: Target & { databaseUrl: string }, round: number): Promise<Measurement> {
    // Warm-up: a tenth of the burst, so that the first use of the worker's connections and
    // code (a one-off after the process starts) is not counted as lateness.
    await expiryBurst(target, Math.max(10, Math.round(options.expiryLeases / 10)));
    const { lateness, failed } = await expiryBurst(target, options.expiryLeases);
    const p50 = percentile(lateness, 0.5);
    const p99 = percentile(lateness, 0.99);
    const max = lateness.at(-1) ?? 0;
    say(`  expiry: ${lateness.length} leases, p50 ${p50.toFixed(0)} ms, p99 ${p99.toFixed(0)} ms, max ${max.toFixed(0)} ms`);
    return {
      key: 'expiry',
      round,
      value: p99,
      p50Ms: p50,
      p99Ms: p99,
      maxMs: max,
      errors: failed,
      samples: lateness.length,
      note: max > EXPIRY_MAX_LATENESS_MS ? 'a lease ended more than 1 s late' : undefined,
    };
  }

  try {
    // Every round of the groups measured against a baseline first, then every round of those
    // that time one thing on a service of their own (expiry, events, webhooks). Services stay up
    // to the end, and theirs (four processes, with their timers and workers) took CPU from the
    // compared groups' later rounds: the cycle cost a third more service CPU in rounds 2 and 3
    // than in round 1 with them up, and the same in every round without them.
    const timed = (group: Group) => group === 'expiry' || group === 'events' || group === 'webhooks';
    for (const phase of [options.groups.filter((g) => !timed(g)), options.groups.filter(timed)]) {
      for (let round = 1; round <= options.rounds; round += 1) {
        for (const group of phase) {
          say(`round ${round}/${options.rounds}: ${group}`);
          await groups[group](round);
        }
      }
    }
    const m = options.groups.some((g) => g !== 'large' && !timed(g)) ? await main() : undefined;
    if (m !== undefined) {
      measurements.push({ key: 'rss', round: options.rounds, value: rssOf(m.service.pid), errors: 0 });
    }
    return measurements;
  } finally {
    await Promise.allSettled(services.map((s) => s.stop()));
    await dropDatabases(options.databasePrefix, options.databaseServerUrl);
    await deleteRedisKeys(options.redisUrl, `${options.redisPrefix}-*`);
  }
}

/** Ends every lease (the admin clear), so each run starts from a free pool. */
async function clear(url: string): Promise<void> {
  const res = await fetch(`${url}/api/tokens/clear`, {
    method: 'POST',
    headers: { authorization: `Bearer ${BENCH_ADMIN_KEY}` },
  });
  if (!res.ok) throw new Error(`clear answered ${res.status}`);
}

/** Leases `count` tokens to new users, or to the first of `target.auth`'s users; returns the leases. */
async function hold(target: Pick<Target, 'url' | 'auth'>, count: number) {
  const leases: Array<{ tokenId: string; userId: string; fence: number }> = [];
  for (let i = 0; i < count; i += 1) {
    const user = target.auth?.users[i];
    const userId = user?.id ?? crypto.randomUUID();
    const res = await fetch(`${target.url}/api/tokens/activate`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(user === undefined ? {} : { authorization: `Bearer ${user.jwt}` }) },
      body: JSON.stringify({ user_id: userId }),
    });
    if (res.status !== 201) throw new Error(`activation answered ${res.status}`);
    const { data } = (await res.json()) as { data: { token_id: string; fence: number } };
    leases.push({ tokenId: data.token_id, userId, fence: data.fence });
  }
  return leases;
}

const bareServerPath = fileURLToPath(new URL('./bareServer.ts', import.meta.url));

async function startBareServer(
  kind: 'node' | 'express' | 'node-cycle' | 'express-cycle',
  args: readonly string[],
) {
  const child = spawn(process.execPath, ['--import', 'tsx', bareServerPath, kind, ...args], {
    cwd: root,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = once(child, 'exit');
  const [line] = (await once(createInterface({ input: child.stdout }), 'line')) as [string];
  return {
    url: `http://127.0.0.1:${Number(line)}`,
    pid: child.pid,
    async stop() {
      child.kill('SIGTERM');
      await exited;
    },
  };
}
