import { ipKeyGenerator } from 'express-rate-limit';
import type { Logger } from '../logger.js';

// Guesses at ADMIN_API_KEY (ADMIN_KEY_GUESSES_PER_MINUTE). Each credential an address sends that
// turns out to be neither the admin key nor valid otherwise counts against that address; once it
// has sent that many in a minute, no credential it sends is compared with the admin key until the
// minute is over: the right key is refused like any wrong one, so guessing it gains nothing.
// Its other credentials (a JWT, an API client's key) are checked as always.
//
// Counted in this process's memory, with nothing to do while no address has failed: the lease
// routes pay nothing, and several API processes each allow their own count. A refusal is known
// once the credential was checked, so guesses in flight together may pass the count by how many
// are in flight; after that, the address is shut out for the rest of the minute.

const WINDOW_MS = 60_000;
/** Addresses remembered at most; past this, those whose minute is over are forgotten first. */
const MAX_ADDRESSES = 100_000;

/** What the guard reads of a request: its address, as Express gives it (TRUST_PROXY). */
export type From = { readonly ip?: string | undefined };

export interface GuessGuard {
  /** Whether a credential from this request's address may be compared with the admin key now. */
  mayCompare(req: From): boolean;
  /** A credential from this request's address was refused. */
  refused(req: From): void;
}

export function createGuessGuard(options: { perMinute: number; log: Logger; now?: () => number }): GuessGuard | undefined {
  if (options.perMinute === 0) return undefined;
  const now = options.now ?? Date.now;
  const counts = new Map<string, { refused: number; until: number }>();
  const addressOf = (req: From) => ipKeyGenerator(req.ip ?? '');
  let purgeAt = 0;
  /** Forgets the addresses whose minute is over. */
  const forgetPast = (at: number) => {
    for (const [key, value] of counts) if (at >= value.until) counts.delete(key);
  };

  return {
    mayCompare(req) {
      if (counts.size === 0) return true;
      const at = now();
      // Once a minute, so that the map empties again.
      if (at >= purgeAt) {
        forgetPast(at);
        purgeAt = at + WINDOW_MS;
      }
      const count = counts.get(addressOf(req));
      return count === undefined || count.refused < options.perMinute || at >= count.until;
    },
    refused(req) {
      const address = addressOf(req);
      const at = now();
      let count = counts.get(address);
      if (count === undefined || at >= count.until) {
        if (counts.size >= MAX_ADDRESSES) forgetPast(at);
        if (counts.size >= MAX_ADDRESSES) return;
        count = { refused: 0, until: at + WINDOW_MS };
        counts.set(address, count);
      }
      count.refused += 1;
      if (count.refused === options.perMinute) {
        options.log.warn(
          { address, perMinute: options.perMinute },
          'admin key not compared for this address until its minute is over: too many refused credentials',
        );
      }
    },
  };
}
