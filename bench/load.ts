import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

// The parent's side of the HTTP load generator, which runs in a child process of its own, so that
// the load it generates is not measured against the bench's own event loop: wrk where it is
// installed, else autocannon.
//
// The load generator shares the machine's cores with the service, PostgreSQL and Redis, and every
// millisecond of CPU it spends is one they do not get (the raw SQL baseline has no load generator
// to pay for). wrk, in C with its load scripted in LuaJIT (bench/wrk.lua), spent 0.04 ms of CPU
// per activate + release cycle where autocannon spent 0.09, and on two cores the service ran
// 11-17% more cycles a second under wrk, for about the same CPU per cycle.

/** Which program generates the HTTP load. */
export type LoadGenerator = 'wrk' | 'autocannon';

export type LoadKind =
  /** POST activate for a fresh user, then POST release of the token it got: one cycle. */
  | { readonly kind: 'cycle' }
  /** POST activate for a fresh user each time (on a full pool: the 409 path). */
  | { readonly kind: 'activate' }
  /** GET one path. */
  | { readonly kind: 'get'; readonly path: string }
  /** GET one of these paths at random. */
  | { readonly kind: 'get-any'; readonly paths: readonly string[] }
  /** POST validate for one of these leases at random. */
  | {
      readonly kind: 'validate';
      readonly leases: ReadonlyArray<{ tokenId: string; userId: string; fence: number }>;
    };

export type LoadSpec = LoadKind & {
  readonly url: string;
  readonly connections: number;
  readonly warmupSec: number;
  readonly durationSec: number;
  /** Only with `amount`: spread the requests evenly at this many a second. */
  readonly overallRate?: number;
  /** Stop after this many requests instead of after `durationSec`. */
  readonly amount?: number;
  /** Statuses that count as the expected answer; anything else is an error. */
  readonly expect: readonly number[];
  /**
   * AUTH_MODE=jwt: a file of `<user id> <JWT>` lines (bench/env.ts writeUsersFile). Activations
   * then act as its users in turn, from a random one on, instead of a new user each; every
   * request carries its user's JWT (`get`, `get-any`, `validate`: a user picked at random).
   */
  readonly usersFile?: string | undefined;
};

export interface LoadResult {
  /** Seconds the measured run lasted. */
  readonly seconds: number;
  readonly requests: number;
  /** Completed activate + release pairs (kind `cycle` only). */
  readonly cycles: number;
  /** Answers with an unexpected status, plus connection errors and timeouts. */
  readonly errors: number;
  readonly statuses: Record<string, number>;
  readonly latencyMs: { readonly p50: number; readonly p99: number; readonly max: number };
}

// Only node: imports here: the worker process loads this module too.
const root = fileURLToPath(new URL('..', import.meta.url));
const workerPath = fileURLToPath(new URL('./loadWorker.ts', import.meta.url));
const wrkScript = fileURLToPath(new URL('./wrk.lua', import.meta.url));

/** The line the worker prints when the warm-up is over and the measured run starts. */
export const MEASURING = 'measuring';

/** How many answers had a status other than the expected ones. */
export function unexpectedAnswers(statuses: Record<string, number>, expect: readonly number[]): number {
  return Object.entries(statuses)
    .filter(([status]) => !expect.includes(Number(status)))
    .reduce((sum, [, count]) => sum + count, 0);
}

/** wrk's version (`wrk 4.1.0`), or undefined if it is not installed. */
export function wrkVersion(): string | undefined {
  // wrk --version prints its version and usage, and exits with 1.
  const run = spawnSync('wrk', ['--version'], { encoding: 'utf8' });
  if (run.error !== undefined) return undefined;
  const version = /^wrk\s+(?:\S+\/)?(\d[\w.+-]*)/.exec(run.stdout)?.[1];
  return version === undefined ? undefined : `wrk ${version}`;
}

/**
 * Runs one load in a fresh child process and returns what it measured. `onMeasuring` is called
 * as the measured run starts (after the warm-up). A load at a set rate (`overallRate`) always
 * comes from autocannon: wrk cannot hold a rate.
 */
