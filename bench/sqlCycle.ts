import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { createPool, type Pool } from '../src/db/pool.js';
import { activateLease, findPoolId, releaseLease } from '../src/db/queries.js';
import { createLogger } from '../src/logger.js';
import type { CpuMeter } from './env.js';
import { percentile } from './stats.js';

// The raw SQL cycle: the allocation and release statements the service runs (imported from
// src/db/queries.ts, so they cannot drift apart), through node-postgres with the service's pool
// settings and the HTTP runs' concurrency, with no HTTP, Express or Redis in between. It is
// the ceiling an activate + release cycle over HTTP is compared with.

export interface SqlCycleResult {
  readonly seconds: number;
  readonly cycles: number;
  readonly errors: number;
  /** Per statement, as the HTTP runs report per request. */
  readonly latencyMs: { readonly p50: number; readonly p99: number; readonly max: number };
  /** CPU time this (Node) process spent while measuring; PostgreSQL's is not included. */
  readonly cpuMs: number;
  /** PostgreSQL's CPU time while measuring, from `serverCpu`; undefined without it. */
  readonly serverCpuMs: number | undefined;
}

/** The pool the raw SQL cycle runs on, here and behind the bare HTTP servers (bareServer.ts). */
export function sqlCyclePool(databaseUrl: string, max: number): Pool {
  return createPool(
    {
      connectionString: databaseUrl,
      max,
      statementTimeoutMs: 5_000,
      connectTimeoutMs: 5_000,
      // As the service's pool keeps them by default (DATABASE_IDLE_TIMEOUT_MS).
      idleTimeoutMs: 600_000,
      applicationName: 'token-lease-bench',
    },
    createLogger({ level: 'silent' }),
  );
}

export async function runSqlCycle(options: {
  databaseUrl: string;
  poolMax: number;
  concurrency: number;
  warmupSec: number;
  durationSec: number;
  leaseTtlMs: number;
  /** Measures PostgreSQL's CPU time, if it can be seen from here. */
  serverCpu?: CpuMeter | undefined;
}): Promise<SqlCycleResult> {
  const pool = sqlCyclePool(options.databaseUrl, options.poolMax);
  const found = await findPoolId(pool, 'default');
  if (found === null) throw new Error('the database has no default pool');
  const poolId = found;
  const latencies: number[] = [];
  let measuring = false;
  let cycles = 0;
  let errors = 0;
  let stopped = false;

  async function timed<T>(statement: () => Promise<T>): Promise<T> {
    const started = performance.now();
    const result = await statement();
    if (measuring) latencies.push(performance.now() - started);
    return result;
  }

  async function loop(): Promise<void> {
    while (!stopped) {
      const userId = randomUUID();
      try {
        const row = await timed(() =>
          activateLease(pool, { poolId, userId, ttlMs: options.leaseTtlMs, evictOldest: false, waiterId: null }),
        );
        if (row.outcome !== 'created' || row.token_id === null || row.lease_id === null) throw new Error(`activation ${row.outcome}`);
        const lease = { tokenId: row.token_id, userId, leaseId: row.lease_id };
        const ended = await timed(() => releaseLease(pool, lease));
        if (ended.outcome !== 'released') throw new Error('release ended nothing');
        if (measuring) cycles += 1;
      } catch {
        if (measuring) errors += 1;
      }
    }
  }

  try {
    const loops = Array.from({ length: options.concurrency }, () => loop());
    await sleep(options.warmupSec * 1000);
    measuring = true;
    const started = performance.now();
    const cpuBefore = process.cpuUsage();
    const serverCpuSince = options.serverCpu?.();
    await sleep(options.durationSec * 1000);
    measuring = false;
    const cpu = process.cpuUsage(cpuBefore);
    const serverCpuSeconds = serverCpuSince?.();
    const seconds = (performance.now() - started) / 1000;
    stopped = true;
    await Promise.all(loops);
    latencies.sort((a, b) => a - b);
    return {
      seconds,
      cycles,
      errors,
      cpuMs: (cpu.user + cpu.system) / 1000,
      serverCpuMs: serverCpuSeconds === undefined ? undefined : serverCpuSeconds * 1000,
      latencyMs: {
        p50: percentile(latencies, 0.5),
        p99: percentile(latencies, 0.99),
        max: latencies.at(-1) ?? 0,
      },
    };
  } finally {
    stopped = true;
    await pool.end();
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
