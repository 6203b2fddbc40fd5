import { pino, type DestinationStream, type Logger } from 'pino';

export type { Logger };

/** The one root logger; children add leaseId, tokenId, jobId or reqId. Lines go to stdout, or to `destination` (tests). */
export function createLogger(options: { level: string; name?: string; destination?: DestinationStream }): Logger {
  return pino(
    {
      name: options.name ?? 'token-lease',
      level: options.level,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      serializers: { err: serializeError },
    },
    options.destination,
  );
}

/**
 * pino's error serializer, without the `client` that pg-pool attaches to an idle connection's
 * error: that is the whole connection object, prepared statements and type tables included.
 */
function serializeError(err: Error): ReturnType<typeof pino.stdSerializers.err> {
  const serialized = pino.stdSerializers.err(err);
  delete serialized['client'];
  return serialized;
}
