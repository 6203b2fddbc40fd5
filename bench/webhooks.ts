import { waitFor } from '../test/harness/waitFor.js';
import { startReceiver } from '../test/harness/receiver.js';
import { BENCH_ADMIN_KEY, withDatabaseClient } from './env.js';
import { runLoad, type LoadGenerator } from './load.js';
import { percentile } from './stats.js';

// The webhooks group: a receiver on 127.0.0.1 that answers 204, one webhook for lease.activated
// and lease.released on a service (ROLE=all) of its own. Two figures: how soon a delivery's
// first attempt starts after its event (activations at a steady, light rate; from the event's
// time to the attempt's start, both as the rows record them), and how many deliveries a second
// one worker process sends while a burst of activate + release cycles gives it a backlog (from
// the first attempt of the burst's deliveries to the last).

export interface WebhookFigures {
  readonly lagMs: { readonly p50: number; readonly p99: number; readonly max: number; readonly samples: number };
  readonly perSecond: number;
  readonly deliveries: number;
  /** Deliveries that did not succeed by the deadline, and requests that failed. */
  readonly errors: number;
}

const DRAIN_TIMEOUT_MS = 120_000;

export async function measureWebhooks(args: {
  url: string;
  databaseUrl: string;
  /** Activations for the lag, at `rate` a second, each released at once. */
  activations: number;
  rate: number;
  /** The burst: cycles for `durationSec` on `connections` connections. */
  durationSec: number;
  connections: number;
  load: LoadGenerator;
}): Promise<WebhookFigures> {
  const receiver = await startReceiver({ keep: false });
  receiver.answer = () => ({ status: 204 });
  let errors = 0;
  const headers = { authorization: `Bearer ${BENCH_ADMIN_KEY}`, 'content-type': 'application/json' };
  const made = await fetch(`${args.url}/api/admin/webhooks`, {
    method: 'POST',
    headers,
    body: JSON.stringify({ url: receiver.url, events: ['lease.activated', 'lease.released'] }),
  });
  if (made.status !== 201) throw new Error(`making the webhook answered ${made.status}`);
  const { id } = ((await made.json()) as { data: { id: string } }).data;
  try {
    return await withDatabaseClient(args.databaseUrl, async (db) => {
      const since = async () => Number((await db.query<{ n: string }>('SELECT coalesce(max(id), 0)::text AS n FROM webhook_deliveries')).rows[0]?.n);
      /** Waits until every delivery after `after` has settled, and counts those that did not succeed. */
      const drained = async (after: number, expected: number) => {
        await waitFor(
          async () => {
            const { rows } = await db.query<{ made: number; pending: number }>(
              `SELECT count(*)::int AS made, count(*) FILTER (WHERE state = 'pending')::int AS pending
               FROM webhook_deliveries WHERE id > $1`,
              [after],
            );
            const row = rows[0];
            return row !== undefined && row.made >= expected && row.pending === 0;
          },
          { timeoutMs: DRAIN_TIMEOUT_MS, intervalMs: 100, what: 'the deliveries to settle' },
        ).catch(() => undefined);
        const { rows } = await db.query<{ failed: number }>(
          `SELECT count(*) FILTER (WHERE state <> 'succeeded')::int AS failed FROM webhook_deliveries WHERE id > $1`,
          [after],
        );
        return rows[0]?.failed ?? 0;
      };

      // The lag, one activation at a time.
      const lagFrom = await since();
      for (let i = 0; i < args.activations; i += 1) {
        const started = Date.now();
        const res = await fetch(`${args.url}/api/tokens/activate`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ user_id: crypto.randomUUID() }),
        });
        if (res.status !== 201) {
          errors += 1;
          continue;
        }
        const lease = ((await res.json()) as { data: { token_id: string; user_id: string; lease_id: string } }).data;
        const released = await fetch(`${args.url}/api/tokens/${lease.token_id}/release`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ user_id: lease.user_id, lease_id: lease.lease_id }),
        });
        if (released.status !== 200) errors += 1;
        await new Promise((resolve) => setTimeout(resolve, Math.max(0, 1000 / args.rate - (Date.now() - started))));
      }
      errors += await drained(lagFrom, args.activations * 2);
      const { rows: lags } = await db.query<{ ms: number }>(
        `SELECT (extract(epoch FROM (SELECT min(a.started_at) FROM webhook_attempts a WHERE a.delivery_id = d.id) - e.at) * 1000)::float8 AS ms
         FROM webhook_deliveries d JOIN events e ON e.id = d.event_id
         WHERE d.id > $1 ORDER BY 1`,
        [lagFrom],
      );
      const lag = lags.map((r) => r.ms);

      // The throughput, draining the backlog of a burst.
      const burstFrom = await since();
      const burst = await runLoad(
        { kind: 'cycle', url: args.url, connections: args.connections, warmupSec: 0, durationSec: args.durationSec, expect: [200, 201] },
        args.load,
      );
      errors += burst.errors;
      errors += await drained(burstFrom, burst.cycles * 2);
      const { rows } = await db.query<{ n: number; seconds: number }>(
        `SELECT count(DISTINCT a.delivery_id)::int AS n,
                extract(epoch FROM max(a.started_at) - min(a.started_at))::float8 AS seconds
         FROM webhook_attempts a WHERE a.delivery_id > $1`,
        [burstFrom],
      );
      const deliveries = rows[0]?.n ?? 0;
      const seconds = rows[0]?.seconds ?? 0;
      return {
        lagMs: { p50: percentile(lag, 0.5), p99: percentile(lag, 0.99), max: lag.at(-1) ?? 0, samples: lag.length },
        perSecond: seconds > 0 ? (deliveries - 1) / seconds : deliveries,
        deliveries,
        errors,
      };
    });
  } finally {
    await fetch(`${args.url}/api/admin/webhooks/${id}`, { method: 'DELETE', headers }).catch(() => undefined);
    await receiver.close();
  }
}
