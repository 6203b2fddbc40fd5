import pg from 'pg';
import type { UsageRow } from '../src/db/queries.js';

// The invariants the service promises, checked against the database after (or during) a run.
// One checker serves the stress run, the property tests, the fault tests and the fuzzer; each
// violation names the invariant and carries the rows involved.
//
//  1 at-most-one      no token has two open usages; no user has two open usages; every token's
//                     pointer names its open usage and every open usage is pointed at
//  2 no-overlap       a token's usages never overlap in time, and their fences strictly increase
//                     (1, 2, 3, ...) in start order, up to the token's last_fence
//  3 status           the status the service reports for each token agrees with its usages
//                     (active exactly when an open usage has not expired)
//  4 no-leak          once the run has drained, no usage is open past expires_at plus the sweep
//                     interval and a margin
//  5 client-agreement every lease a client saw granted is a usage with the same token, user and
//                     fence; a release a client saw succeed ended that usage as released; a
//                     renewal it saw is not undone; no usage exists that no client was granted
//                     (when every answer was seen) and no refused activation left one behind;
//                     every validation agrees with the usage it names (valid only while it was
//                     that user's unexpired lease, each reason matching how the usage ended)

export type InvariantName = 'at-most-one' | 'no-overlap' | 'status' | 'no-leak' | 'client-agreement';

export interface Violation {
  readonly invariant: InvariantName;
  readonly message: string;
  readonly rows: unknown[];
}

/** What one client saw of one request. Times are the client's Date.now(). */
export type Observation =
  | {
      readonly op: 'activate';
      readonly userId: string;
      readonly sentAt: number;
      readonly receivedAt: number;
      readonly status: number;
      /** Present when the answer granted a lease (200 or 201). */
      readonly lease?: { leaseId: string; tokenId: string; fence: number } | undefined;
    }
  | {
      readonly op: 'release';
      readonly userId: string;
      readonly tokenId: string;
      readonly status: number;
      readonly leaseId?: string | undefined;
    }
  | {
      readonly op: 'renew';
      readonly userId: string;
      readonly tokenId: string;
      readonly status: number;
      readonly lease?: { leaseId: string; expiresAt: string } | undefined;
    }
  | {
      readonly op: 'validate';
      readonly userId: string;
      readonly tokenId: string;
      readonly fence: number;
      readonly sentAt: number;
      readonly receivedAt: number;
      readonly status: number;
      /** The answer's data, when the status is 200. */
      readonly valid?: boolean | undefined;
      readonly leaseId?: string | undefined;
      readonly reason?: string | undefined;
    };

export interface CheckOptions {
  /** Check invariant 4: the run has stopped and the sweep has had its interval to catch up. */
  readonly drained?: { sweepIntervalMs: number; marginMs: number } | undefined;
  /** Check invariant 5 against what the clients saw. */
  readonly observations?: readonly Observation[] | undefined;
  /**
   * Every answer that granted a lease was seen (no request timed out or lost its answer), so
   * every usage must be accounted for by an observation.
   */
  readonly everyAnswerSeen?: boolean | undefined;
}

/** Checks every invariant in one consistent snapshot; returns the violations (none expected). */
export async function checkInvariants(
  connectionString: string,
  options: CheckOptions = {},
): Promise<Violation[]> {
  const client = new pg.Client({ connectionString });
  await client.connect();
  try {
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    const violations = [
      ...(await atMostOne(client)),
      ...(await noOverlap(client)),
      ...(await statusAgrees(client)),
      ...(options.drained === undefined ? [] : await noLeak(client, options.drained)),
      ...(options.observations === undefined
        ? []
        : await clientAgreement(client, options.observations, options.everyAnswerSeen ?? false)),
    ];
    await client.query('COMMIT');
    return violations;
  } finally {
    await client.end();
  }
}

/** A readable report of violations, at most `limit` rows each. */
export function describeViolations(violations: readonly Violation[], limit = 5): string {
  return violations
    .map((v) => `[${v.invariant}] ${v.message}\n${v.rows.slice(0, limit).map((r) => `    ${JSON.stringify(r)}`).join('\n')}`)
    .join('\n');
}

async function rowsOf<R extends pg.QueryResultRow>(client: pg.Client, text: string, values: unknown[] = []) {
  return (await client.query<R>(text, values)).rows;
}

