import cluster, { type Worker } from 'node:cluster';
import type { Logger } from '../logger.js';

// API_PROCESSES > 1: this process becomes a supervisor that runs that many copies of the
// service (each with its ROLE, its own database pool and connections) behind one port, with
// node:cluster handing connections out in turn. One Node process serves HTTP on one core; the
// copies use the others. The supervisor opens no connection of its own.
//
// They stop together: a signal to the supervisor goes to every copy, and the supervisor exits
// once all have (0 if all stopped cleanly). A copy that exits by itself takes the others down
// (status 1), leaving the restart to whatever runs the service, as for a single process.

export function superviseCopies(options: { copies: number; shutdownTimeoutMs: number; log: Logger }): void {
  const { log } = options;
  const copies = new Set<Worker>();
  let stopping = false;
  let failed = false;

  const stopAll = (signal: NodeJS.Signals) => {
    for (const copy of copies) copy.process.kill(signal);
  };

  const stop = (signal: NodeJS.Signals, why: string) => {
    if (stopping) {
      log.warn({ signal }, 'second signal during shutdown; stopping every copy now');
      stopAll('SIGKILL');
      process.exit(1);
    }
    stopping = true;
    log.info({ why, copies: copies.size }, 'stopping every copy');
    stopAll(signal);
    const timer = setTimeout(() => {
      log.error({ timeoutMs: options.shutdownTimeoutMs }, 'copies did not stop in time');
      stopAll('SIGKILL');
      process.exit(1);
    }, options.shutdownTimeoutMs + 1_000);
    timer.unref();
  };

  cluster.on('exit', (copy, code, signal) => {
    copies.delete(copy);
    const clean = code === 0;
    if (!clean) failed = true;
    if (!stopping) {
      log.error({ pid: copy.process.pid, code, signal }, 'a copy of the service exited; stopping the others');
      stop('SIGTERM', 'a copy exited');
    }
    if (copies.size === 0) process.exit(failed ? 1 : 0);
  });

  for (let i = 0; i < options.copies; i += 1) copies.add(cluster.fork());
  log.info({ copies: options.copies }, 'supervising copies of the service');
  process.on('SIGTERM', () => stop('SIGTERM', 'SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT', 'SIGINT'));
}

/** Whether this process should supervise copies rather than serve. */
export function isSupervisor(copies: number): boolean {
  return copies > 1 && cluster.isPrimary;
}
