import { createHash, randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../src/config.js';
import { newUserId, startTestService, usagesOf, type TestService } from './helpers.js';

// What a token carries: secret values given only to their holder and sealed at rest, tokens
// generated and imported with values, a downstream service's check and its redeem-once, and
// tokens retired from their pool.

const ADMIN_KEY = 'values-admin-key-0123456789';
const VALUE_KEY = randomBytes(32).toString('base64');
const admin = { Authorization: `Bearer ${ADMIN_KEY}` };

let t: TestService;
const logLines: string[] = [];

beforeAll(async () => {
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      logLines.push(chunk.toString());
      done();
    },
  });
  t = await startTestService(
    { ROLE: 'all', POOL_SIZE: '2', ADMIN_API_KEY: ADMIN_KEY, TOKEN_VALUE_KEY: VALUE_KEY, LEASE_TTL_MS: '60000' },
    { log: pino({ level: 'debug' }, sink) },
  );
});
afterAll(async () => {
  await t.close();
});

let pools = 0;
/** A new pool of `size` bare tokens, named for the test. */
async function newPool(size = 0): Promise<string> {
  const name = `values-${++pools}`;
  const res = await t.http.post('/api/admin/pools').set(admin).send({ name, size });
  expect(res.status).toBe(201);
  return name;
}

const generate = (pool: string, count: number) =>
  t.http.post(`/api/admin/pools/${pool}/tokens/generate`).set(admin).send({ count });
const importText = (pool: string, text: string, key?: string) => {
  const req = t.http.post(`/api/admin/pools/${pool}/tokens/import`).set(admin).set('Content-Type', 'text/plain');
  return (key === undefined ? req : req.set('Idempotency-Key', key)).send(text);
};
const activate = (pool: string, userId: string) => t.http.post(`/api/pools/${pool}/tokens/activate`).send({ user_id: userId });
const redeem = (userId: string, value: string) => t.http.post('/api/tokens/redeem').send({ user_id: userId, value });
const retire = (tokenId: string, body?: object) => {
  const req = t.http.post(`/api/admin/tokens/${tokenId}/retire`).set(admin);
  return body === undefined ? req : req.send(body);
};

describe('generate', () => {
  it('adds tokens with random URL-safe values of at least 128 bits, and grows the pool', async () => {
    const pool = await newPool(1);

    const res = await generate(pool, 3);

    expect(res.status).toBe(201);
    const ids = res.body.data.token_ids as string[];
    expect(ids).toHaveLength(3);
    const { rows } = await t.db.pool.query<{ id: string; value_digest: Buffer }>(
      'SELECT id, value_digest FROM tokens WHERE id = ANY($1)',
      [ids],
    );
    expect(rows).toHaveLength(3);
    expect(new Set(rows.map((r) => r.value_digest.toString('hex'))).size).toBe(3);
    expect((await t.http.get(`/api/pools/${pool}`)).body.data).toMatchObject({ size: 4, free: 4 });
    expect((await t.http.get(`/api/pools/${pool}/tokens`)).body.data).toHaveLength(4);

    // Activations take the bare token first (position order), then the generated ones.
    const values: string[] = [];
    for (let i = 0; i < 4; i += 1) {
      const lease = (await activate(pool, newUserId())).body.data;
      if (lease.value !== undefined) values.push(lease.value as string);
    }
    expect(values).toHaveLength(3);
    for (const value of values) expect(value).toMatch(/^[A-Za-z0-9_-]{22,}$/);
    expect(new Set(values).size).toBe(3);
  });

  it('refuses a count out of range, and a pool that does not exist', async () => {
    const pool = await newPool();
    for (const count of [0, 10_001, 1.5, '3']) {
      const res = await t.http.post(`/api/admin/pools/${pool}/tokens/generate`).set(admin).send({ count });
      expect(res.status, String(count)).toBe(422);
      expect(res.body.error.code).toBe('validation_failed');
    }
    expect((await generate('nope', 1)).status).toBe(404);
    expect((await t.http.post(`/api/admin/pools/${pool}/tokens/generate`).send({ count: 1 })).status).toBe(401);
  });

  it('answers a retry with the same Idempotency-Key with the first tokens', async () => {
    const pool = await newPool();
    const first = await generate(pool, 2).set('Idempotency-Key', 'gen-1');
    const again = await generate(pool, 2).set('Idempotency-Key', 'gen-1');

    expect(first.status).toBe(201);
    expect(again.status).toBe(201);
    expect(again.body).toEqual(first.body);
    expect((await t.http.get(`/api/pools/${pool}`)).body.data.size).toBe(2);
    const other = await generate(pool, 3).set('Idempotency-Key', 'gen-1');
    expect(other.status).toBe(422);
    expect(other.body.error.code).toBe('idempotency_key_reused');
  });
});

