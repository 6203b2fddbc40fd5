export interface Periodic {
  /** Stops the timer and waits for a run in progress. */
  stop(): Promise<void>;
}

/**
 * Runs `run` now and then every `intervalMs` after the previous run ends, until stopped. The
 * trigger is a timer in this process, not a job in Redis, so it keeps running when Redis loses
 * its data or is down. `run` must not throw (it reports its own failures).
 */
export function startPeriodic(run: () => Promise<void>, intervalMs: number): Periodic {
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;
  let stopped = false;

  function schedule(delayMs: number): void {
    if (stopped) return;
    timer = setTimeout(() => {
      running = run().finally(() => {
        running = undefined;
        schedule(intervalMs);
      });
    }, delayMs);
  }

  schedule(0);
  return {
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await running;
    },
  };
}
