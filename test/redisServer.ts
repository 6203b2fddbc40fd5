import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { freePort } from './harness/ports.js';
import { waitFor } from './harness/waitFor.js';

// A private redis-server on a spare port, for tests that stop, restart or flush Redis without
// touching the machine's shared one, and a private Redis Cluster of several. No persistence: a
// restart comes back empty.

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

/** A Redis Cluster of private redis-servers, every slot served, no replicas. */
export interface RedisCluster {
  readonly ports: readonly number[];
  /** `127.0.0.1:<port>,...`: REDIS_CLUSTER_NODES for the service. */
  readonly nodes: string;
  /** Where the servers keep their files (nodes-<port>.conf); gone once stopped. */
  readonly dir: string;
  /** Runs one command on the server on `port`. */
  command(port: number, ...args: [string, ...Array<string | number>]): Promise<unknown>;
  /** Kills the server on `port` at once, as a crash would, and waits for it to be gone. */
  kill(port: number): Promise<void>;
  /** Starts the server on `port` again, empty, with its node id and slots (nodes-<port>.conf). */
  restart(port: number): Promise<void>;
  /** Whether any of its servers still runs. */
  running(): boolean;
  /** Kills every server, waits for them to be gone and removes their files. */
  stop(): Promise<void>;
}

/**
 * Starts `masters` cluster-enabled redis-servers on spare ports, joins them with
 * `redis-cli --cluster create` and waits until every one reports `cluster_state:ok`. If any
 * step fails, what was started is stopped and removed before the error is thrown.
 */
export async function startRedisCluster(masters = 3): Promise<RedisCluster> {
  const dir = await mkdtemp(join(tmpdir(), 'tl-redis-cluster-'));
  const children: ChildProcess[] = [];
  const running = () => children.some((c) => c.exitCode === null && c.signalCode === null);
  const killAll = () => {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  };
  // Whatever ends this process, the servers do not outlive it.
  process.once('exit', killAll);

  async function stop(): Promise<void> {
    const exits = children.filter((c) => c.exitCode === null && c.signalCode === null).map((c) => once(c, 'exit'));
    killAll();
    await Promise.all(exits);
    process.off('exit', killAll);
    await rm(dir, { recursive: true, force: true });
  }

  const ports: number[] = [];
  const busPortOf = new Map<number, number>();
  const spawnNode = (port: number) =>
    spawn(
      'redis-server',
      [
        '--port', String(port),
        '--bind', '127.0.0.1',
        '--cluster-enabled', 'yes',
        '--cluster-port', String(busPortOf.get(port)),
        '--cluster-config-file', join(dir, `nodes-${port}.conf`),
        '--dir', dir,
        '--save', '',
        '--appendonly', 'no',
        '--daemonize', 'no',
      ],
      { stdio: 'ignore' },
    );
  try {
    // A client port and a cluster bus port per server, all different.
    const spare = new Set<number>();
    while (spare.size < 2 * masters) spare.add(await freePort());
    const [clientPorts, busPorts] = [[...spare].slice(0, masters), [...spare].slice(masters)];
    for (const [i, port] of clientPorts.entries()) {
      ports.push(port);
      busPortOf.set(port, busPorts[i] ?? 0);
      children.push(spawnNode(port));
    }
    for (const port of ports) {
      await waitFor(() => command(port, 'PING').then((reply) => reply === 'PONG', () => false), {
        timeoutMs: 10_000,
        intervalMs: 50,
        what: `redis-server on ${port} to start`,
      });
    }
    await run('redis-cli', ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '0', '--cluster-yes']);
    for (const port of ports) {
      await waitFor(
        async () => String(await command(port, 'CLUSTER', 'INFO').catch(() => '')).includes('cluster_state:ok'),
        { timeoutMs: 20_000, intervalMs: 100, what: `the cluster node on ${port} to report cluster_state:ok` },
      );
    }
  } catch (error) {
    await stop();
    throw error;
  }

  async function kill(port: number): Promise<void> {
    const child = children[ports.indexOf(port)];
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, 'exit');
    child.kill('SIGKILL');
    await exited;
  }

  async function restart(port: number): Promise<void> {
    const i = ports.indexOf(port);
    const child = children[i];
    if (child === undefined || (child.exitCode === null && child.signalCode === null)) return;
    children[i] = spawnNode(port);
    await waitFor(() => command(port, 'PING').then((reply) => reply === 'PONG', () => false), {
      timeoutMs: 10_000,
      intervalMs: 50,
      what: `redis-server on ${port} to start again`,
    });
  }

  return { ports, nodes: ports.map((p) => `127.0.0.1:${p}`).join(','), dir, command, kill, restart, running, stop };
}

/** One command on the server on `port`, over a connection of its own that never retries. */
async function command(port: number, ...args: [string, ...Array<string | number>]): Promise<unknown> {
  const client = new Redis(port, '127.0.0.1', { maxRetriesPerRequest: 0, retryStrategy: () => null, lazyConnect: true });
  client.on('error', () => undefined); // the calls below reject with it
  try {
    await client.connect();
    return await client.call(...args);
  } finally {
    client.disconnect();
  }
}

/** Runs a program to its end; rejects with its output if it fails or takes over 30 s. */
function run(file: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: 30_000 }, (error, stdout, stderr) => {
      if (error === null) resolve(stdout);
      else reject(new Error(`${file} ${args.join(' ')} failed: ${error.message}\n${stdout}${stderr}`));
    });
  });
}
