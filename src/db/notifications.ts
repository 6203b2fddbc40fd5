import pg from 'pg';
import type { Logger } from '../logger.js';

export interface Notifications {
  /** Calls `listener` on every notification, and after every reconnection (some may be lost). */
  subscribe(listener: () => void): () => void;
  close(): Promise<void>;
}

const RECONNECT_MAX_MS = 5_000;

/**
 * LISTENs on one channel over a dedicated connection (outside the pool), reconnecting with
 * backoff. Listeners must not depend on it alone: notifications sent while it reconnects are lost,
 * so it calls them once it is back, and callers keep a periodic re-check as well.
 */
export function listenForNotifications(options: {
  connectionString: string;
  channel: string;
  log: Logger;
}): Notifications {
  const { log } = options;
  const listeners = new Set<() => void>();
  let client: pg.Client | undefined;
  let closed = false;
  let attempt = 0;
  let retry: NodeJS.Timeout | undefined;

  const notify = () => {
    for (const listener of listeners) listener();
  };

  async function connect(): Promise<void> {
    if (closed) return;
    const next = new pg.Client({
      connectionString: options.connectionString,
      application_name: 'token-lease-listener',
      keepAlive: true,
    });
    next.on('notification', notify);
    next.on('error', (err) => {
      log.warn({ err }, 'notification connection failed');
    });
    next.on('end', () => {
      if (client === next) {
        client = undefined;
        scheduleReconnect();
      }
    });
    try {
      await next.connect();
      await next.query(`LISTEN ${pg.escapeIdentifier(options.channel)}`);
    } catch (err) {
      log.warn({ err, attempt }, 'notification connection could not be opened');
      await next.end().catch(() => undefined);
      scheduleReconnect();
      return;
    }
    // close() may have run while we connected.
    // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition
    if (closed) {
      await next.end();
      return;
    }
    client = next;
    if (attempt > 0) log.info('notification connection restored');
    attempt = 0;
    notify();
  }

  function scheduleReconnect(): void {
    if (closed) return;
    attempt += 1;
    retry = setTimeout(() => void connect(), Math.min(100 * 2 ** attempt, RECONNECT_MAX_MS));
    retry.unref();
  }

  void connect();

  return {
    subscribe(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    async close() {
      closed = true;
      clearTimeout(retry);
      const current = client;
      client = undefined;
      await current?.end().catch(() => undefined);
    },
  };
}