describe('secret values', () => {
  it('are sealed at rest: no column holds a value in clear, and the digest finds it', async () => {
    const pool = await newPool();
    await importText(pool, 'licence-KEY-0001\n');
    const lease = (await activate(pool, newUserId())).body.data;
    expect(lease.value).toBe('licence-KEY-0001');

    const { rows } = await t.db.pool.query<{ row: string; value_sealed: Buffer; value_digest: Buffer }>(
      'SELECT t::text AS row, value_sealed, value_digest FROM tokens t WHERE id = $1',
      [lease.token_id],
    );
    const [row] = rows;
    const clear = Buffer.from('licence-KEY-0001');
    expect(row?.row).not.toContain('licence-KEY-0001');
    expect(row?.row).not.toContain(clear.toString('hex'));
    expect(row?.value_sealed.includes(clear)).toBe(false);
    expect(row?.value_digest.equals(createHash('sha256').update(clear).digest())).toBe(true);
  });

  it('go only to the holder: in activate and renew, in no list, detail, history, log line or metric', async () => {
    const pool = await newPool();
    const value = `secret-${randomBytes(8).toString('hex')}`;
    await importText(pool, `${value}\n`);
    const user = newUserId();
    const activated = await activate(pool, user);
    expect(activated.body.data.value).toBe(value);
    const { token_id: tokenId, lease_id: leaseId, fence } = activated.body.data;
    const again = await activate(pool, user);
    expect(again.body.data.value).toBe(value);
    const renewed = await t.http.post(`/api/tokens/${tokenId}/renew`).send({ user_id: user, lease_id: leaseId });
    expect(renewed.status).toBe(200);
    expect(renewed.body.data.value).toBe(value);

    const reads: Array<[string, () => PromiseLike<{ status: number; text: string }>]> = [
      ['list', () => t.http.get('/api/tokens')],
      ['pool list', () => t.http.get(`/api/pools/${pool}/tokens`)],
      ['details', () => t.http.get(`/api/tokens/${tokenId}`)],
      ['history', () => t.http.get(`/api/tokens/${tokenId}/history`)],
      ['pools', () => t.http.get('/api/pools')],
      ['pool', () => t.http.get(`/api/pools/${pool}`)],
      ['admin pools', () => t.http.get('/api/admin/pools').set(admin)],
      ['check', () => t.http.post('/api/tokens/check').send({ value })],
      ['validate', () => t.http.post(`/api/tokens/${tokenId}/validate`).send({ user_id: user, fence })],
      ['release', () => t.http.post(`/api/tokens/${tokenId}/release`).send({ user_id: user, lease_id: leaseId })],
      ['history after', () => t.http.get(`/api/tokens/${tokenId}/history`)],
      ['retire', () => t.http.post(`/api/admin/tokens/${tokenId}/retire`).set(admin)],
      ['metrics', () => t.http.get('/metrics')],
    ];
    for (const [label, read] of reads) {
      const res = await read();
      expect(res.status, label).toBeLessThan(300);
      expect(res.text, label).not.toContain(value);
    }
    expect(logLines.length).toBeGreaterThan(0);
    expect(logLines.filter((line) => line.includes(value))).toEqual([]);
  });

  it('of tokens without one: activate answers no value, as before', async () => {
    const pool = await newPool(1);
    const lease = (await activate(pool, newUserId())).body.data;
    expect(lease).not.toHaveProperty('value');
  });
});

