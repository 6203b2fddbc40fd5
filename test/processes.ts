import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { inject } from 'vitest';
import { testRedisPrefix, testRedisUrl } from './redis.js';

// The service as a separate OS process, started the way `npm start` starts it but from the
// TypeScript sources (tsx), so a test sees real signals, exit codes and process boundaries.

const root = fileURLToPath(new URL('..', import.meta.url));
const entry = fileURLToPath(new URL('../src/main/index.ts', import.meta.url));

export interface ServiceProcess {
  readonly child: ChildProcess;
  /** Parsed JSON log lines seen so far. */
  readonly logs: Array<Record<string, unknown>>;
  /** Everything written to stderr (configuration errors land here). */
  stderr(): string;
  /** The port it listens on, once it logged "listening". */
  port(): Promise<number>;
  /** Resolves on the first log line whose msg is `msg`. */
  logged(msg: string, timeoutMs?: number): Promise<Record<string, unknown>>;
  exited(): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  kill(signal?: NodeJS.Signals): void;
}

export function spawnService(env: Record<string, string>): ServiceProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', entry], {
    cwd: root,
    env: {
      PATH: process.env.PATH ?? '',
      HOST: '127.0.0.1',
      PORT: '0',
      LOG_LEVEL: 'info',
      REDIS_URL: testRedisUrl,
      REDIS_PREFIX: testRedisPrefix(inject('runId')),
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: Array<Record<string, unknown>> = [];
  const listeners = new Set<() => void>();
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  createInterface({ input: child.stdout as NodeJS.ReadableStream }).on('line', (line) => {
    try {
      logs.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      logs.push({ msg: line });
    }
    for (const listener of listeners) listener();
  });
  const exit = once(child, 'exit').then(([code, signal]) => ({
    code: code as number | null,
    signal: signal as NodeJS.Signals | null,
  }));

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
        reject(new Error(`no "${msg}" log within ${timeoutMs} ms; stderr: ${stderr}`));
      }, timeoutMs);
      const onExit = () => {
        check();
        cleanup();
        reject(new Error(`process exited before logging "${msg}"; stderr: ${stderr}`));
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

  return {
    child,
    logs,
    stderr: () => stderr,
    port: async () => Number((await logged('listening')).port),
    logged,
    exited: () => exit,
    kill: (signal = 'SIGTERM') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
  };
}
