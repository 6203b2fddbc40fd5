import { pino, type Logger } from 'pino';

export type { Logger };

/** The one root logger; children add leaseId, tokenId, jobId or reqId. */
export function createLogger(options: { level: string; name?: string }): Logger {
  return pino({
    name: options.name ?? 'token-lease',
    level: options.level,
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
  });
}
