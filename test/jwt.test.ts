import { randomUUID } from 'node:crypto';
import { exportJWK, exportSPKI, generateKeyPair, SignJWT, UnsecuredJWT } from 'jose';
import { describe, expect, it } from 'vitest';
import { createJwtVerifier, InvalidTokenError } from '../src/auth/jwt.js';

// The JWT check on its own, with real tokens signed by jose: what it accepts and what it refuses.

const SECRET = 'a-shared-secret-of-at-least-32-bytes!!';
const now = () => Math.floor(Date.now() / 1000);

function hs256(claims: Record<string, unknown>, secret = SECRET) {
  return new SignJWT(claims).setProtectedHeader({ alg: 'HS256' }).sign(new TextEncoder().encode(secret));
}

async function refused(verify: (token: string) => Promise<unknown>, token: string): Promise<string> {
  const error = await verify(token).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(InvalidTokenError);
  return (error as InvalidTokenError).reason;
}

describe('JWT verification with a shared secret (HS256)', () => {
  const verify = createJwtVerifier({ key: { kind: 'secret', secret: SECRET }, issuer: 'issuer-a', audience: 'token-lease' });
  const good = (more: Record<string, unknown> = {}) =>
    hs256({ sub: randomUUID(), exp: now() + 60, iss: 'issuer-a', aud: 'token-lease', ...more });

  it('accepts a valid token: the caller is its sub, with its scopes', async () => {
    const sub = randomUUID();
    const caller = await verify(await good({ sub: sub.toUpperCase(), scope: 'read admin' }));
    expect(caller).toMatchObject({ kind: 'user', userId: sub });
    expect([...caller.scopes]).toEqual(['read', 'admin']);
  });

  it('refuses a token it accepted before once its time is up: a verified token is not accepted past its exp', async () => {
    let clockMs = Date.now();
    const clocked = createJwtVerifier({ key: { kind: 'secret', secret: SECRET }, now: () => clockMs });
    const token = await hs256({ sub: randomUUID(), exp: Math.floor(clockMs / 1000) + 60 });
    expect(clocked.known(token)).toBeUndefined();
    await expect(clocked(token)).resolves.toMatchObject({ kind: 'user' });
    // Verified once, known at once from then on.
    expect(clocked.known(token)).toMatchObject({ kind: 'user' });
    await expect(clocked(token)).resolves.toMatchObject({ kind: 'user' });

    clockMs += 89_000; // within exp and the 30 s tolerance
    expect(clocked.known(token)).toMatchObject({ kind: 'user' });
    await expect(clocked(token)).resolves.toMatchObject({ kind: 'user' });
    clockMs += 2_000; // past both
    expect(clocked.known(token)).toBeUndefined();
    expect(await refused(clocked, token)).toBe('the token has expired');
  });

  it('accepts a token that was not valid yet once its nbf has come', async () => {
    let clockMs = Date.now();
    const clocked = createJwtVerifier({ key: { kind: 'secret', secret: SECRET }, now: () => clockMs });
    const nbf = Math.floor(clockMs / 1000) + 100;
    const token = await hs256({ sub: randomUUID(), nbf, exp: nbf + 60 });
    expect(await refused(clocked, token)).toBe('the token is not valid yet');
    clockMs = nbf * 1000;
    await expect(clocked(token)).resolves.toMatchObject({ kind: 'user' });
  });

  it('refuses an expired token, beyond 30 s of tolerance, and accepts one within it', async () => {
    expect(await refused(verify, await good({ exp: now() - 31 }))).toBe('the token has expired');
    await expect(verify(await good({ exp: now() - 10 }))).resolves.toMatchObject({ kind: 'user' });
  });

  it('refuses a token that is not valid yet', async () => {
    expect(await refused(verify, await good({ nbf: now() + 120 }))).toBe('the token is not valid yet');
  });

  it('refuses a wrong signature, issuer or audience, and a token without exp', async () => {
    expect(await refused(verify, await hs256({ sub: randomUUID(), exp: now() + 60, iss: 'issuer-a', aud: 'token-lease' }, `${SECRET}x`))).toBe(
      "the token's signature does not verify",
    );
    expect(await refused(verify, await good({ iss: 'issuer-b' }))).toBe("the token's iss claim is not accepted");
    expect(await refused(verify, await good({ aud: 'another' }))).toBe("the token's aud claim is not accepted");
    const noExp = await new SignJWT({ sub: randomUUID(), iss: 'issuer-a', aud: 'token-lease' })
      .setProtectedHeader({ alg: 'HS256' })
      .sign(new TextEncoder().encode(SECRET));
    expect(await refused(verify, noExp)).toBe("the token's exp claim is not accepted");
  });

  it('refuses alg none, a sub that is not a user id, and garbage', async () => {
    const unsecured = new UnsecuredJWT({ sub: randomUUID(), iss: 'issuer-a', aud: 'token-lease' }).setExpirationTime('1m').encode();
    expect(await refused(verify, unsecured)).toBe("the token's algorithm is not accepted");
    expect(await refused(verify, await good({ sub: 'alice' }))).toBe("the token's sub must be a user id (a UUID)");
    expect(await refused(verify, 'not.a.token')).toBe('the token cannot be read');
  });
});

describe('JWT verification with a public key', () => {
  it('accepts RS256 from the PEM key, and refuses an HS256 token made with that public key as its secret', async () => {
    const { publicKey, privateKey } = await generateKeyPair('RS256', { extractable: true });
    const pem = await exportSPKI(publicKey);
    const verify = createJwtVerifier({ key: { kind: 'public', pem } });
    const sub = randomUUID();
    const signed = await new SignJWT({ sub }).setProtectedHeader({ alg: 'RS256' }).setExpirationTime('1m').sign(privateKey);
    await expect(verify(signed)).resolves.toMatchObject({ userId: sub });

    const confused = await hs256({ sub, exp: now() + 60 }, pem);
    expect(await refused(verify, confused)).toBe("the token's algorithm is not accepted");
  });

  it('accepts EdDSA from a PEM key and ES256 from a JWKS, each only with its own key', async () => {
    const ed = await generateKeyPair('EdDSA', { extractable: true });
    const edVerify = createJwtVerifier({ key: { kind: 'public', pem: await exportSPKI(ed.publicKey) } });
    const sub = randomUUID();
    await expect(
      edVerify(await new SignJWT({ sub }).setProtectedHeader({ alg: 'EdDSA' }).setExpirationTime('1m').sign(ed.privateKey)),
    ).resolves.toMatchObject({ userId: sub });

    const es = await generateKeyPair('ES256', { extractable: true });
    const other = await generateKeyPair('ES256', { extractable: true });
    const jwk = { ...(await exportJWK(es.publicKey)), kid: 'k1', alg: 'ES256' };
    const verify = createJwtVerifier({ key: { kind: 'jwks', jwks: { keys: [jwk] } } });
    const token = (key: Parameters<SignJWT['sign']>[0]) =>
      new SignJWT({ sub }).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).setExpirationTime('1m').sign(key);
    await expect(verify(await token(es.privateKey))).resolves.toMatchObject({ userId: sub });
    expect(await refused(verify, await token(other.privateKey))).toBe("the token's signature does not verify");
  });
});
