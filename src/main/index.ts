import { setFlagsFromString } from 'node:v8';
import { ConfigError, loadConfig } from '../config.js';
import { createLogger } from '../logger.js';
import { isSupervisor, superviseCopies } from './cluster.js';
import { startService } from './service.js';

// The process entry point: read the configuration once, start the role, stop on a signal.

// After a full collection V8 lets the old generation grow to several times what is still live
// before the next one; under load that is request garbage promoted early, and the process kept
// ~100 MB of heap for ~30 MB live (RSS 165-190 MB after a minute of load). Growing by at most
// half of what is live keeps it near 135 MB at no measurable CPU cost. The factor is read at
// each collection, so setting it here, before serving, is enough.
setFlagsFromString('--heap-growing-percent=50');

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
  if (isSupervisor(config.apiProcesses)) {
    superviseCopies({ copies: config.apiProcesses, shutdownTimeoutMs: config.shutdownTimeoutMs, log });
    return;
  }
  log.info({ role: config.role }, 'starting');

  let service;
  try {
    service = await startService(config, log);
  } catch (err) {
    log.fatal({ err }, 'start-up failed');
    process.exit(1);
  }

  let stopping = false;
  const stop = (signal: string) => {
    // A second signal, or a shutdown that hangs, ends the process at once. (Handled here, not
    // left to the signal's default action: as PID 1 in a container, there is none.)
    if (stopping) {
      log.warn({ signal }, 'second signal during shutdown; exiting now');
      process.exit(1);
    }
    stopping = true;
    const timer = setTimeout(() => {
      log.error({ timeoutMs: config.shutdownTimeoutMs }, 'shutdown timed out');
      process.exit(1);
    }, config.shutdownTimeoutMs);
    timer.unref();
    void service.stop(signal).then((ok) => process.exit(ok ? 0 : 1));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

await main();
