// Who is calling, once their credential is verified: the one shape every credential check (the
// admin key, a JWT, an API client's key) produces, and the routes read.

export type Scope = 'read' | 'admin' | 'lease';

export interface Caller {
  /** anonymous: AUTH_MODE=none without credentials; user: a JWT's sub; client: an API key; admin: ADMIN_API_KEY. */
  readonly kind: 'anonymous' | 'user' | 'client' | 'admin';
  /** The user the caller is (a JWT's sub); null for anyone else. */
  readonly userId: string | null;
  /** The API client the caller is; null for anyone else. */
  readonly clientId: string | null;
  readonly scopes: ReadonlySet<string>;
}

export const ANONYMOUS: Caller = { kind: 'anonymous', userId: null, clientId: null, scopes: new Set() };

export const ADMIN: Caller = { kind: 'admin', userId: null, clientId: null, scopes: new Set(['admin', 'read', 'lease']) };

/** Whether the caller holds `scope`; admin holds every scope. */
export function hasScope(caller: Caller, scope: Scope): boolean {
  return caller.scopes.has(scope) || caller.scopes.has('admin');
}

/** A bearer credential (of AUTH_MODE's kind) is refused; `reason` goes into the answer, never the credential. */
export class InvalidCredentialError extends Error {
  constructor(readonly reason: string) {
    super(reason);
    this.name = new.target.name;
  }
}

/** Checks a bearer credential of AUTH_MODE's kind: the caller, or InvalidCredentialError. */
export interface BearerVerifier {
  (credential: string): Promise<Caller>;
  /**
   * The caller of a credential accepted before and still good, at once (no promise, no hashing
   * of it as an admin key), or undefined. A client sends the same credential with every request;
   * on a cheap request (the token list) the full check with its promise cost more than the rest.
   */
  known(credential: string): Caller | undefined;
}