async function atMostOne(client: pg.Client): Promise<Violation[]> {
  const found: Violation[] = [];
  const perToken = await rowsOf(
    client,
    `SELECT token_id, array_agg(id) AS usages FROM all_usages WHERE ended_at IS NULL
     GROUP BY token_id HAVING count(*) > 1`,
  );
  if (perToken.length > 0) {
    found.push({ invariant: 'at-most-one', message: 'tokens with two open usages', rows: perToken });
  }
  const perUser = await rowsOf(
    client,
    `SELECT pool_id, user_id, array_agg(id) AS usages FROM all_usages WHERE ended_at IS NULL
     GROUP BY pool_id, user_id HAVING count(*) > 1`,
  );
  if (perUser.length > 0) {
    found.push({ invariant: 'at-most-one', message: 'users with two open usages', rows: perUser });
  }
  const both = await rowsOf(client, 'SELECT l.id, l.token_id FROM leases l JOIN usages u USING (id)');
  if (both.length > 0) {
    found.push({ invariant: 'at-most-one', message: 'leases both open and ended', rows: both });
  }
  const pointers = await rowsOf(
    client,
    `SELECT t.id AS token_id, t.lease_id, u.id AS open_usage
     FROM tokens t FULL JOIN (SELECT * FROM all_usages WHERE ended_at IS NULL) u ON u.token_id = t.id
     WHERE (t.lease_id IS NOT NULL OR u.id IS NOT NULL) AND (t.lease_id IS DISTINCT FROM u.id OR t.user_id IS DISTINCT FROM u.user_id
        OR t.started_at IS DISTINCT FROM u.started_at OR t.expires_at IS DISTINCT FROM u.expires_at
        OR t.pool_id IS DISTINCT FROM u.pool_id)`,
  );
  if (pointers.length > 0) {
    found.push({
      invariant: 'at-most-one',
      message: "tokens whose copy of their lease does not match their open usage",
      rows: pointers,
    });
  }
  return found;
}

async function noOverlap(client: pg.Client): Promise<Violation[]> {
  const found: Violation[] = [];
  const overlapping = await rowsOf(
    client,
    `SELECT * FROM (
       SELECT token_id, id, fence, started_at, ended_at,
              lag(id) OVER w AS previous_id, lag(fence) OVER w AS previous_fence,
              lag(started_at) OVER w AS previous_started_at,
              lag(ended_at) OVER w AS previous_ended_at
       FROM all_usages WINDOW w AS (PARTITION BY token_id ORDER BY fence)
     ) x
     WHERE previous_id IS NOT NULL AND (
       previous_ended_at IS NULL OR previous_ended_at > started_at
       OR previous_started_at > started_at OR fence <> previous_fence + 1)`,
  );
  if (overlapping.length > 0) {
    found.push({
      invariant: 'no-overlap',
      message: 'usages of one token that overlap, or whose fences do not follow their start order',
      rows: overlapping,
    });
  }
  const fences = await rowsOf(
    client,
    `SELECT t.id AS token_id, t.last_fence, min(u.fence) AS first, max(u.fence) AS last
     FROM tokens t LEFT JOIN all_usages u ON u.token_id = t.id
     GROUP BY t.id, t.last_fence
     HAVING t.last_fence <> coalesce(max(u.fence), 0) OR coalesce(min(u.fence), 1) <> 1`,
  );
  if (fences.length > 0) {
    found.push({
      invariant: 'no-overlap',
      message: "tokens whose last_fence is not their latest usage's fence, or whose fences do not start at 1",
      rows: fences,
    });
  }
  return found;
}

async function statusAgrees(client: pg.Client): Promise<Violation[]> {
  // What the service reports (it reads the token's pointer) against what the usages say.
  const disagreeing = await rowsOf(
    client,
    `WITH reported AS (
       SELECT t.id, t.expires_at > now() IS TRUE AS active,
              CASE WHEN t.expires_at > now() THEN t.user_id END AS user_id
       FROM tokens t
     ), truth AS (
       SELECT t.id, o.id IS NOT NULL AS active, o.user_id
       FROM tokens t
       LEFT JOIN all_usages o ON o.token_id = t.id AND o.ended_at IS NULL AND o.expires_at > now()
     )
     SELECT r.id AS token_id, r.active AS reported_active, r.user_id AS reported_user,
            t.active AS active, t.user_id AS user_id
     FROM reported r JOIN truth t USING (id)
     WHERE r.active <> t.active OR r.user_id IS DISTINCT FROM t.user_id`,
  );
  return disagreeing.length === 0
    ? []
    : [{ invariant: 'status', message: 'tokens reported with the wrong status or holder', rows: disagreeing }];
}

