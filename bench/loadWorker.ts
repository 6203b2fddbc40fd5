import { randomUUID } from 'node:crypto';
import autocannon from 'autocannon';
import { releaseBody } from '../test/harness/leaseBodies.js';
import { MEASURING, unexpectedAnswers, type LoadResult, type LoadSpec } from './load.js';

// The load generator's process: reads one LoadSpec on stdin, runs autocannon for the warm-up
// (discarded) and then for the measured time, and prints one LoadResult as a JSON line.

const JSON_HEADERS = { 'content-type': 'application/json' };

type Context = { userId?: string; tokenId?: string; leaseId?: string };

function pick<T>(items: readonly T[]): T {
  const item = items[Math.floor(Math.random() * items.length)];
  if (item === undefined) throw new Error('nothing to pick from');
  return item;
}

function requestsFor(spec: LoadSpec, counters: { cycles: number }): autocannon.Request[] {
  switch (spec.kind) {
    case 'cycle':
      return [
        {
          method: 'POST',
          path: '/api/tokens/activate',
          headers: JSON_HEADERS,
          setupRequest: (req, context) => {
            const userId = randomUUID();
            (context as Context).userId = userId;
            return { ...req, body: JSON.stringify({ user_id: userId }) };
          },
          onResponse: (status, body, context) => {
            if (status !== 201) return;
            const { data } = JSON.parse(body) as { data: { token_id: string; lease_id: string } };
            (context as Context).tokenId = data.token_id;
            (context as Context).leaseId = data.lease_id;
          },
        },
        {
          method: 'POST',
          headers: JSON_HEADERS,
          // No token (the activation failed): autocannon starts the sequence over.
          setupRequest: (req, context) => {
            const { userId, tokenId, leaseId } = context as Context;
            if (userId === undefined || tokenId === undefined || leaseId === undefined) return undefined as unknown as autocannon.Request;
            return { ...req, path: `/api/tokens/${tokenId}/release`, body: JSON.stringify(releaseBody(userId, leaseId)) };
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
          headers: JSON_HEADERS,
          setupRequest: (req) => ({ ...req, body: JSON.stringify({ user_id: randomUUID() }) }),
        },
      ];
    case 'get':
      return [{ method: 'GET', path: spec.path }];
    case 'get-any': {
      const { paths } = spec;
      return [{ method: 'GET', setupRequest: (req) => ({ ...req, path: pick(paths) }) }];
    }
    case 'validate': {
      const { leases } = spec;
      return [
        {
          method: 'POST',
          headers: JSON_HEADERS,
          setupRequest: (req) => {
            const lease = pick(leases);
            return {
              ...req,
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