export async function runLoad(
  spec: LoadSpec,
  generator: LoadGenerator,
  onMeasuring?: () => void,
): Promise<LoadResult> {
  if (generator === 'wrk' && spec.overallRate === undefined && spec.amount === undefined) {
    return runWrk(spec, onMeasuring);
  }
  const child = spawn(process.execPath, ['--import', 'tsx', workerPath], {
    cwd: root,
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const lines: string[] = [];
  createInterface({ input: child.stdout }).on('line', (line) => {
    if (line === MEASURING) onMeasuring?.();
    else lines.push(line);
  });
  child.stdin.end(JSON.stringify(spec));
  // 'close', not 'exit': the last line may still be in the pipe when the process exits.
  const [code] = (await once(child, 'close')) as [number | null];
  if (code !== 0) throw new Error(`load generator exited with ${code}`);
  return JSON.parse(lines.at(-1) ?? '') as LoadResult;
}

/**
 * Runs `spec` with wrk, on one thread: it drives 50 connections with a fraction of a core. wrk
 * takes whole seconds, so a duration is rounded (at least 1 s); the result has the time it ran.
 */
async function runWrk(spec: LoadSpec, onMeasuring?: () => void): Promise<LoadResult> {
  const seconds = (s: number) => `${Math.max(1, Math.round(s))}s`;
  const seed = String(Math.floor(Math.random() * 2 ** 31));
  const args = (duration: string) => [
    '--threads=1',
    `--connections=${spec.connections}`,
    `--duration=${duration}`,
    '--timeout=10s',
    `--script=${wrkScript}`,
    spec.url,
    '--',
    seed,
    spec.usersFile ?? '-',
    ...wrkItems(spec),
  ];
  // A cycle run releases what it left held, so that a run that follows (the soak's next minute)
  // finds the pool as a client that releases its leases leaves it, not short of them until
  // they expire.
  const run = async (duration: string) => {
    if (spec.kind !== 'cycle') return wrk(args(duration));
    const dir = await mkdtemp(join(tmpdir(), 'token-lease-wrk-'));
    try {
      const leftovers = join(dir, 'leftovers');
      const result = await wrk(args(duration), { WRK_LEFTOVERS: leftovers });
      await releaseLeftovers(spec, await readFile(leftovers, 'utf8'));
      return result;
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  };
  if (spec.warmupSec > 0) await run(seconds(spec.warmupSec));
  onMeasuring?.();
  const result = await run(seconds(spec.durationSec));
  return {
    seconds: result.seconds,
    requests: result.requests,
    cycles: result.cycles,
    errors: unexpectedAnswers(result.statuses, spec.expect) + result.socketErrors,
    statuses: result.statuses,
    latencyMs: { p50: result.p50, p99: result.p99, max: result.max },
  };
}

/** The script's arguments after the seed and users: the kind and what it picks from (see bench/wrk.lua). */
function wrkItems(spec: LoadKind): string[] {
  switch (spec.kind) {
    case 'cycle':
    case 'activate':
      return [spec.kind];
    case 'get':
      return ['get', spec.path];
    case 'get-any':
      return ['get-any', ...spec.paths];
    case 'validate':
      return ['validate', ...spec.leases.map((l) => `${l.tokenId}:${l.userId}:${l.fence}`)];
  }
}

interface WrkResult {
  readonly seconds: number;
  readonly requests: number;
  readonly cycles: number;
  readonly statuses: Record<string, number>;
  /** Connections that failed, reads and writes that failed, and requests that timed out. */
  readonly socketErrors: number;
  readonly p50: number;
  readonly p99: number;
  readonly max: number;
}

const WRK_RESULT = 'wrk-result ';

/** Releases the leases a cycle run left held ("<token> <user> <lease>" lines), as their holders. */
async function releaseLeftovers(spec: LoadSpec, lines: string): Promise<void> {
  const bearers = new Map<string, string>();
  if (spec.usersFile !== undefined) {
    for (const line of (await readFile(spec.usersFile, 'utf8')).split('\n')) {
      const [user, jwt] = line.split(' ');
      if (user !== undefined && jwt !== undefined) bearers.set(user, jwt);
    }
  }
  const leases = lines.split('\n').filter((l) => l !== '').map((l) => l.split(' '));
  await Promise.all(
    leases.map(async ([token = '', user = '', lease = '']) => {
      const bearer = bearers.get(user);
      const res = await fetch(`${spec.url}/api/tokens/${token}/release`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...(bearer === undefined ? {} : { authorization: `Bearer ${bearer}` }) },
        body: JSON.stringify({ user_id: user, lease_id: lease }),
      });
      await res.arrayBuffer();
    }),
  );
}

async function wrk(args: string[], env: Record<string, string> = {}): Promise<WrkResult> {
  const child = spawn('wrk', args, { cwd: root, stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, ...env } });
  let output = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
  const [code] = (await once(child, 'close')) as [number | null];
  const line = output.split('\n').find((l) => l.startsWith(WRK_RESULT));
  if (code !== 0 || line === undefined) throw new Error(`wrk exited with ${code}:\n${output}`);
  return JSON.parse(line.slice(WRK_RESULT.length)) as WrkResult;
}
