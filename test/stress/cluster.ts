import { createMigratedDatabase, dropDatabase } from '../harness/databases.js';
import { startServiceProcess, type ProcessExit, type ServiceProcess } from '../harness/processes.js';
import { deleteRedisKeys } from '../redis.js';

// One deployment for a stress run: its own database and Redis prefix, several ROLE=api and
// ROLE=worker processes started by test/harness/processes.ts. The processes log at warn only (a
// line per 409 would cost the run more than the requests).

export interface ServiceNode {
  readonly role: 'api' | 'worker';
  readonly url: string;
  readonly process: ServiceProcess;
  /** Parsed log lines (warn and above). */
  readonly logs: Array<Record<string, unknown>>;
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
  stop(timeoutMs?: number): Promise<Array<{ role: string } & ProcessExit>>;
  /** Drops the database and deletes the Redis keys. */
  destroy(): Promise<void>;
}

/** Creates and migrates the database, then starts every process and waits until each is ready. */
export async function startCluster(options: ClusterOptions): Promise<Cluster> {
  // Migrated once here, so the processes starting together find nothing to do.
  const databaseUrl = await createMigratedDatabase(options.databaseName);
  const nodes: ServiceNode[] = [];
  const cluster: Cluster = {
    databaseUrl,
    get apis() {
      return nodes.filter((n) => n.role === 'api');
    },
    get workers() {
      return nodes.filter((n) => n.role === 'worker');
    },
    stop: (timeoutMs = 15_000) =>
      Promise.all(nodes.map(async (n) => ({ role: n.role, ...(await n.process.stop(timeoutMs)) }))),
    async destroy() {
      await dropDatabase(options.databaseName);
      await deleteRedisKeys(options.redisUrl, `${options.redisPrefix}:*`);
    },
  };
  try {
    const roles = [
      ...Array.from({ length: options.apiProcesses }, () => 'api' as const),
      ...Array.from({ length: options.workerProcesses }, () => 'worker' as const),
    ];
    for (const role of roles) {
      const process = await startServiceProcess({
        port: 'free',
        logLevel: 'warn',
        detached: true,
        env: {
          ...options.env,
          DATABASE_URL: databaseUrl,
          REDIS_URL: options.redisUrl,
          REDIS_PREFIX: options.redisPrefix,
          ROLE: role,
        },
      });
      nodes.push({ role, url: await process.url(), process, logs: process.logs });
    }
    await Promise.all(nodes.map((node) => node.process.ready()));
    return cluster;
  } catch (error) {
    await cluster.stop(5_000);
    await cluster.destroy();
    throw error;
  }
}
