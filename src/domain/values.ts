// Token values: the secret a token may carry (a licence key, an API key, a seat credential),
// given only to its holder. A value is found by its SHA-256 (`tokens.value_digest`) and kept
// sealed (`tokens.value_sealed`), so that a dump of the database alone does not reveal it when
// TOKEN_VALUE_KEY is set. The sealed form is one format byte, then:
//
//   0  the value in clear (UTF-8): TOKEN_VALUE_KEY was not set when it was stored
//   1  AES-256-GCM: the key's id (the first 4 bytes of its SHA-256), a random 12-byte IV, the
//      16-byte tag, then the ciphertext
//
// A value sealed under one key cannot be opened under another (nor without one): the key's id
// says which, and the start refuses a key that cannot open the stored values.

import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';

/** At most 256 printable ASCII characters, without spaces. */
export const VALUE_FORMAT = /^[\x21-\x7e]{1,256}$/;
export const MAX_VALUE_LENGTH = 256;

/** Generated values: 192 random bits, URL-safe (base64url, 32 characters). */
const GENERATED_BYTES = 24;

const PLAIN = 0;
const AES_256_GCM = 1;
const KEY_ID_BYTES = 4;
const IV_BYTES = 12;
const TAG_BYTES = 16;
const HEADER_BYTES = 1 + KEY_ID_BYTES + IV_BYTES + TAG_BYTES;

export function newValue(): string {
  return randomBytes(GENERATED_BYTES).toString('base64url');
}

/** What a value is found by: its SHA-256. */
export function valueDigest(value: string): Buffer {
  return createHash('sha256').update(value, 'utf8').digest();
}

/** Why `value` cannot be a token's value, or null when it can. */
export function valueProblem(value: string): string | null {
  if (value.length === 0) return 'empty';
  if (value.length > MAX_VALUE_LENGTH) return `longer than ${MAX_VALUE_LENGTH} characters`;
  if (!VALUE_FORMAT.test(value)) return 'not printable ASCII without spaces';
  return null;
}

/** The key's id, stored with each value sealed under it. */
export function keyId(key: Buffer): Buffer {
  return createHash('sha256').update(key).digest().subarray(0, KEY_ID_BYTES);
}

export class SealedValueError extends Error {
  constructor(reason: string) {
    super(`a token's value cannot be opened: ${reason}`);
    this.name = 'SealedValueError';
  }
}

/** Seals and opens values with TOKEN_VALUE_KEY (32 bytes), or in clear when it is null. */
export function createValueSealer(key: Buffer | null) {
  if (key !== null && key.length !== 32) throw new Error('TOKEN_VALUE_KEY must be 32 bytes');
  const id = key === null ? null : keyId(key);
  return {
    /** The id of the key values are sealed under; null: stored in clear. */
    keyId: id,

    seal(value: string): Buffer {
      if (key === null || id === null) return Buffer.concat([Buffer.from([PLAIN]), Buffer.from(value, 'utf8')]);
      const iv = randomBytes(IV_BYTES);
      const cipher = createCipheriv('aes-256-gcm', key, iv);
      const ciphertext = Buffer.concat([cipher.update(value, 'utf8'), cipher.final()]);
      return Buffer.concat([Buffer.from([AES_256_GCM]), id, iv, cipher.getAuthTag(), ciphertext]);
    },

    open(sealed: Buffer): string {
      if (sealed[0] === PLAIN) return sealed.subarray(1).toString('utf8');
      if (sealed[0] !== AES_256_GCM || sealed.length < HEADER_BYTES) throw new SealedValueError('unknown format');
      if (key === null || id === null) throw new SealedValueError('sealed with TOKEN_VALUE_KEY, which is not set');
      if (!sealed.subarray(1, 1 + KEY_ID_BYTES).equals(id)) throw new SealedValueError('sealed with another TOKEN_VALUE_KEY');
      const ivAt = 1 + KEY_ID_BYTES;
      const tagAt = ivAt + IV_BYTES;
      const decipher = createDecipheriv('aes-256-gcm', key, sealed.subarray(ivAt, tagAt));
      decipher.setAuthTag(sealed.subarray(tagAt, HEADER_BYTES));
      try {
        return Buffer.concat([decipher.update(sealed.subarray(HEADER_BYTES)), decipher.final()]).toString('utf8');
      } catch {
        throw new SealedValueError('it does not authenticate');
      }
    },

  };
}

export type ValueSealer = ReturnType<typeof createValueSealer>;

/** Opens values stored in clear only: for a process without TOKEN_VALUE_KEY. */
export const CLEAR_VALUES: ValueSealer = createValueSealer(null);
