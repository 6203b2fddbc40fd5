import type { Config } from '../config.js';
import { ensureDatabase, migrate } from '../db/migrate.js';
import { createPool } from '../db/pool.js';
import { createLeases, type Leases } from '../domain/leases.js';
import { createApp } from '../http/app.js';
import type { Logger } from '../logger.js';
import { createMetrics, type Metrics } from '../metrics.js';
import { listen } from './api.js';
import { createShutdown } from './shutdown.js';

export interface Service {
  readonly leases: Leases;
  readonly metrics: Metrics;
  /** The HTTP port, when this process serves the API. */
  readonly port: number | undefined;
  stop(reason: string): Promise<boolean>;
}

/** Wires one process for its ROLE: the database first, then the API and/or the worker. */
export async function startService(config: Config, log: Logger): Promise<Service> {
  const shutdown = createShutdown(log);
  try {
    await ensureDatabase(config.databaseUrl, log);
    await migrate(config.databaseUrl, log);

    const pool = createPool(
      {
        connectionString: config.databaseUrl,
        max: config.databasePoolMax,
        statementTimeoutMs: config.databaseStatementTimeoutMs,
        connectTimeoutMs: config.databaseConnectTimeoutMs,
        applicationName: `token-lease-${config.role}`,
      },
      log,
    );
    shutdown.add('database pool', () => pool.end());

    const metrics = createMetrics({ defaultMetrics: true });
    const leases = createLeases({ pool, leaseTtlMs: config.leaseTtlMs, log, metrics });
    await leases.seedPool(config.poolSize);

    let port: number | undefined;
    if (config.role !== 'worker') {
      if (config.adminApiKey === undefined) {
        log.warn(
          'ADMIN_API_KEY is not set: POST /api/tokens/clear and every admin route are open to anyone who can reach this server',
        );
      }
      const app = createApp({ leases, log, metrics, adminApiKey: config.adminApiKey });
      const http = await listen(app, config, log);
      shutdown.add('http server', () => http.close());
      port = http.port;
    }

    return { leases, metrics, port, stop: (reason) => shutdown.run(reason) };
  } catch (error) {
    await shutdown.run('start-up failed');
    throw error;
  }
}
