import { execFile } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newUserId, startTestService, type TestService } from './helpers.js';

// The operator scripts in scripts/, run with bash and curl against a live server.

const ADMIN_KEY = 'script-admin-key-0123456789';
const scriptsDir = fileURLToPath(new URL('../scripts/', import.meta.url));

let t: TestService;

beforeAll(async () => {
  t = await startTestService({ POOL_SIZE: '3', ADMIN_API_KEY: ADMIN_KEY });
});
afterAll(async () => {
  await t.close();
});

function run(script: string, args: string[], env: Record<string, string> = {}, input?: string) {
  return new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
    const child = execFile(
      'bash',
      [`${scriptsDir}${script}`, ...args],
      { env: { PATH: process.env.PATH ?? '', BASE_URL: t.url, ...env } },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === 'number' ? error.code : 1;
        resolve({ code, stdout, stderr });
      },
    );
    // A script that reads no input may have exited before it is written: its EPIPE is no failure.
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(input ?? '');
  });
}

const json = (text: string) => JSON.parse(text) as Record<string, any>;

describe('scripts/', () => {
  it('activate.sh leases a token and prints the JSON answer', async () => {
    const user = newUserId();
    const res = await run('activate.sh', [user]);
    expect(res.code).toBe(0);
    expect(json(res.stdout).data.user_id).toBe(user);
  });

  it('list.sh, show.sh, history.sh and events.sh print the pool, a token, its usages and the event log', async () => {
    const list = await run('list.sh', []);
    expect(list.code).toBe(0);
    const tokens = json(list.stdout).data as Array<{ id: string; status: string }>;
    expect(tokens).toHaveLength(3);
    const held = tokens.find((x) => x.status === 'active');

    const show = await run('show.sh', [held?.id ?? '']);
    expect(json(show.stdout).data.id).toBe(held?.id);

    const history = await run('history.sh', [held?.id ?? '', '10']);
    expect(history.code).toBe(0);
    expect(json(history.stdout).data.usages).toHaveLength(1);

    const events = await run('events.sh', ['0', '10']);
    expect(events.code).toBe(0);
    expect(json(events.stdout).data.events).toContainEqual(expect.objectContaining({ type: 'lease.activated' }));
    expect((await run('events.sh', ['x'])).code).not.toBe(0);
  });

  it('renew.sh, validate.sh and release.sh act on a lease', async () => {
    const user = newUserId();
    const lease = json((await run('activate.sh', [user])).stdout).data;

    const renewed = await run('renew.sh', [lease.token_id, user, lease.lease_id]);
    expect(renewed.code).toBe(0);
    expect(json(renewed.stdout).data.lease_id).toBe(lease.lease_id);

    const valid = await run('validate.sh', [lease.token_id, user, String(lease.fence)]);
    expect(json(valid.stdout).data.valid).toBe(true);

    const released = await run('release.sh', [lease.token_id, user, lease.lease_id]);
    expect(released.code).toBe(0);
    expect(json(released.stdout).data.end_reason).toBe('released');

    const retried = await run('release.sh', [lease.token_id, user, lease.lease_id]);
    expect(retried.code).toBe(0);
    expect(json(retried.stdout).data).toEqual(json(released.stdout).data);

    const again = await run('validate.sh', [lease.token_id, user, String(lease.fence)]);
    expect(json(again.stdout).data).toEqual({ valid: false, reason: 'released' });
    const notHolder = await run('release.sh', [lease.token_id, newUserId(), lease.lease_id]);
    expect(notHolder.code).not.toBe(0);
    expect(json(notHolder.stdout).error.code).toBe('not_holder');
  });

  it('activate.sh waits for a token when given WAIT_SECONDS', async () => {
    const users = [newUserId(), newUserId()];
    for (const user of users) await run('activate.sh', [user]);
    const res = await run('activate.sh', [newUserId(), '0.3']);
    expect(res.code).not.toBe(0);
    expect(json(res.stdout).error.code).toBe('pool_exhausted');
    // The wait comes on top of TIMEOUT_SECONDS: curl must not give up first.
    const longer = await run('activate.sh', [newUserId(), '1.5'], { TIMEOUT_SECONDS: '1' });
    expect(longer.stderr).not.toMatch(/timed out/);
    expect(json(longer.stdout).error.code).toBe('pool_exhausted');
  });

  it('clear.sh sends ADMIN_API_KEY and fails without it', async () => {
    const denied = await run('clear.sh', []);
    expect(denied.code).not.toBe(0);
    expect(json(denied.stdout).error.code).toBe('unauthorized');

    const cleared = await run('clear.sh', [], { ADMIN_API_KEY: ADMIN_KEY });
    expect(cleared.code).toBe(0);
    expect(json(cleared.stdout).data.cleared_tokens).toBe(3);
  });

  it('clients.sh makes, lists and revokes API clients with the admin key', async () => {
    const admin = { ADMIN_API_KEY: ADMIN_KEY };
    const made = await run('clients.sh', ['create', 'GPU scheduler 2', 'lease', 'read'], admin);
    expect(made.code).toBe(0);
    const client = json(made.stdout).data as { id: string; name: string; scopes: string[]; key: string };
    expect(client).toMatchObject({ name: 'GPU scheduler 2', scopes: ['lease', 'read'], key: expect.stringMatching(/^tlk_/) });

    const listed = await run('clients.sh', ['list'], admin);
    expect(listed.code).toBe(0);
    expect(json(listed.stdout).data).toContainEqual(expect.objectContaining({ id: client.id, name: 'GPU scheduler 2' }));
    expect(listed.stdout).not.toContain(client.key);

    const revoked = await run('clients.sh', ['revoke', client.id], admin);
    expect(revoked.code).toBe(0);
    expect(json(revoked.stdout).data).toMatchObject({ id: client.id, revoked_at: expect.any(String) });

    const denied = await run('clients.sh', ['list']);
    expect(denied.code).not.toBe(0);
    expect(json(denied.stdout).error.code).toBe('unauthorized');
    for (const args of [['create', 'x', 'write'], ['create', 'a"b', 'read'], ['create', 'x'], ['revoke', '../x'], ['rename']]) {
      const refused = await run('clients.sh', args, admin);
      expect(refused.code, args.join(' ')).toBe(2);
      expect(refused.stdout, args.join(' ')).toBe('');
    }
  });

  it('lease.sh shows a lease; revoke-lease.sh and revoke-user.sh end leases with the admin key', async () => {
    const admin = { ADMIN_API_KEY: ADMIN_KEY };
    await run('clear.sh', [], admin);
    const user = newUserId();
    const lease = json((await run('activate.sh', [user])).stdout).data;

    const shown = await run('lease.sh', [lease.lease_id]);
    expect(shown.code).toBe(0);
    expect(json(shown.stdout).data).toMatchObject({ lease_id: lease.lease_id, user_id: user, pool: 'default', end_reason: null });

    const denied = await run('revoke-lease.sh', [lease.lease_id]);
    expect(denied.code).not.toBe(0);
    expect(json(denied.stdout).error.code).toBe('unauthorized');
    const revoked = await run('revoke-lease.sh', [lease.lease_id], admin);
    expect(revoked.code).toBe(0);
    expect(json(revoked.stdout).data).toMatchObject({ lease_id: lease.lease_id, end_reason: 'revoked' });

    const again = json((await run('activate.sh', [user])).stdout).data;
    const byUser = await run('revoke-user.sh', [user], admin);
    expect(byUser.code).toBe(0);
    expect(json(byUser.stdout).data).toMatchObject({ user_id: user, revoked: 1, leases: [{ lease_id: again.lease_id, end_reason: 'revoked' }] });

    for (const [script, args] of [['lease.sh', []], ['revoke-lease.sh', ['../x']], ['revoke-user.sh', ['a b']]] as const) {
      const refused = await run(script, [...args], admin);
      expect(refused.code, script).toBe(2);
      expect(refused.stdout, script).toBe('');
    }
  });

  it('webhooks.sh makes, lists, rotates, reads the delivery log of, replays and deletes webhooks', async () => {
    const admin = { ADMIN_API_KEY: ADMIN_KEY };
    const made = await run('webhooks.sh', ['create', 'http://93.184.215.14/hook', 'lease.activated', 'lease.expired'], admin);
    expect(made.code, made.stdout + made.stderr).toBe(0);
    const hook = json(made.stdout).data as { id: string; secret: string };
    expect(json(made.stdout).data).toMatchObject({ url: 'http://93.184.215.14/hook', events: ['lease.activated', 'lease.expired'], secret: expect.stringMatching(/^whsec_/) });

    const listed = await run('webhooks.sh', ['list'], admin);
    expect(json(listed.stdout).data).toContainEqual(expect.objectContaining({ id: hook.id }));
    expect(listed.stdout).not.toContain(hook.secret);

    const rotated = await run('webhooks.sh', ['rotate', hook.id], admin);
    expect(rotated.code).toBe(0);
    expect(json(rotated.stdout).data.secret).not.toBe(hook.secret);

    const log = await run('webhooks.sh', ['deliveries', hook.id, '10'], admin);
    expect(json(log.stdout).data).toEqual({ deliveries: [], next_before: null });
    const replay = await run('webhooks.sh', ['replay', hook.id, '12345'], admin);
    expect(replay.code).not.toBe(0);
    expect(json(replay.stdout).error.code).toBe('not_found');

    const refusedUrl = await run('webhooks.sh', ['create', 'http://127.0.0.1:9/x', 'lease.activated'], admin);
    expect(json(refusedUrl.stdout).error.code).toBe('validation_failed');
    const deleted = await run('webhooks.sh', ['delete', hook.id], admin);
    expect(deleted.code).toBe(0);
    expect((await run('webhooks.sh', ['list'])).code).not.toBe(0);
    for (const args of [['create', 'http://a b', 'lease.activated'], ['create', 'http://x', 'x'], ['create', 'http://x'], ['delete', '../x'], ['replay', 'a', 'b'], ['deliveries', 'a', 'x'], ['rename']]) {
      const refused = await run('webhooks.sh', args, admin);
      expect(refused.code, args.join(' ')).toBe(2);
      expect(refused.stdout, args.join(' ')).toBe('');
    }
  });

  it('exit non-zero on an HTTP error and still print the error body', async () => {
    const res = await run('show.sh', ['00000000-0000-4000-8000-000000000000']);
    expect(res.code).not.toBe(0);
    expect(json(res.stdout).error.code).toBe('not_found');
  });

  it('refuse wrong arguments with a usage line', async () => {
    const res = await run('activate.sh', []);
    expect(res.code).toBe(2);
    expect(res.stderr).toMatch(/usage: .*activate\.sh USER_ID/);
    // Release and renew name the lease they act on: without it, nothing is sent.
    for (const script of ['release.sh', 'renew.sh']) {
      const withoutLease = await run(script, [newUserId(), newUserId()]);
      expect(withoutLease.code, script).toBe(2);
      expect(withoutLease.stdout, script).toBe('');
      expect(withoutLease.stderr, script).toContain(`${script} TOKEN_ID USER_ID LEASE_ID`);
    }
  });

  it('refuse an id that is not one before sending anything', async () => {
    for (const [script, args] of [
      ['activate.sh', ['a"b']],
      ['release.sh', ['../clear', newUserId(), newUserId()]],
      ['release.sh', [newUserId(), newUserId(), 'lease 1']],
      ['renew.sh', [newUserId(), 'a b', newUserId()]],
      ['renew.sh', [newUserId(), newUserId(), '{"x":1}']],
      ['show.sh', ['x?y']],
    ] as const) {
      const res = await run(script, [...args]);
      expect(res.code, script).toBe(2);
      expect(res.stdout, script).toBe('');
      expect(res.stderr, script).toMatch(/^invalid id: /);
    }
  });

  it('print their usage for -h and --help', async () => {
    for (const flag of ['-h', '--help']) {
      const res = await run('release.sh', [flag]);
      expect(res.code).toBe(0);
      expect(res.stdout).toContain('scripts/release.sh TOKEN_ID USER_ID LEASE_ID');
    }
  });
});

