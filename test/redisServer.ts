import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { Redis } from 'ioredis';
import { freePort } from './harness/ports.js';

// A private redis-server on a spare port, for tests that stop, restart or flush Redis without
// touching the machine's shared one. No persistence: a restart comes back empty.

export interface RedisServer {
  readonly port: number;
  readonly url: string;
  /** Kills the server at once (as a crash would) and waits for it to be gone. */
  stop(): Promise<void>;
  /** Starts it again on the same port, empty (does nothing while it runs). */
  start(): Promise<void>;
  /** Runs one command on it. */
  command(...args: [string, ...Array<string | number>]): Promise<unknown>;
}

export async function startRedisServer(): Promise<RedisServer> {
  const port = await freePort();
  const url = `redis://127.0.0.1:${port}`;
  let child: ChildProcess | undefined;

  async function command(...args: [string, ...Array<string | number>]): Promise<unknown> {
    const client = new Redis(url, { maxRetriesPerRequest: 0, retryStrategy: () => null });
    client.on('error', () => undefined); // the call below rejects with it
    try {
      return await client.call(...args);
    } finally {
      client.disconnect();
    }
  }

  const running = () => child !== undefined && child.exitCode === null && child.signalCode === null;

  async function start(): Promise<void> {
    if (running()) return;
    child = spawn(
      'redis-server',
      ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
      { stdio: 'ignore' },
    );
    const deadline = Date.now() + 10_000;
    for (;;) {
      try {
        if ((await command('PING')) === 'PONG') return;
      } catch {
        // not up yet
      }
      if (Date.now() > deadline) throw new Error(`redis-server on ${port} did not start`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  async function stop(): Promise<void> {
    if (child === undefined || !running()) return;
    const exited = once(child, 'exit');
    child.kill('SIGKILL');
    await exited;
  }

  await start();
  return { port, url, stop, start, command };
}
