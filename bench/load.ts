import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

// The parent's side of the HTTP load generator. autocannon runs in a child process of its own, so
// that the load it generates is not measured against the bench's own event loop.

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

/** The line the worker prints when the warm-up is over and the measured run starts. */
export const MEASURING = 'measuring';

/**
 * Runs one load in a fresh child process and returns what it measured. `onMeasuring` is called
 * as the measured run starts (after the warm-up).
 */
export async function runLoad(spec: LoadSpec, onMeasuring?: () => void): Promise<LoadResult> {
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
