import { performance } from 'node:perf_hooks';
import { timingSafeEqual } from 'node:crypto';
import { API_KEY_FORMAT, apiKeyHash, type ApiClient } from '../domain/clients.js';
import type { Logger } from '../logger.js';
import { InvalidCredentialError, type BearerVerifier, type Caller } from './caller.js';

// Verifying an API client's key (AUTH_MODE=api_key). The presented key is hashed and looked up
// by its hash; the stored hash is then compared in constant time. Keys found valid are kept in
// memory, by hash, so that a request costs no database read, on the read model's terms
// (src/http/readModel.ts): nothing is kept while this process is not hearing the others, a
// revocation (a NOTIFY on CLIENTS_CHANNEL, sent as it commits) drops the client at once, a
// reconnection drops everything, and nothing is kept longer than KEY_CACHE_MAX_AGE_MS. A key
// not found is never kept: it is looked up again on its next use.

/** The longest a valid key is kept without reading it again (the bound if a revocation is lost). */
export const KEY_CACHE_MAX_AGE_MS = 10_000;
/** How often, at most, this process records that a client's key was used. */
export const LAST_USED_INTERVAL_MS = 60_000;

export interface ApiKeyDeps {
  readonly findByKeyHash: (keyHash: Buffer) => Promise<{ client: ApiClient; keyHash: Buffer } | null>;
  /** Records a use of the client's key (last_used_at). */
  readonly touch: (clientId: string) => Promise<void>;
  /** Revocations: the client's id, or null after a reconnection (some may have been lost). */
  readonly revocations: {
    subscribe(listener: (clientId: string | null) => void): () => void;
    /** True while every revocation reaches this process. */
    isListening(): boolean;
  };
  readonly log: Logger;
  readonly now?: () => number;
}

interface Kept {
  readonly clientId: string;
  readonly keyHash: Buffer;
  readonly caller: Caller;
  readonly keptAt: number;
}

export function createApiKeyVerifier(deps: ApiKeyDeps): BearerVerifier & { close(): void } {
  const now = deps.now ?? (() => performance.now());
  const kept = new Map<string, Kept>();
  const lastTouched = new Map<string, number>();
  // Moves on every revocation heard: a lookup that began before one is not kept.
  let version = 0;

  const unsubscribe = deps.revocations.subscribe((clientId) => {
    version += 1;
    if (clientId === null) {
      kept.clear();
      return;
    }
    for (const [hash, entry] of kept) if (entry.clientId === clientId) kept.delete(hash);
  });

  function used(clientId: string): void {
    const at = now();
    const last = lastTouched.get(clientId);
    if (last !== undefined && at - last < LAST_USED_INTERVAL_MS) return;
    lastTouched.set(clientId, at);
    deps.touch(clientId).catch((err: unknown) => {
      lastTouched.delete(clientId);
      deps.log.warn({ err, clientId }, 'last use of an API key not recorded');
    });
  }

  /** The caller of the key with this hash if it is kept and not too old (only while listening). */
  function keptCaller(hash: Buffer, index: string): Caller | undefined {
    const entry = kept.get(index);
    if (entry === undefined || now() - entry.keptAt >= KEY_CACHE_MAX_AGE_MS || !timingSafeEqual(entry.keyHash, hash)) {
      return undefined;
    }
    used(entry.clientId);
    return entry.caller;
  }

  function known(key: string): Caller | undefined {
    if (!API_KEY_FORMAT.test(key) || !deps.revocations.isListening()) return undefined;
    const hash = apiKeyHash(key);
    return keptCaller(hash, hash.toString('base64'));
  }

  async function verify(key: string): Promise<Caller> {
    if (!API_KEY_FORMAT.test(key)) throw new InvalidCredentialError('the credential is not an API key');
    const hash = apiKeyHash(key);
    const index = hash.toString('base64');
    const listening = deps.revocations.isListening();
    const cached = listening ? keptCaller(hash, index) : undefined;
    if (cached !== undefined) return cached;
    const since = version;
    const found = await deps.findByKeyHash(hash);
    if (found === null || found.keyHash.length !== hash.length || !timingSafeEqual(found.keyHash, hash)) {
      kept.delete(index);
      throw new InvalidCredentialError('the API key is unknown or revoked');
    }
    const { client } = found;
    const caller: Caller = { kind: 'client', userId: null, clientId: client.id, scopes: new Set(client.scopes) };
    if (listening && version === since && deps.revocations.isListening()) {
      kept.set(index, { clientId: client.id, keyHash: found.keyHash, caller, keptAt: now() });
    }
    used(client.id);
    return caller;
  }

  return Object.assign(verify, {
    known,
    close() {
      unsubscribe();
      kept.clear();
    },
  });
}
