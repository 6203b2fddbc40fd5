import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { migrate } from '../../src/db/migrate.js';
import { createLogger } from '../../src/logger.js';
import { adminUrl, dropDatabase, withDatabase } from '../databases.js';
import { freePort } from '../ports.js';
import { deleteRedisKeys } from '../redis.js';
import type { HttpClient } from './http.js';

// One deployment for a stress run: its own database and Redis prefix, several ROLE=api and
// ROLE=worker processes started from the TypeScript sources (tsx) as separate OS processes.
// Unlike test/processes.ts it needs nothing from vitest, so the CLI can use it too, and the
// processes log at warn only (a line per 409 would cost the run more than the requests).

const root = fileURLToPath(new URL('../..', import.meta.url));
const entry = fileURLToPath(new URL('../../src/main/index.ts', import.meta.url));

export interface ServiceNode {
  readonly role: 'api' | 'worker';
  readonly url: string;
  /** Parsed log lines (warn and above). */
  readonly logs: Array<Record<string, unknown>>;
  readonly exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  readonly child: ChildProcess;
}

export interface ClusterOptions {
  readonly databaseName: string;
  readonly redisUrl: string;
  readonly redisPrefix: string;
  readonly apiProcesses: number;
  readonly workerProcesses: number;
  /** The service's own variables, the same for every process (ROLE, PORT, URLs are added). */
  readonly env: Record<string, string>;
}

export interface Cluster {
  readonly databaseUrl: string;
  readonly apis: readonly ServiceNode[];
  readonly workers: readonly ServiceNode[];
  /** SIGTERM to every process; SIGKILL to those still running after `timeoutMs`. */
  stop(timeoutMs?: number): Promise<Array<{ role: string; code: number | null; signal: NodeJS.Signals | null }>>;
  /** Drops the database and deletes the Redis keys. */
  destroy(): Promise<void>;
}

/** Creates and migrates the database, then starts every process and waits until each is ready. */
export async function startCluster(options: ClusterOptions, http: HttpClient): Promise<Cluster> {
  const databaseUrl = withDatabase(options.databaseName);
  await createDatabase(options.databaseName);
  const nodes: ServiceNode[] = [];
  const cluster: Cluster = {
    databaseUrl,
    get apis() {
      return nodes.filter((n) => n.role === 'api');
    },
    get workers() {
      return nodes.filter((n) => n.role === 'worker');
    },
    stop: (timeoutMs = 15_000) => stopNodes(nodes, timeoutMs),
    async destroy() {
      await dropDatabase(options.databaseName);
      await deleteRedisKeys(options.redisUrl, `${options.redisPrefix}:*`);
    },
  };
  try {
    // Migrated once here, so the processes starting together find nothing to do.
    await migrate(databaseUrl, createLogger({ level: 'warn' }));
    const roles = [
      ...Array.from({ length: options.apiProcesses }, () => 'api' as const),
      ...Array.from({ length: options.workerProcesses }, () => 'worker' as const),
    ];
    for (const role of roles) {
      const port = await freePort();
      nodes.push(
        spawnNode(role, port, {
          ...options.env,
          DATABASE_URL: databaseUrl,
          REDIS_URL: options.redisUrl,
          REDIS_PREFIX: options.redisPrefix,
        }),
      );
    }
    await Promise.all(nodes.map((node) => waitUntilReady(node, http)));
    return cluster;
  } catch (error) {
    await cluster.stop(5_000);
    await cluster.destroy();
    throw error;
  }
}

async function createDatabase(name: string): Promise<void> {
  const admin = new pg.Client({ connectionString: adminUrl() });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${pg.escapeIdentifier(name)}`);
  } finally {
    await admin.end();
  }
}

function spawnNode(role: 'api' | 'worker', port: number, env: Record<string, string>): ServiceNode {
  const child = spawn(process.execPath, ['--import', 'tsx', entry], {
    cwd: root,
    // A process group of its own: Ctrl-C in a terminal reaches the run, which then stops the
    // service in order (after draining and checking), rather than every process at once.
    detached: true,
    env: {
      PATH: process.env.PATH ?? '',
      HOST: '127.0.0.1',
      PORT: String(port),
      LOG_LEVEL: 'warn',
      ...env,
      ROLE: role,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: Array<Record<string, unknown>> = [];
  const keep = (line: string) => {
    try {
      logs.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      logs.push({ level: 'raw', msg: line });
    }
  };
  createInterface({ input: child.stdout as NodeJS.ReadableStream }).on('line', keep);
  createInterface({ input: child.stderr as NodeJS.ReadableStream }).on('line', keep);
  // Whatever ends this process, the service processes do not outlive it.
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  const exit = once(child, 'exit').then(([code, signal]) => {
    process.off('exit', killOnExit);
    return { code: code as number | null, signal: signal as NodeJS.Signals | null };
  });
  return { role, url: `http://127.0.0.1:${port}`, logs, exit, child };
}

async function waitUntilReady(node: ServiceNode, http: HttpClient, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (node.child.exitCode !== null || node.child.signalCode !== null) throw new Error(`${node.role} on ${node.url} exited while starting: ${JSON.stringify(node.logs)}`);
    const ready = await http.request('GET', `${node.url}/readyz`, { timeoutMs: 2_000 }).then(
      (answer) => answer.status === 200,
      () => false,
    );
    if (ready) return;
    if (Date.now() > deadline) throw new Error(`${node.role} on ${node.url} not ready within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function stopNodes(nodes: readonly ServiceNode[], timeoutMs: number) {
  const running = (n: ServiceNode) => n.child.exitCode === null && n.child.signalCode === null;
  for (const node of nodes) if (running(node)) node.child.kill('SIGTERM');
  const killer = setTimeout(() => {
    for (const node of nodes) if (running(node)) node.child.kill('SIGKILL');
  }, timeoutMs);
  try {
    return await Promise.all(nodes.map(async (n) => ({ role: n.role, ...(await n.exit) })));
  } finally {
    clearTimeout(killer);
  }
}
