// API clients (AUTH_MODE=api_key): applications that call the service with a key of their own,
// with scopes, revocable one by one. A key is 256 random bits, shown once when its client is
// made; only its SHA-256 is stored. A revocation is announced on CLIENTS_CHANNEL in the same
// transaction, so every API process drops the key from its cache (src/auth/apiKeys.ts) and then
// acknowledges on CLIENT_ACKS_CHANNEL; the revocation answers once every API process listening
// when it committed has acknowledged, so that none of them accepts the key after the answer.

import { createHash, randomBytes } from 'node:crypto';
import * as sql from '../db/clients.js';
import { CLIENTS_CHANNEL, LISTENER_APPLICATION_NAME } from '../db/notifications.js';
import type { Pool } from '../db/pool.js';
import { notify } from '../db/queries.js';
import { withTransaction } from '../db/tx.js';
import { NotFoundError } from '../errors.js';
import type { Logger } from '../logger.js';

export const CLIENT_SCOPES = ['lease', 'read', 'admin'] as const;
export type ClientScope = (typeof CLIENT_SCOPES)[number];

export interface ApiClient {
  readonly id: string;
  readonly name: string;
  readonly scopes: readonly ClientScope[];
  readonly createdAt: Date;
  /** When its key was last used, to within a minute; null if never. */
  readonly lastUsedAt: Date | null;
  readonly revokedAt: Date | null;
}

/** What every key starts with, so that a key found in a file or a log says what it is. */
export const API_KEY_PREFIX = 'tlk_';
const KEY_BYTES = 32;
/** `tlk_` and 43 base64url characters: 256 random bits. */
export const API_KEY_FORMAT = /^tlk_[A-Za-z0-9_-]{43}$/;

export function newApiKey(): string {
  return `${API_KEY_PREFIX}${randomBytes(KEY_BYTES).toString('base64url')}`;
}

/** What is stored of a key, and what a presented key is looked up by. */
export function apiKeyHash(key: string): Buffer {
  return createHash('sha256').update(key, 'utf8').digest();
}

function toClient(row: sql.ApiClientRow): ApiClient {
  return {
    id: row.id,
    name: row.name,
    scopes: row.scopes.filter((s): s is ClientScope => (CLIENT_SCOPES as readonly string[]).includes(s)),
    createdAt: row.created_at,
    lastUsedAt: row.last_used_at,
    revokedAt: row.revoked_at,
  };
}

/** The API processes' acknowledgements of revocations (src/main/service.ts sends them). */
export interface RevocationAcks {
  /** Calls `listener` for each acknowledgement heard: the client and the acknowledging backend. */
  subscribe(listener: (clientId: string, listenerPid: number) => void): () => void;
  /**
   * The longest a revocation waits for them: the longest an API process keeps a key without
   * reading it again, after which no process can hold it anyway.
   */
  readonly timeoutMs: number;
}

/**
 * Hears the acknowledgements of one revocation from the moment it is called (before the
 * revocation commits, so that none is missed); `wait` resolves when each of `pids` has
 * acknowledged or the time is up, with those that had not.
 */
function acknowledgementsOf(acks: RevocationAcks, clientId: string) {
  const heard = new Set<number>();
  let onHeard = () => {};
  const stop = acks.subscribe((id, pid) => {
    if (id !== clientId) return;
    heard.add(pid);
    onHeard();
  });
  return {
    stop,
    async wait(pids: readonly number[]): Promise<number[]> {
      const silent = () => pids.filter((pid) => !heard.has(pid));
      if (silent().length > 0) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, acks.timeoutMs);
          onHeard = () => {
            if (silent().length > 0) return;
            clearTimeout(timer);
            resolve();
          };
        });
      }
      return silent();
    },
  };
}

export function createApiClients(deps: { pool: Pool; acks?: RevocationAcks | undefined; log?: Logger | undefined }) {
  const { pool, acks } = deps;
  return {
    /** Makes a client; the key is in this answer and nowhere else. */
    async create(args: { name: string; scopes: readonly ClientScope[] }): Promise<{ client: ApiClient; key: string }> {
      const key = newApiKey();
      const row = await sql.insertApiClient(pool, { name: args.name, scopes: [...new Set(args.scopes)], keyHash: apiKeyHash(key) });
      return { client: toClient(row), key };
    },

    async list(): Promise<ApiClient[]> {
      return (await sql.listApiClients(pool)).map(toClient);
    },

    /**
     * Revokes the client's key in every API process, answering once each has acknowledged (see
     * above; without `acks`, as soon as it commits); again, answers the same.
     */
    async revoke(clientId: string): Promise<ApiClient & { readonly revokedAt: Date }> {
      const acknowledgements = acks === undefined ? undefined : acknowledgementsOf(acks, clientId);
      try {
        const client = await withTransaction(pool, async (tx) => {
          const row = await sql.revokeApiClient(tx, clientId);
          if (row === null) throw new NotFoundError({ client_id: clientId });
          const { revoked_at: revokedAt } = row;
          if (revokedAt === null) throw new Error('a revoked client without revoked_at');
          // Sent when the revocation commits, and only then.
          await notify(tx, { channel: CLIENTS_CHANNEL, payload: row.id });
          return { ...toClient(row), revokedAt };
        });
        // Read after the commit: every connection listening when it committed is among them. One
        // that began listening later never hears this revocation (it read the key revoked, or keeps
        // nothing from before); the wait for it ends with the time.
        const listeners = acknowledgements === undefined ? [] : await sql.listenerPids(pool, LISTENER_APPLICATION_NAME);
        const silent = (await acknowledgements?.wait(listeners)) ?? [];
        if (silent.length > 0) {
          deps.log?.warn({ clientId, listenerPids: silent }, 'API processes did not acknowledge a revocation in time');
        }
        return client;
      } finally {
        acknowledgements?.stop();
      }
    },

    /** The client a key belongs to, if the key is known and not revoked, with the stored hash. */
    async findByKeyHash(keyHash: Buffer): Promise<{ client: ApiClient; keyHash: Buffer } | null> {
      const row = await sql.findApiClientByKeyHash(pool, keyHash);
      return row === null ? null : { client: toClient(row), keyHash: row.key_hash };
    },

    /** Records that the client's key was used now. */
    touch: (clientId: string) => sql.touchApiClient(pool, clientId),
  };
}

export type ApiClients = ReturnType<typeof createApiClients>;
