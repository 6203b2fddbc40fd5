import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, openSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { freePort } from './ports.js';
import { waitFor } from './waitFor.js';

// The one way the tests, `npm run stress` and the bench start the service as a separate OS
// process: started the way `npm start` starts it, from the compiled build (`dist`) or from the
// TypeScript sources through tsx (`src`, no build), so a caller sees real signals, exit codes and
// process boundaries. Needs nothing from vitest.

const root = fileURLToPath(new URL('../..', import.meta.url));
const entries = {
  src: ['--import', 'tsx', fileURLToPath(new URL('../../src/main/index.ts', import.meta.url))],
  dist: [fileURLToPath(new URL('../../dist/main/index.js', import.meta.url))],
};

export type ProcessExit = { code: number | null; signal: NodeJS.Signals | null };

export interface ServiceProcessOptions {
  /** The service's own variables (DATABASE_URL, REDIS_URL, REDIS_PREFIX, ROLE, ...). */
  readonly env: Record<string, string>;
  /** `src` (default) runs the sources through tsx; `dist` runs the build as `npm start` does. */
  readonly entry?: 'src' | 'dist';
  /**
   * `0` (default) lets the process pick its port, learnt from its "listening" log line;
   * `'free'` tells it a free port up front, for callers that do not read its log.
   */
  readonly port?: 0 | 'free';
  /** LOG_LEVEL unless `env` sets one; `info` by default, `warn` under load. */
  readonly logLevel?: string;
  /**
   * Where stdout and stderr go: kept in memory and parsed (default), or appended to a file as a
   * production log would be (the bench; `logs` then stays empty).
   */
  readonly logFile?: string;
  /**
   * A process group of its own: Ctrl-C in a terminal reaches the caller, which then stops the
   * service in order (after draining and checking), rather than every process at once.
   */
  readonly detached?: boolean;
  /** Node flags for the service (a profile: --cpu-prof and the like). */
  readonly nodeArgs?: readonly string[];
}

export interface ServiceProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly role: string;
  /** Parsed JSON log lines seen so far; stderr lines as `{ level: 'raw', msg }`. */
  readonly logs: Array<Record<string, unknown>>;
  /** Everything written to stderr (configuration errors land here). */
  stderr(): string;
  /** The port it listens on. */
  port(): Promise<number>;
  /** `http://127.0.0.1:<port>`. */
  url(): Promise<string>;
  /** Resolves once GET /readyz answers 200; rejects if the process exits first. */
  ready(timeoutMs?: number): Promise<string>;
  /** Resolves on the first log line whose msg is `msg`. */
  logged(msg: string, timeoutMs?: number): Promise<Record<string, unknown>>;
  exited(): Promise<ProcessExit>;
  running(): boolean;
  kill(signal?: NodeJS.Signals): void;
  /** SIGTERM, then SIGKILL if it still runs after `timeoutMs`; resolves with how it exited. */
  stop(timeoutMs?: number): Promise<ProcessExit>;
}

export async function startServiceProcess(options: ServiceProcessOptions): Promise<ServiceProcess> {
  const fixedPort = options.port === 'free' ? await freePort() : undefined;
  return spawnServiceProcess(options, fixedPort);
}

/** Synchronous when the port is 0: the caller may kill it before it even listens. */
export function spawnServiceProcess(options: ServiceProcessOptions, fixedPort?: number): ServiceProcess {
  const log = options.logFile === undefined ? undefined : openSync(options.logFile, 'a');
  let child: ChildProcess;
  try {
    child = spawn(process.execPath, [...(options.nodeArgs ?? []), ...entries[options.entry ?? 'src']], {
      cwd: root,
      detached: options.detached ?? false,
      env: {
        PATH: process.env.PATH ?? '',
        HOST: '127.0.0.1',
        PORT: String(fixedPort ?? 0),
        LOG_LEVEL: options.logLevel ?? 'info',
        ...options.env,
      },
      stdio: log === undefined ? ['ignore', 'pipe', 'pipe'] : ['ignore', log, log],
    });
  } finally {
    if (log !== undefined) closeSync(log);
  }
  const logs: Array<Record<string, unknown>> = [];
  const listeners = new Set<() => void>();
  let stderr = '';
  if (log === undefined) {
    child.stderr?.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).on('line', (line) => {
      try {
        logs.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        logs.push({ level: 'raw', msg: line });
      }
      for (const listener of listeners) listener();
    });
    createInterface({ input: child.stderr as NodeJS.ReadableStream }).on('line', (line) => {
      logs.push({ level: 'raw', msg: line, stream: 'stderr' });
    });
  }
  // Whatever ends this process, the service processes do not outlive it.
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  const exit = once(child, 'exit').then(([code, signal]) => {
    process.off('exit', killOnExit);
    return { code: code as number | null, signal: signal as NodeJS.Signals | null };
  });
  const running = () => child.exitCode === null && child.signalCode === null;
  const describe = () => (log === undefined ? `stderr: ${stderr}` : `see ${options.logFile}`);

  function logged(msg: string, timeoutMs = 20_000): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const line = logs.find((l) => l.msg === msg);
        if (line === undefined) return;
        cleanup();
        resolve(line);
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`no "${msg}" log within ${timeoutMs} ms; ${describe()}`));
      }, timeoutMs);
      const onExit = () => {
        check();
        cleanup();
        reject(new Error(`process exited before logging "${msg}"; ${describe()}`));
      };
      const cleanup = () => {
        clearTimeout(timer);
        listeners.delete(check);
        child.off('exit', onExit);
      };
      listeners.add(check);
      child.once('exit', onExit);
      check();
    });
  }

  const port = async () => fixedPort ?? Number((await logged('listening')).port);
  const url = async () => `http://127.0.0.1:${await port()}`;

  return {
    child,
    pid: child.pid ?? 0,
    role: options.env.ROLE ?? 'all',
    logs,
    stderr: () => stderr,
    port,
    url,
    async ready(timeoutMs = 60_000) {
      const base = await url();
      return waitFor(
        async () => {
          if (!running()) throw new Error(`the service exited while starting; ${describe()}`);
          const res = await fetch(`${base}/readyz`, { signal: AbortSignal.timeout(2_000) }).catch(() => undefined);
          await res?.body?.cancel();
          return res?.ok === true && base;
        },
        { timeoutMs, intervalMs: 100, what: `${base}/readyz to answer 200` },
      );
    },
    logged,
    exited: () => exit,
    running,
    kill: (signal = 'SIGTERM') => {
      if (running()) child.kill(signal);
    },
    async stop(timeoutMs = 15_000) {
      if (running()) child.kill('SIGTERM');
      const killer = setTimeout(() => {
        if (running()) child.kill('SIGKILL');
      }, timeoutMs);
      try {
        return await exit;
      } finally {
        clearTimeout(killer);
      }
    },
  };
}