describe('import', () => {
  it('stores each value on its own, in input order, as text/plain: stored, duplicate or invalid', async () => {
    const pool = await newPool();
    const long = 'x'.repeat(257);
    const text = ['alpha-1', '', 'has space', 'alpha-1', long, '   ', 'beta-2\r', 'naïve'].join('\n');

    const res = await importText(pool, text);

    expect(res.status).toBe(200);
    const { items, totals } = res.body.data;
    expect(items.map((i: { line: number; outcome: string }) => [i.line, i.outcome])).toEqual([
      [1, 'stored'],
      [3, 'invalid'],
      [4, 'duplicate'],
      [5, 'invalid'],
      [7, 'stored'],
      [8, 'invalid'],
    ]);
    expect(items[0]).toMatchObject({ value: 'alpha-1', reason: null, token_id: expect.any(String) });
    expect(items[1]).toMatchObject({ value: 'has space', reason: 'not printable ASCII without spaces', token_id: null });
    expect(items[3].reason).toBe('longer than 256 characters');
    expect(items[4].value).toBe('beta-2');
    expect(totals).toEqual({ stored: 2, duplicate: 1, invalid: 3 });
    const { rows } = await t.db.pool.query('SELECT 1 FROM tokens t JOIN pools p ON p.id = t.pool_id WHERE p.name = $1', [pool]);
    expect(rows).toHaveLength(2);
    expect((await t.http.get(`/api/pools/${pool}`)).body.data.size).toBe(2);
  });

  it('takes JSON too, and a value already in another pool is a duplicate', async () => {
    const other = await newPool();
    await importText(other, 'shared-value\n');
    const pool = await newPool();

    const res = await t.http
      .post(`/api/admin/pools/${pool}/tokens/import`)
      .set(admin)
      .send({ values: ['gamma-3', 42, 'shared-value', '', 'gamma-3', 'delta-4'] });

    expect(res.status).toBe(200);
    expect(res.body.data.items.map((i: { outcome: string; reason: string | null }) => [i.outcome, i.reason])).toEqual([
      ['stored', null],
      ['invalid', 'not a string'],
      ['duplicate', null],
      ['invalid', 'empty'],
      ['duplicate', null],
      ['stored', null],
    ]);
    expect(res.body.data.items.map((i: { line: number }) => i.line)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(res.body.data.totals).toEqual({ stored: 2, duplicate: 2, invalid: 2 });
  });

  it("answers a retry with the same Idempotency-Key with the first import's result, storing nothing again", async () => {
    const pool = await newPool();
    const first = await importText(pool, 'epsilon-5\nepsilon-6\n', 'import-1');
    const retried = await importText(pool, 'epsilon-5\nepsilon-6\n', 'import-1');

    expect(first.body.data.totals).toEqual({ stored: 2, duplicate: 0, invalid: 0 });
    expect(retried.status).toBe(200);
    expect(retried.body).toEqual(first.body);
    const { rows } = await t.db.pool.query('SELECT answer::text FROM idempotent_requests WHERE key = $1', ['import-1']);
    expect(JSON.stringify(rows)).not.toContain('epsilon-5');
    const without = await importText(pool, 'epsilon-5\nepsilon-6\n');
    expect(without.body.data.totals).toEqual({ stored: 0, duplicate: 2, invalid: 0 });
    const reused = await importText(pool, 'epsilon-7\n', 'import-1');
    expect(reused.status).toBe(422);
    expect(reused.body.error.code).toBe('idempotency_key_reused');
  });

  it('refuses more than 10,000 values, a body of another type, and a bad Idempotency-Key', async () => {
    const pool = await newPool();
    const tooMany = Array.from({ length: 10_001 }, (_, i) => `v${i}`).join('\n');
    expect((await importText(pool, tooMany)).status).toBe(422);
    const form = await t.http.post(`/api/admin/pools/${pool}/tokens/import`).set(admin).type('form').send({ values: 'x' });
    expect(form.status).toBe(415);
    const badKey = await importText(pool, 'zeta-1\n', 'has space');
    expect(badKey.status).toBe(422);
    expect(badKey.body.error.details.fields[0].field).toBe('Idempotency-Key');
    expect((await t.http.post(`/api/admin/pools/${pool}/tokens/import`).set(admin).send({ values: 'x' })).status).toBe(422);
  });
});

describe('check', () => {
  it('says whether the token with a value is held now, until when, under which fence and by whom', async () => {
    const pool = await newPool();
    await importText(pool, 'check-value-1\n');
    const unknown = await t.http.post('/api/tokens/check').send({ value: 'never-stored' });
    expect(unknown.status).toBe(200);
    expect(unknown.body.data).toEqual({ token_id: null, held: false, expires_at: null, fence: null, user_id: null });

    const user = newUserId();
    const lease = (await activate(pool, user)).body.data;
    const held = await t.http.post('/api/tokens/check').send({ value: 'check-value-1' });
    expect(held.body.data).toEqual({
      token_id: lease.token_id,
      held: true,
      expires_at: lease.expires_at,
      fence: lease.fence,
      user_id: user,
    });

    await t.http.post(`/api/tokens/${lease.token_id}/release`).send({ user_id: user, lease_id: lease.lease_id });
    const free = await t.http.post('/api/tokens/check').send({ value: 'check-value-1' });
    expect(free.body.data).toEqual({ token_id: lease.token_id, held: false, expires_at: null, fence: null, user_id: null });
  });

  it('refuses a value that cannot be one, without repeating it', async () => {
    for (const value of ['', 'a b', 'x'.repeat(257), 42]) {
      const res = await t.http.post('/api/tokens/check').send({ value });
      expect(res.status).toBe(422);
      expect(res.body.error.details.fields[0].field).toBe('value');
    }
    const res = await t.http.post('/api/tokens/check').send({ value: 'quokka\tzebra' });
    expect(res.status).toBe(422);
    expect(res.text).not.toMatch(/quokka|zebra/);
  });
});

describe('redeem', () => {
  it('of 20 simultaneous redeems of one value, exactly one succeeds; the token is retired', async () => {
    const pool = await newPool();
    await importText(pool, 'redeem-once-1\n');
    const holder = newUserId();
    const lease = (await activate(pool, holder)).body.data;
    const stranger = newUserId();

    const answers = await Promise.all([
      ...Array.from({ length: 20 }, () => redeem(holder, 'redeem-once-1')),
      redeem(stranger, 'redeem-once-1'),
    ]);

    const holders = answers.slice(0, 20);
    const won = holders.filter((res) => res.status === 200);
    expect(won).toHaveLength(1);
    expect(won[0]?.body.data).toMatchObject({
      token_id: lease.token_id,
      lease_id: lease.lease_id,
      user_id: holder,
      end_reason: 'redeemed',
    });
    const lost = holders.filter((res) => res.status !== 200);
    expect(lost.map((res) => [res.status, res.body.error.code])).toEqual(Array(19).fill([409, 'already_redeemed']));
    expect(answers[20]?.status).toBe(409);
    expect(answers[20]?.body.error.code).toBe('not_holder');

    const [usage] = await usagesOf(t.db, 'id = $1', [lease.lease_id]);
    expect(usage?.end_reason).toBe('redeemed');
    const { rows } = await t.db.pool.query<{ retired: boolean }>('SELECT retired_at IS NOT NULL AS retired FROM tokens WHERE id = $1', [
      lease.token_id,
    ]);
    expect(rows[0]?.retired).toBe(true);
    // Retired: never leased again, listed as retired, its history kept.
    expect((await activate(pool, newUserId())).status).toBe(409);
    const listed = (await t.http.get(`/api/pools/${pool}/tokens`)).body.data;
    expect(listed).toEqual([expect.objectContaining({ id: lease.token_id, status: 'retired' })]);
    const history = (await t.http.get(`/api/tokens/${lease.token_id}/history`)).body.data.usages;
    expect(history).toEqual([expect.objectContaining({ lease_id: lease.lease_id, end_reason: 'redeemed' })]);
    const validated = await t.http.post(`/api/tokens/${lease.token_id}/validate`).send({ user_id: holder, fence: lease.fence });
    expect(validated.body.data).toEqual({ valid: false, reason: 'redeemed' });
    const released = await t.http.post(`/api/tokens/${lease.token_id}/release`).send({ user_id: holder, lease_id: lease.lease_id });
    expect(released.status).toBe(409);
    expect(released.body.error.details.reason).toBe('redeemed');
    expect((await t.http.get(`/api/pools/${pool}`)).body.data).toMatchObject({ free: 0, held: 0, retired: 1 });
  });

  it('refuses a value no token has, and a lease that ended otherwise', async () => {
    expect((await redeem(newUserId(), 'no-such-value')).status).toBe(404);
    const pool = await newPool();
    await importText(pool, 'redeem-later-1\n');
    const user = newUserId();
    const lease = (await activate(pool, user)).body.data;
    await t.http.post(`/api/tokens/${lease.token_id}/release`).send({ user_id: user, lease_id: lease.lease_id });

    const late = await redeem(user, 'redeem-later-1');
    expect(late.status).toBe(409);
    expect(late.body.error).toMatchObject({ code: 'lease_ended', details: { reason: 'released' } });
  });
});

describe('retire', () => {
  it('retires a free token at once: it is never leased again, and listed as retired', async () => {
    const pool = await newPool(2);
    const tokens = (await t.http.get(`/api/pools/${pool}/tokens`)).body.data as Array<{ id: string }>;
    const [first, second] = tokens.map((token) => token.id);

    const res = await retire(first ?? '');

    expect(res.status).toBe(200);
    expect(res.body.data).toEqual({ token_id: first, status: 'retired', usage: null });
    expect((await retire(first ?? '')).body).toEqual(res.body);
    const granted = await activate(pool, newUserId());
    expect(granted.body.data.token_id).toBe(second);
    expect((await activate(pool, newUserId())).status).toBe(409);
    expect((await t.http.get(`/api/tokens/${first}`)).body.data.status).toBe('retired');
    expect((await t.http.get(`/api/pools/${pool}`)).body.data).toMatchObject({ free: 0, held: 1, retired: 1 });
  });

  it('retires a held token when its lease ends, or at once with now', async () => {
    const pool = await newPool(1);
    const user = newUserId();
    const lease = (await activate(pool, user)).body.data;

    const later = await retire(lease.token_id, {});
    expect(later.body.data).toMatchObject({ token_id: lease.token_id, status: 'retiring', usage: { lease_id: lease.lease_id, ended_at: null } });
    expect((await t.http.get(`/api/tokens/${lease.token_id}`)).body.data.status).toBe('active');
    const renewed = await t.http.post(`/api/tokens/${lease.token_id}/renew`).send({ user_id: user, lease_id: lease.lease_id });
    expect(renewed.status).toBe(200);
    await t.http.post(`/api/tokens/${lease.token_id}/release`).send({ user_id: user, lease_id: lease.lease_id });
    expect((await t.http.get(`/api/tokens/${lease.token_id}`)).body.data.status).toBe('retired');
    expect((await activate(pool, newUserId())).status).toBe(409);

    const other = await newPool(1);
    const holder = newUserId();
    const held = (await activate(other, holder)).body.data;
    const now = await retire(held.token_id, { now: true });
    expect(now.status).toBe(200);
    expect(now.body.data).toMatchObject({ status: 'retired', usage: { lease_id: held.lease_id, end_reason: 'retired' } });
    expect((await retire(held.token_id, { now: true })).body.data).toEqual({ token_id: held.token_id, status: 'retired', usage: null });

    const ref = { user_id: holder, lease_id: held.lease_id };
    for (const path of ['release', 'renew']) {
      const res = await t.http.post(`/api/tokens/${held.token_id}/${path}`).send(ref);
      expect(res.status, path).toBe(409);
      expect(res.body.error).toMatchObject({ code: 'lease_ended', details: { reason: 'retired' } });
    }
    const validated = await t.http.post(`/api/tokens/${held.token_id}/validate`).send({ user_id: holder, fence: held.fence });
    expect(validated.body.data).toEqual({ valid: false, reason: 'retired' });
    const history = (await t.http.get(`/api/tokens/${held.token_id}/history`)).body.data.usages;
    expect(history).toEqual([expect.objectContaining({ end_reason: 'retired' })]);
    expect((await activate(other, newUserId())).status).toBe(409);
  });

  it('refuses an unknown token, a bad body, and callers without the admin key', async () => {
    expect((await retire('00000000-0000-4000-8000-000000000000')).status).toBe(404);
    expect((await retire('not-a-token')).status).toBe(404);
    const pool = await newPool(1);
    const [token] = (await t.http.get(`/api/pools/${pool}/tokens`)).body.data as Array<{ id: string }>;
    expect((await retire(token?.id ?? '', { now: 'yes' })).status).toBe(422);
    expect((await t.http.post(`/api/admin/tokens/${token?.id}/retire`)).status).toBe(401);
  });
});

describe('TOKEN_VALUE_KEY', () => {
  it('must be 32 bytes in base64', () => {
    expect(loadConfig({ TOKEN_VALUE_KEY: VALUE_KEY }).tokenValueKey).toHaveLength(32);
    expect(loadConfig({}).tokenValueKey).toBeNull();
    for (const key of ['short', randomBytes(16).toString('base64'), `${VALUE_KEY}!`]) {
      let error: unknown;
      try {
        loadConfig({ TOKEN_VALUE_KEY: key });
      } catch (caught) {
        error = caught;
      }
      expect(error).toBeInstanceOf(ConfigError);
      expect((error as ConfigError).message).toMatch(/^invalid configuration:\n {2}TOKEN_VALUE_KEY: must be 32 random bytes/);
      expect((error as ConfigError).message).not.toContain(key);
    }
  });

  it('that cannot open the stored values stops the start', async () => {
    const other = randomBytes(32).toString('base64');
    await expect(startTestService({ TOKEN_VALUE_KEY: other }, { db: t.db })).rejects.toThrow(/another TOKEN_VALUE_KEY/);
    await expect(startTestService({}, { db: t.db })).rejects.toThrow(/TOKEN_VALUE_KEY, which is not set/);
  });
});