async function noLeak(
  client: pg.Client,
  drained: { sweepIntervalMs: number; marginMs: number },
): Promise<Violation[]> {
  const leaked = await rowsOf(
    client,
    `SELECT * FROM all_usages
     WHERE ended_at IS NULL AND expires_at < now() - ($1::int + $2::int) * interval '1 millisecond'`,
    [drained.sweepIntervalMs, drained.marginMs],
  );
  return leaked.length === 0
    ? []
    : [{ invariant: 'no-leak', message: 'usages still open long after they expired', rows: leaked }];
}

async function clientAgreement(
  client: pg.Client,
  observations: readonly Observation[],
  everyAnswerSeen: boolean,
): Promise<Violation[]> {
  const found: Violation[] = [];
  const usages = await rowsOf<UsageRow>(client, 'SELECT * FROM all_usages');
  const byId = new Map(usages.map((u) => [u.id, u]));

  const granted = observations.flatMap((o) => (o.op === 'activate' && o.lease !== undefined ? [{ o, lease: o.lease }] : []));
  const mismatched = granted.filter(({ o, lease }) => {
    const row = byId.get(lease.leaseId);
    return row === undefined || row.token_id !== lease.tokenId || row.user_id !== o.userId || Number(row.fence) !== lease.fence;
  });
  if (mismatched.length > 0) {
    found.push({
      invariant: 'client-agreement',
      message: 'leases clients were granted that the database does not hold as granted',
      rows: mismatched.map(({ o, lease }) => ({ seen: { userId: o.userId, ...lease }, row: byId.get(lease.leaseId) ?? null })),
    });
  }

  const releases = observations.filter(
    (o): o is Extract<Observation, { op: 'release' }> => o.op === 'release' && o.status === 200 && o.leaseId !== undefined,
  );
  const notReleased = releases.filter((o) => byId.get(o.leaseId ?? '')?.end_reason !== 'released');
  if (notReleased.length > 0) {
    found.push({
      invariant: 'client-agreement',
      message: 'releases clients saw succeed whose usage did not end as released',
      rows: notReleased.map((o) => ({ seen: o, row: byId.get(o.leaseId ?? '') ?? null })),
    });
  }

  const renewals = observations.filter(
    (o): o is Extract<Observation, { op: 'renew' }> => o.op === 'renew' && o.status === 200 && o.lease !== undefined,
  );
  const undone = renewals.filter((o) => {
    const row = byId.get(o.lease?.leaseId ?? '');
    return row === undefined || row.expires_at.getTime() < Date.parse(o.lease?.expiresAt ?? '');
  });
  if (undone.length > 0) {
    found.push({
      invariant: 'client-agreement',
      message: 'renewals clients saw succeed that the database does not hold',
      rows: undone.map((o) => ({ seen: o, row: byId.get(o.lease?.leaseId ?? '') ?? null })),
    });
  }

  const seen = new Set(granted.map(({ lease }) => lease.leaseId));
  if (everyAnswerSeen) {
    const phantoms = usages.filter((u) => !seen.has(u.id));
    if (phantoms.length > 0) {
      found.push({ invariant: 'client-agreement', message: 'usages no client was granted', rows: phantoms });
    }
  }

  // A refused activation must not have left a usage of that user behind, unless some granted
  // answer accounts for it. 50 ms of slack covers the client's and the database's clocks.
  const refused = observations.filter(
    (o): o is Extract<Observation, { op: 'activate' }> => o.op === 'activate' && o.lease === undefined && o.status >= 400 && o.status < 500,
  );
  const usagesByUser = new Map<string, UsageRow[]>();
  for (const u of usages) {
    const list = usagesByUser.get(u.user_id);
    if (list === undefined) usagesByUser.set(u.user_id, [u]);
    else list.push(u);
  }
  const leftBehind = refused.flatMap((o) =>
    (usagesByUser.get(o.userId) ?? [])
      .filter((u) => !seen.has(u.id) && u.started_at.getTime() >= o.sentAt - 50 && u.started_at.getTime() <= o.receivedAt + 50)
      .map((u) => ({ seen: o, row: u })),
  );
  if (leftBehind.length > 0) {
    found.push({
      invariant: 'client-agreement',
      message: 'refused activations that left a usage behind',
      rows: leftBehind,
    });
  }

  const wrongValidations = validationsDisagreeing(observations, usages, granted);
  if (wrongValidations.length > 0) {
    found.push({
      invariant: 'client-agreement',
      message: 'validations whose answer disagrees with the usage they name',
      rows: wrongValidations,
    });
  }
  return found;
}

