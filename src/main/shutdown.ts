import type { Logger } from '../logger.js';

export interface Shutdown {
  /** Registers a cleanup step; steps run in reverse order of registration. */
  add(name: string, step: () => Promise<void> | void): void;
  /** Runs every step once, even if some fail; resolves true when all succeeded. */
  run(reason: string): Promise<boolean>;
}

/**
 * One memoised shutdown: every step runs even if an earlier one throws (as BullMQ's
 * Worker.close does), in reverse order of start-up, so the server stops taking requests before
 * the pool it uses is closed.
 */
export function createShutdown(log: Logger): Shutdown {
  const steps: Array<{ name: string; step: () => Promise<void> | void }> = [];
  let running: Promise<boolean> | undefined;

  async function runSteps(reason: string): Promise<boolean> {
    log.info({ reason }, 'shutting down');
    let ok = true;
    for (const { name, step } of steps) {
      try {
        await step();
        log.debug({ step: name }, 'shutdown step done');
      } catch (err) {
        ok = false;
        log.error({ err, step: name }, 'shutdown step failed');
      }
    }
    log.info({ ok }, 'shut down');
    return ok;
  }

  return {
    add(name, step) {
      steps.unshift({ name, step });
    },
    run(reason) {
      running ??= runSteps(reason);
      return running;
    },
  };
}