/**
 * A token provider on 127.0.0.1 that answers POST ?size=N with text/plain, one token a line, and
 * at most `perCall` of them; with `flawed`, its first answer ends with a duplicate and a line
 * that is no token. After `total` tokens it answers nothing more.
 */
async function startProvider(args: {
  perCall: number;
  total: number;
  flawed: boolean;
}): Promise<{ url: string; asked: number[]; close(): Promise<void> }> {
  const tag = Math.random().toString(36).slice(2, 8);
  const asked: number[] = [];
  let made = 0;
  const server: Server = createServer((req, res) => {
    const size = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('size'));
    asked.push(size);
    const lines: string[] = [];
    const count = Math.min(size, args.perCall, args.total - made);
    for (let i = 0; i < count; i += 1) {
      const flawed = args.flawed && asked.length === 1;
      if (flawed && i === count - 2) lines.push(`prov-${tag}-${made}`);
      else if (flawed && i === count - 1) lines.push('not a token');
      else lines.push(`prov-${tag}-${++made}`);
    }
    req.resume();
    res.writeHead(200, { 'Content-Type': 'text/plain' }).end(lines.map((line) => `${line}\n`).join(''));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/tokens`,
    asked,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

describe('scripts/ for tokens with values', () => {
  const admin = { ADMIN_API_KEY: ADMIN_KEY };
  const makePool = (name: string) =>
    t.http.post('/api/admin/pools').set('Authorization', `Bearer ${ADMIN_KEY}`).send({ name, size: 0 });

  it('import-from-provider.sh asks again for the shortfall and prints the totals', async () => {
    await makePool('provided');
    const provider = await startProvider({ perCall: 7, total: 1_000, flawed: true });
    try {
      const res = await run('import-from-provider.sh', [provider.url, '20', 'provided'], admin);

      expect(res.stderr).toBe('');
      expect(res.code).toBe(0);
      expect(res.stdout).toBe('asked 44\nreceived 22\nstored 20\nduplicate 1\ninvalid 1\n');
      expect(provider.asked).toEqual([20, 15, 8, 1]);
      const pool = (await t.http.get('/api/pools/provided')).body.data;
      expect(pool).toMatchObject({ size: 20, free: 20 });
    } finally {
      await provider.close();
    }
  });

  it('import-from-provider.sh gives up after 5 more asks and exits non-zero when it stored too few', async () => {
    await makePool('provided-short');
    const provider = await startProvider({ perCall: 7, total: 3, flawed: false });
    try {
      const res = await run('import-from-provider.sh', [provider.url, '10', 'provided-short'], admin);

      expect(res.code).toBe(1);
      expect(res.stdout).toBe('asked 45\nreceived 3\nstored 3\nduplicate 0\ninvalid 0\n');
      expect(res.stderr).toContain('stored 3 of 10');
      expect(provider.asked).toEqual([10, 7, 7, 7, 7, 7]);
    } finally {
      await provider.close();
    }
    const refused = await run('import-from-provider.sh', ['not-a-url', '10'], admin);
    expect(refused.code).toBe(2);
  });

  it('generate.sh, import.sh, check.sh, redeem.sh and retire.sh act on tokens with values', async () => {
    await makePool('scripted');
    const generated = await run('generate.sh', ['scripted', '2'], admin);
    expect(generated.code).toBe(0);
    const [generatedId] = json(generated.stdout).data.token_ids as string[];

    const imported = await run('import.sh', ['scripted'], admin, 'script-value-1\nscript\\"quote\nbad value\n');
    expect(imported.code).toBe(0);
    expect(json(imported.stdout).data.totals).toEqual({ stored: 2, duplicate: 0, invalid: 1 });

    const user = newUserId();
    // The generated tokens come first: lease them, then the imported ones.
    for (let i = 0; i < 2; i += 1) await t.http.post('/api/pools/scripted/tokens/activate').send({ user_id: newUserId() });
    const lease = (await t.http.post('/api/pools/scripted/tokens/activate').send({ user_id: user })).body.data;
    expect(lease.value).toBe('script-value-1');

    const checked = await run('check.sh', ['script-value-1']);
    expect(json(checked.stdout).data).toMatchObject({ token_id: lease.token_id, held: true, fence: 1 });
    const quoted = await run('check.sh', ['-'], {}, 'script\\"quote\n');
    expect(json(quoted.stdout).data).toMatchObject({ held: false, token_id: expect.any(String) });

    const redeemed = await run('redeem.sh', [user, 'script-value-1']);
    expect(redeemed.code).toBe(0);
    expect(json(redeemed.stdout).data.end_reason).toBe('redeemed');
    const again = await run('redeem.sh', [user, 'script-value-1']);
    expect(again.code).not.toBe(0);
    expect(json(again.stdout).error.code).toBe('already_redeemed');

    const retired = await run('retire.sh', [generatedId ?? '', 'now'], admin);
    expect(retired.code).toBe(0);
    expect(json(retired.stdout).data).toMatchObject({ status: 'retired', usage: { end_reason: 'retired' } });

    for (const [script, args] of [
      ['check.sh', ['a b']],
      ['redeem.sh', [user, 'x'.repeat(257)]],
      ['retire.sh', [generatedId ?? '', 'later']],
      ['generate.sh', ['scripted', 'many']],
      ['import.sh', ['scripted', '/no/such/file']],
    ] as const) {
      const res = await run(script, [...args], admin);
      expect(res.code, script).toBe(2);
      expect(res.stdout, script).toBe('');
    }
  });
});
