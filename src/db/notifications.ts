import pg from 'pg';
import type { Logger } from '../logger.js';
import { notify } from './queries.js';

export interface Notifications {
  /**
   * Calls `listener` with the payload of every notification on `channel` and the process id of
   * the PostgreSQL backend that sent it, and with null after every reconnection (notifications
   * sent meanwhile may be lost).
   */
  subscribe(channel: string, listener: (payload: string | null, senderPid?: number) => void): () => void;
  /** Sends a notification on `channel`; rejects while the connection is down. */
  notify(channel: string, payload: string): Promise<void>;
  /** True while the connection is up and listening: only then does every notification arrive. */
  isListening(): boolean;
  close(): Promise<void>;
}

const RECONNECT_MAX_MS = 5_000;

/** The channels the service uses: the first is fed by sql/wake_waiters.sql. */
export const WAITERS_CHANNEL = 'token_lease_waiters';
export const CHANGES_CHANNEL = 'token_lease_changes';
/** An API client was revoked; the payload is its id (src/domain/clients.ts). */
export const CLIENTS_CHANNEL = 'token_lease_clients';
/** An API process heard a revocation; the payload is the client's id, sent by its listener. */
export const CLIENT_ACKS_CHANNEL = 'token_lease_client_acks';
/** The `application_name` of every listening connection, by which a revocation finds them. */
export const LISTENER_APPLICATION_NAME = 'token-lease-listener';

/**
 * LISTENs on a few channels over a dedicated connection (outside the pool), reconnecting with
 * backoff. Listeners must not depend on it alone: notifications sent while it reconnects are lost,
 * so it calls them once it is back, and callers keep a periodic re-check as well.
 */
export function listenForNotifications(options: {
  /** Builds the connection (main/ does), anew on each reconnection. */
  newClient: () => pg.Client;
  channels: readonly string[];
  log: Logger;
}): Notifications {
  const { log } = options;
  const listeners = new Map<string, Set<(payload: string | null, senderPid?: number) => void>>(
    options.channels.map((channel) => [channel, new Set()]),
  );
  let client: pg.Client | undefined;
  let closed = false;
  let attempt = 0;
  let retry: NodeJS.Timeout | undefined;

  const dispatch = (channel: string, payload: string | null, senderPid?: number) => {
    for (const listener of listeners.get(channel) ?? []) listener(payload, senderPid);
  };

  async function connect(): Promise<void> {
    if (closed) return;
    const next = options.newClient();
    next.on('notification', (message) => dispatch(message.channel, message.payload ?? '', message.processId));
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
      for (const channel of options.channels) {
        await next.query(`LISTEN ${pg.escapeIdentifier(channel)}`);
      }
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
    for (const channel of options.channels) dispatch(channel, null);
  }

  function scheduleReconnect(): void {
    if (closed) return;
    attempt += 1;
    retry = setTimeout(() => void connect(), Math.min(100 * 2 ** attempt, RECONNECT_MAX_MS));
    retry.unref();
  }

  void connect();

  return {
    subscribe(channel, listener) {
      const set = listeners.get(channel);
      if (set === undefined) throw new Error(`not listening on ${channel}`);
      set.add(listener);
      return () => set.delete(listener);
    },
    async notify(channel, payload) {
      if (client === undefined) throw new Error('the notification connection is down');
      await notify(client, { channel, payload });
    },
    isListening: () => client !== undefined,
    async close() {
      closed = true;
      clearTimeout(retry);
      const current = client;
      client = undefined;
      await current?.end().catch(() => undefined);
    },
  };
}
