import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import autocannon from 'autocannon';
import { releaseBody } from '../test/harness/leaseBodies.js';
import { MEASURING, unexpectedAnswers, type LoadResult, type LoadSpec } from './load.js';

// The load generator's process: reads one LoadSpec on stdin, runs autocannon for the warm-up
// (discarded) and then for the measured time, and prints one LoadResult as a JSON line.

const JSON_HEADERS = { 'content-type': 'application/json' };

/** A user the requests act as, and the headers that say so (none without credentials). */
interface User {
  readonly id: string;
  readonly auth: Record<string, string>;
}

type Context = { userId?: string; headers?: Record<string, string>; tokenId?: string; leaseId?: string };

function pick<T>(items: readonly T[]): T {
  const item = items[Math.floor(Math.random() * items.length)];
  if (item === undefined) throw new Error('nothing to pick from');
  return item;
}

/** The users of LoadSpec.usersFile, each with its bearer JWT; none without one. */
function readUsers(file: string | undefined): User[] {
  if (file === undefined) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => {
      const [id = '', jwt = ''] = line.split(' ');
      return { id, auth: { authorization: `Bearer ${jwt}` } };
    });
}

function requestsFor(spec: LoadSpec, counters: { cycles: number }): autocannon.Request[] {
  const users = readUsers(spec.usersFile);
  let turn = Math.floor(Math.random() * users.length);
  /** The user of the next activation: a new one each time, or the file's users in turn. */
  const nextUser = (): User => {
    if (users.length === 0) return { id: randomUUID(), auth: {} };
    turn = (turn + 1) % users.length;
    return users[turn] as User;
  };
  const anyUser = (): Record<string, string> => (users.length === 0 ? {} : pick(users).auth);
  switch (spec.kind) {
    case 'cycle':
      return [
        {
          method: 'POST',
          path: '/api/tokens/activate',
          setupRequest: (req, context) => {
            const user = nextUser();
            const headers = { ...JSON_HEADERS, ...user.auth };
            Object.assign(context as Context, { userId: user.id, headers });
            return { ...req, headers, body: JSON.stringify({ user_id: user.id }) };
          },
          // 201, or 200 with the lease the user already held (one of the file's users comes
          // back in turn, and the warm-up may have left it one): either is released next.
          onResponse: (status, body, context) => {
            if (status !== 201 && status !== 200) return;
            const { data } = JSON.parse(body) as { data: { token_id: string; lease_id: string } };
            (context as Context).tokenId = data.token_id;
            (context as Context).leaseId = data.lease_id;
          },
        },
        {
          method: 'POST',
          // No token (the activation failed): autocannon starts the sequence over.
          setupRequest: (req, context) => {
            const { userId, headers, tokenId, leaseId } = context as Context;
            if (userId === undefined || tokenId === undefined || leaseId === undefined) return undefined as unknown as autocannon.Request;
            return { ...req, headers, path: `/api/tokens/${tokenId}/release`, body: JSON.stringify(releaseBody(userId, leaseId)) };
          },
          onResponse: (status) => {
            if (status === 200) counters.cycles += 1;
          },
        },
      ];
    case 'activate':
      return [
        {
          method: 'POST',
          path: '/api/tokens/activate',
          setupRequest: (req) => {
            const user = nextUser();
            return { ...req, headers: { ...JSON_HEADERS, ...user.auth }, body: JSON.stringify({ user_id: user.id }) };
          },
        },
      ];
    case 'get':
      // Built once each: every connection goes through the users in turn.
      return users.length === 0 ? [{ method: 'GET', path: spec.path }] : users.map((u) => ({ method: 'GET', path: spec.path, headers: u.auth }));
    case 'get-any': {
      const { paths } = spec;
      return [{ method: 'GET', setupRequest: (req) => ({ ...req, headers: anyUser(), path: pick(paths) }) }];
    }
    case 'validate': {
      const { leases } = spec;
      return [
        {
          method: 'POST',
          setupRequest: (req) => {
            const lease = pick(leases);
            return {
              ...req,
              headers: { ...JSON_HEADERS, ...anyUser() },
              path: `/api/tokens/${lease.tokenId}/validate`,
              body: JSON.stringify({ user_id: lease.userId, fence: lease.fence }),
            };
          },
        },
      ];
    }
  }
}

async function run(spec: LoadSpec, durationSec: number): Promise<LoadResult> {
  const counters = { cycles: 0 };
  const result = await autocannon({
    url: spec.url,
    connections: spec.connections,
    duration: durationSec,
    ...(spec.amount === undefined ? {} : { amount: spec.amount }),
    ...(spec.overallRate === undefined ? {} : { overallRate: spec.overallRate }),
    requests: requestsFor(spec, counters),
  });
  const statuses: Record<string, number> = {};
  for (const [status, stats] of Object.entries(result.statusCodeStats ?? {})) {
    statuses[status] = stats.count ?? 0;
  }
  return {
    seconds: result.duration,
    requests: Object.values(statuses).reduce((sum, count) => sum + count, 0),
    cycles: counters.cycles,
    errors: unexpectedAnswers(statuses, spec.expect) + result.errors,
    statuses,
    latencyMs: { p50: result.latency.p50, p99: result.latency.p99, max: result.latency.max },
  };
}

let input = '';
process.stdin.setEncoding('utf8');
for await (const chunk of process.stdin) input += chunk as string;
const spec = JSON.parse(input) as LoadSpec;
if (spec.warmupSec > 0) await run(spec, spec.warmupSec);
process.stdout.write(`${MEASURING}\n`);
const result = await run(spec, spec.durationSec);
process.stdout.write(`${JSON.stringify(result)}\n`);
