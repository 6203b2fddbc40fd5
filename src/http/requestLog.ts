import { ERRORS } from '../errors.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';

// One log line and one duration sample per answered request, for Express's app (app.ts) and the
// fast lane (fastLane.ts) alike: 5xx at error; the rest at info, with the error code of a 4xx,
// except what logLevelOf puts at debug.

/** One answered request. `route` is the route's pattern ('unmatched' for none); `ms` runs to 'finish'. */
export interface AnsweredRequest {
  readonly reqId: string;
  readonly method: string;
  readonly url: string;
  readonly route: string;
  readonly status: number;
  readonly code: string | undefined;
  readonly ms: number;
}

export type RequestRecorder = (request: AnsweredRequest) => void;

/**
 * Refusals that are the service working as intended, at a rate set by the load (a full pool
 * refuses every newcomer, a caller in a retry loop runs over its limit), and the probes a
 * platform sends every few seconds: logged at debug, and counted by the metrics.
 */
const EXPECTED: ReadonlySet<string | undefined> = new Set([ERRORS.pool_exhausted.code, ERRORS.rate_limited.code]);
const PROBES: ReadonlySet<string> = new Set(['/healthz', '/readyz', '/metrics']);

function logLevelOf(status: number, code: string | undefined, route: string): 'error' | 'info' | 'debug' {
  if (status >= 500) return 'error';
  if (EXPECTED.has(code) || PROBES.has(route)) return 'debug';
  return 'info';
}

interface Observer {
  observe(value: number): void;
}

export function requestRecorder(log: Logger, metrics: Metrics): RequestRecorder {
  // One histogram child per (method, route, status) saves prom-client's labels() lookup per request.
  const durations = new Map<string, Observer>();
  const durationOf = (method: string, route: string, status: number): Observer => {
    const key = `${method} ${status} ${route}`;
    let child = durations.get(key);
    if (child === undefined) {
      child = metrics.httpDuration.labels({ method, route, status });
      durations.set(key, child);
    }
    return child;
  };

  return ({ reqId, method, url, route, status, code, ms }) => {
    durationOf(method, route, status).observe(ms / 1e3);
    const level = logLevelOf(status, code, route);
    if (log.isLevelEnabled(level)) log[level]({ reqId, method, url, status, code, ms }, 'request');
  };
}