type ValidateObservation = Extract<Observation, { op: 'validate' }>;

/**
 * Validations checked against the final rows. Only what the rows can prove is checked: a usage's
 * ended_at is stamped before its ending transaction commits, so a validation may still see it
 * open after that stamp; `valid` is checked against the expiry, not against ended_at.
 */
function validationsDisagreeing(
  observations: readonly Observation[],
  usages: readonly UsageRow[],
  granted: ReadonlyArray<{ o: Extract<Observation, { op: 'activate' }>; lease: { tokenId: string; fence: number } }>,
): Array<{ seen: ValidateObservation; row: UsageRow | null }> {
  const slackMs = 50;
  const byFence = new Map(usages.map((u) => [`${u.token_id}/${u.fence}`, u]));
  const grantedAt = new Map<string, number>();
  for (const { o, lease } of granted) {
    const key = `${lease.tokenId}/${lease.fence}`;
    grantedAt.set(key, Math.min(grantedAt.get(key) ?? Infinity, o.receivedAt));
  }
  const agrees = (o: ValidateObservation, row: UsageRow | undefined): boolean => {
    if (o.valid === true) {
      return (
        row !== undefined &&
        row.user_id === o.userId &&
        row.id === o.leaseId &&
        row.started_at.getTime() <= o.receivedAt + slackMs &&
        row.expires_at.getTime() >= o.sentAt - slackMs
      );
    }
    const endedBy = (reason: string) =>
      row !== undefined &&
      row.user_id === o.userId &&
      row.end_reason === reason &&
      (row.ended_at?.getTime() ?? Infinity) <= o.receivedAt + slackMs;
    switch (o.reason) {
      case 'unknown_lease':
        // Rows are never deleted: a lease some client had been granted before asking exists.
        // (Granted and asked within the same millisecond is given the benefit of the doubt.)
        return (grantedAt.get(`${o.tokenId}/${o.fence}`) ?? Infinity) >= o.sentAt;
      case 'not_holder':
        return row !== undefined && row.user_id !== o.userId;
      case 'released':
      case 'cleared':
      case 'revoked':
        return endedBy(o.reason);
      case 'superseded':
        return endedBy('evicted');
      case 'expired':
        // Ran out before the answer, and ended as expired: validate ends a run-out lease (under
        // its token's lock) before it answers so.
        return (
          row !== undefined &&
          row.user_id === o.userId &&
          row.end_reason === 'expired' &&
          row.expires_at.getTime() <= o.receivedAt + slackMs
        );
      default:
        return false;
    }
  };
  const validations = observations.filter((o): o is ValidateObservation => o.op === 'validate' && o.status === 200);
  // Monotonic: once a lease was answered invalid, no validation sent after that answer is valid.
  const invalidSince = new Map<string, number>();
  for (const o of validations) {
    const key = `${o.tokenId}/${o.fence}/${o.userId}`;
    if (o.valid === false) invalidSince.set(key, Math.min(invalidSince.get(key) ?? Infinity, o.receivedAt));
  }
  const revived = (o: ValidateObservation) =>
    o.valid === true && (invalidSince.get(`${o.tokenId}/${o.fence}/${o.userId}`) ?? Infinity) < o.sentAt;
  return validations.flatMap((o) => {
    const row = byFence.get(`${o.tokenId}/${o.fence}`);
    return agrees(o, row) && !revived(o) ? [] : [{ seen: o, row: row ?? null }];
  });
}
