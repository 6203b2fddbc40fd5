import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { SignJWT } from 'jose';
import pg from 'pg';
import { startServiceProcess, type ServiceProcess } from '../test/harness/processes.js';

// What the bench runs against: its own databases on the shared PostgreSQL server, its own Redis
// key prefix, and the service as a separate OS process started by the tests' harness.

export const root = fileURLToPath(new URL('..', import.meta.url));

export const BENCH_ADMIN_KEY = 'bench-admin-key-0123456789';

/** The JWT_SECRET of the AUTH_MODE=jwt service, and what the bench signs its users' JWTs with. */
export const BENCH_JWT_SECRET = 'bench-jwt-secret-0123456789abcdef';

/** A user the load acts as under AUTH_MODE=jwt, and the JWT it sends. */
export interface JwtUser {
  readonly id: string;
  readonly jwt: string;
}

/**
 * `count` new users, each with a JWT signed before the run as its identity provider would sign
 * it: HS256 with BENCH_JWT_SECRET, `sub` the user id, no scope, valid for a day.
 */
export async function signJwtUsers(count: number): Promise<JwtUser[]> {
  const secret = new TextEncoder().encode(BENCH_JWT_SECRET);
  return Promise.all(
    Array.from({ length: count }, async () => {
      const id = randomUUID();
      const jwt = await new SignJWT().setProtectedHeader({ alg: 'HS256' }).setSubject(id).setIssuedAt().setExpirationTime('1d').sign(secret);
      return { id, jwt };
    }),
  );
}

/** Writes `users` for the load generators (see LoadSpec.usersFile): one `<user id> <JWT>` line each. */
export function writeUsersFile(file: string, users: readonly JwtUser[]): string {
  writeFileSync(file, users.map((u) => `${u.id} ${u.jwt}\n`).join(''));
  return file;
}

/** Runs statements on a database outside the service (seeding, VACUUM, reading rows back). */
export async function withDatabaseClient<T>(url: string, work: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}

/**
 * Autovacuum may be off (it is on the CI machines), and a cycle run leaves thousands of dead
 * token versions at the head of the free-token index: every run starts from a vacuumed table.
 */
export async function vacuum(url: string): Promise<void> {
  await withDatabaseClient(url, async (client) => {
    await client.query('VACUUM (ANALYZE) tokens, usages, waiters');
  });
}

/** Resident set size of another process, in bytes (Linux /proc, else ps). */
export function rssOf(pid: number): number {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = /^VmRSS:\s+(\d+) kB/m.exec(status)?.[1];
    if (kb !== undefined) return Number(kb) * 1024;
  } catch {
    // not Linux: fall through to ps
  }
  return Number(execFileSync('ps', ['-o', 'rss=', '-p', String(pid)]).toString().trim()) * 1024;
}

/**
 * Starts a measurement; the function it returns tells the CPU seconds (user + system) used since,
 * or undefined if they could not be read. Per operation it is a steadier figure than a rate on a
 * shared machine: other work slows a process down but hardly changes what each request costs it.
 */
export type CpuMeter = () => () => number | undefined;

/** Measures another process's CPU time; undefined where /proc is not available. */
export function processCpuMeter(pid: number): CpuMeter | undefined {
  const read = (): number | undefined => {
    try {
      return parseStat(readFileSync(`/proc/${pid}/stat`, 'utf8')).cpuSeconds;
    } catch {
      return undefined;
    }
  };
  if (read() === undefined) return undefined;
  return () => {
    const before = read();
    return () => {
      const after = read();
      return before === undefined || after === undefined ? undefined : after - before;
    };
  };
}

/**
 * Measures the CPU time (user + system) of the PostgreSQL server's processes, when
 * `databaseUrl` points at this machine and /proc lists postgres processes; else undefined. It
 * counts the whole server, so work on other databases at the same time counts too. A backend
 * that starts during a measurement counts in full; one that exits takes its time since the start
 * with it (a pool closing idle connections), so the figure can only fall short.
 */
export function postgresCpuMeter(databaseUrl: string): CpuMeter | undefined {
  const host = new URL(databaseUrl).hostname;
  if (!['127.0.0.1', 'localhost', '[::1]', ''].includes(host)) return undefined;
  const snapshot = (): Map<string, number> => {
    const seconds = new Map<string, number>();
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      try {
        const stat = parseStat(readFileSync(`/proc/${entry}/stat`, 'utf8'));
        if (stat.command === 'postgres') seconds.set(entry, stat.cpuSeconds);
      } catch {
        // the process ended while being read
      }
    }
    return seconds;
  };
  try {
    if (snapshot().size === 0) return undefined;
  } catch {
    return undefined;
  }
  return () => {
    const before = snapshot();
    return () => {
      let seconds = 0;
      for (const [pid, now] of snapshot()) seconds += now - (before.get(pid) ?? 0);
      return seconds;
    };
  };
}

/** The command name and CPU time (user + system, in seconds) of a /proc/<pid>/stat line. */
function parseStat(stat: string): { command: string; cpuSeconds: number } {
  // Fields after the command name (which may contain spaces) start at state; utime and stime
  // are the 14th and 15th fields of the line, in clock ticks (100 a second on Linux).
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return {
    command: stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')),
    cpuSeconds: (Number(fields[11]) + Number(fields[12])) / 100,
  };
}

/** BENCH_SERVICE_ENV's NAME=value pairs, separated by spaces. */
function serviceEnv(): Record<string, string> {
  const pairs = process.env.BENCH_SERVICE_ENV?.split(/\s+/).filter((pair) => pair.includes('=')) ?? [];
  return Object.fromEntries(pairs.map((pair) => [pair.slice(0, pair.indexOf('=')), pair.slice(pair.indexOf('=') + 1)]));
}

/**
 * Starts the service (test/harness/processes.ts): `dist` runs the compiled build exactly as
 * `npm start` does (the bench builds it first); `src` runs the TypeScript sources through tsx
 * (the smoke test, no build). Its log goes to `logFile`, as a production log would go to a file
 * or a collector.
 */
export async function startBenchService(options: {
  entry: 'dist' | 'src';
  env: Record<string, string>;
  logFile: string;
}): Promise<ServiceProcess> {
  const service = await startServiceProcess({
    entry: options.entry,
    port: 'free',
    logFile: options.logFile,
    // Node flags for a profile of the service (--cpu-prof and the like); none by default.
    nodeArgs: process.env.BENCH_SERVICE_NODE_ARGS?.split(/\s+/).filter(Boolean) ?? [],
    // BENCH_SERVICE_ENV (NAME=value pairs) last: a setting to compare against, such as LOG_LEVEL=warn.
    env: { NODE_ENV: 'production', AUTH_MODE: 'none', ADMIN_API_KEY: BENCH_ADMIN_KEY, ...options.env, ...serviceEnv() },
  });
  try {
    await service.ready();
  } catch (error) {
    service.kill('SIGKILL');
    throw error;
  }
  return service;
}
