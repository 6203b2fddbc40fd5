import { ConfigError, loadConfig } from '../config.js';
import { createLogger } from '../logger.js';
import { startService } from './service.js';

// The process entry point: read the configuration once, start the role, stop on a signal.

async function main(): Promise<void> {
  let config;
  try {
    config = loadConfig(process.env);
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`token-lease: ${error.message}\n`);
      process.exit(1);
    }
    throw error;
  }
  const log = createLogger({ level: config.logLevel });
  log.info({ role: config.role }, 'starting');

  let service;
  try {
    service = await startService(config, log);
  } catch (err) {
    log.fatal({ err }, 'start-up failed');
    process.exit(1);
  }

  const stop = (signal: string) => {
    // A second signal, or a shutdown that hangs, ends the process at once.
    const timer = setTimeout(() => {
      log.error({ timeoutMs: config.shutdownTimeoutMs }, 'shutdown timed out');
      process.exit(1);
    }, config.shutdownTimeoutMs);
    timer.unref();
    void service.stop(signal).then((ok) => process.exit(ok ? 0 : 1));
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
}

await main();
