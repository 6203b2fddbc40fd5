import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { root } from './env.js';

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

const workerPath = fileURLToPath(new URL('./loadWorker.ts', import.meta.url));

/** Runs one load in a fresh child process and returns what it measured. */
export async function runLoad(spec: LoadSpec): Promise<LoadResult> {
  const child = spawn(process.execPath, ['--import', 'tsx', workerPath], {
    cwd: root,
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk: string) => {
    out += chunk;
  });
  child.stdin.end(JSON.stringify(spec));
  const [code] = (await once(child, 'exit')) as [number | null];
  if (code !== 0) throw new Error(`load generator exited with ${code}`);
  const line = out.trim().split('\n').at(-1) ?? '';
  return JSON.parse(line) as LoadResult;
}
