import { z } from 'zod';
import { CLIENT_SCOPES } from '../domain/clients.js';
import { MAX_VALUES_PER_CALL } from '../domain/addTokens.js';
import { IDEMPOTENCY_KEY_FORMAT } from '../domain/idempotency.js';
import { VALUE_FORMAT } from '../domain/values.js';
import { EVENT_TYPES } from '../domain/events.js';
import { ValidationError } from '../errors.js';

// Request shapes. Unknown fields are ignored (clients may send more than we read).

// Any 8-4-4-4-12 hex UUID, as PostgreSQL accepts it, not only RFC 9562 versions.
const uuid = z.guid({ error: 'must be a UUID' });

// PostgreSQL answers UUIDs in lower case; compare them that way too.
const lowerCaseUuid = uuid.transform((id) => id.toLowerCase());
const userId = lowerCaseUuid;
/** Lease ids in bodies and paths (in a path, anything else is a 404, as for a lease that does not exist). */
export const leaseId = lowerCaseUuid;

/**
 * A number in a query string, written in plain decimal (`pattern`), from `min` to `max`. Coercing
 * with Number() instead read '' and ' ' as 0, and took '0x1E' or '3e1'.
 */
function decimal(pattern: RegExp, message: string, min: number, max: number) {
  return z
    .string({ error: message })
    .regex(pattern, { error: message })
    .meta({ description: message.replace(/^must be /, '') })
    .transform(Number)
    .pipe(z.number().min(min, { error: message }).max(max, { error: message }));
}

// user_id may be left out when the caller is a user (a JWT's sub); the routes then require it
// of anyone else (authenticate.ts, actingUser).
export const userBody = z.object(
  { user_id: userId.optional() },
  { error: 'the body must be a JSON object with a user_id' },
);

export const leaseBody = z.object(
  {
    user_id: userId.optional(),
    lease_id: leaseId,
  },
  { error: 'the body must be a JSON object with a user_id and a lease_id' },
);

export const validateBody = z.object(
  {
    user_id: userId,
    fence: z
      .number({ error: 'must be the fence number of the lease' })
      .int({ error: 'must be the fence number of the lease' })
      .min(1, { error: 'must be the fence number of the lease' })
      .max(Number.MAX_SAFE_INTEGER, { error: 'must be the fence number of the lease' }),
  },
  { error: 'the body must be a JSON object with a user_id and a fence' },
);

// A token's value: the messages never repeat it (an answer or a log line must not carry it).
const VALUE_MESSAGE = 'must be a token value: 1 to 256 printable ASCII characters without spaces';
const tokenValue = z.string({ error: VALUE_MESSAGE }).regex(VALUE_FORMAT, { error: VALUE_MESSAGE });

export const checkBody = z.object({ value: tokenValue }, { error: 'the body must be a JSON object with a value' });

export const redeemBody = z.object(
  { user_id: userId.optional(), value: tokenValue },
  { error: 'the body must be a JSON object with a user_id and a value' },
);

// POST /api/admin/tokens/:id/retire: no body, or {"now": true} to end a held token's lease now.
export const retireBody = z
  .object({ now: z.boolean({ error: 'must be true or false' }).default(false) }, { error: 'the body must be a JSON object' })
  .optional()
  .transform((body) => ({ now: body?.now ?? false }));

const COUNT_MESSAGE = `must be a whole number of tokens from 1 to ${MAX_VALUES_PER_CALL}`;
export const generateBody = z.object(
  { count: z.int({ error: COUNT_MESSAGE }).min(1, { error: COUNT_MESSAGE }).max(MAX_VALUES_PER_CALL, { error: COUNT_MESSAGE }) },
  { error: 'the body must be a JSON object with a count' },
);

const VALUES_MESSAGE = `must be a list of at most ${MAX_VALUES_PER_CALL} values`;
/** An import as JSON; each entry is checked on its own (a bad one is reported, not refused). */
export const importJsonBody = z.object(
  { values: z.array(z.unknown(), { error: VALUES_MESSAGE }).max(MAX_VALUES_PER_CALL, { error: VALUES_MESSAGE }) },
  { error: 'the body must be a JSON object with values, or text/plain with one value a line' },
);

/** An import as text/plain: one value a line, blank lines skipped; each keeps its line number. */
export function importLines(text: string): Array<{ line: number; value: string }> {
  const lines = text
    .split('\n')
    .map((raw, i) => ({ line: i + 1, value: raw.endsWith('\r') ? raw.slice(0, -1) : raw }))
    .filter(({ value }) => value.trim() !== '');
  if (lines.length > MAX_VALUES_PER_CALL) throw new ValidationError([{ field: 'body', message: VALUES_MESSAGE }]);
  return lines;
}

const IDEMPOTENCY_KEY_MESSAGE = 'must be 1 to 255 visible ASCII characters';
export const idempotencyKey = z
  .string()
  .regex(IDEMPOTENCY_KEY_FORMAT, { error: IDEMPOTENCY_KEY_MESSAGE })
  .optional();

export const MAX_WAIT_SECONDS = 60;

export const activateQuery = z
  .object({
    wait: decimal(
      /^([0-9]+(\.[0-9]*)?|\.[0-9]+)$/,
      `must be a number of seconds from 0 to ${MAX_WAIT_SECONDS}`,
      0,
      MAX_WAIT_SECONDS,
    ).optional(),
  })
  // Whole milliseconds, rounded up so that any positive wait waits: the waiting queue keeps its
  // deadlines in integer milliseconds, and ?wait=0.0125 (12.5 ms) used to fail there with a 500.
  .transform(({ wait }) => ({ waitMs: wait === undefined ? 0 : Math.ceil(wait * 1000) }));

// POST /api/admin/clients. Scopes: lease, read, admin (src/domain/clients.ts).
export const clientBody = z.object(
  {
    name: z
      .string({ error: 'must be a name of 1 to 100 characters' })
      .trim()
      .min(1, { error: 'must be a name of 1 to 100 characters' })
      .max(100, { error: 'must be a name of 1 to 100 characters' }),
    scopes: z
      .array(z.enum(CLIENT_SCOPES, { error: 'must be lease, read or admin' }), { error: 'must be a list of scopes' })
      .min(1, { error: 'must name at least one scope' }),
  },
  { error: 'the body must be a JSON object with a name and scopes' },
);

// Pools (POST and PATCH /api/admin/pools). Settings left out follow the service's; in a PATCH,
// null puts one back to the service's.
export const POOL_NAME = /^[a-z0-9-]{1,63}$/;
const POOL_NAME_MESSAGE = 'must be 1 to 63 lower-case letters, digits and -';
export const poolName = z.string({ error: POOL_NAME_MESSAGE }).regex(POOL_NAME, { error: POOL_NAME_MESSAGE });

function whole(min: number, max: number, message: string) {
  return z.int({ error: message }).min(min, { error: message }).max(max, { error: message });
}

const MAX_POOL_SIZE = 10_000_000;
const MAX_MS = 2_147_483_647;
const poolSettings = {
  lease_ttl_ms: whole(100, MAX_MS, `must be a whole number of milliseconds from 100 to ${MAX_MS}`),
  max_lease_ms: whole(100, MAX_MS, `must be a whole number of milliseconds from 100 to ${MAX_MS}`),
  full_policy: z.enum(['reject', 'evict_oldest'], { error: 'must be reject or evict_oldest' }),
  max_waiters: whole(0, 100_000, 'must be a whole number from 0 to 100000'),
};
const poolSize = whole(0, MAX_POOL_SIZE, `must be a whole number of tokens from 0 to ${MAX_POOL_SIZE}`);

export const poolBody = z.object(
  {
    name: poolName,
    size: poolSize.default(0),
    lease_ttl_ms: poolSettings.lease_ttl_ms.optional(),
    max_lease_ms: poolSettings.max_lease_ms.optional(),
    full_policy: poolSettings.full_policy.optional(),
    max_waiters: poolSettings.max_waiters.optional(),
  },
  { error: 'the body must be a JSON object with a name' },
);

export const poolPatch = z.object(
  {
    size: poolSize.optional(),
    lease_ttl_ms: poolSettings.lease_ttl_ms.nullable().optional(),
    max_lease_ms: poolSettings.max_lease_ms.nullable().optional(),
    full_policy: poolSettings.full_policy.nullable().optional(),
    max_waiters: poolSettings.max_waiters.nullable().optional(),
  },
  { error: 'the body must be a JSON object' },
);

/** POST /api/admin/users/:user_id/revoke: a user is no resource of the service, so a malformed id is a 422. */
export const userPathParameters = z.object({ user_id: userId });

/** Client ids in paths: anything else is a 404, as for a client that does not exist. */
export const clientId = lowerCaseUuid;

/** Token ids in paths: anything else is a 404, as for a token that does not exist. */
export const tokenId = lowerCaseUuid;

const MAX_HISTORY_PAGE = 500;

export const historyQuery = z.object({
  limit: decimal(/^[0-9]+$/, `must be an integer from 1 to ${MAX_HISTORY_PAGE}`, 1, MAX_HISTORY_PAGE).default(50),
  cursor: z
    .string({ error: 'must be a next_cursor from a previous page' })
    .transform((cursor, ctx) => {
      const fence = decodeCursor(cursor);
      if (fence === null) {
        ctx.addIssue({ code: 'custom', message: 'must be a next_cursor from a previous page' });
        return z.NEVER;
      }
      return fence;
    })
    .optional(),
});

const MAX_EVENTS_PAGE = 1_000;
const EVENT_ID = /^[0-9]{1,16}$/;
const EVENT_ID_MESSAGE = 'must be an event id: a whole number, 0 for the beginning';
/** An event id in a query or in Last-Event-ID: plain digits, at most 2^53 - 1. */
export const eventId = decimal(EVENT_ID, EVENT_ID_MESSAGE, 0, Number.MAX_SAFE_INTEGER);

export const eventsQuery = z.object({
  after: eventId.default(0),
  limit: decimal(/^[0-9]+$/, `must be an integer from 1 to ${MAX_EVENTS_PAGE}`, 1, MAX_EVENTS_PAGE).default(100),
});

/** ?after= on the stream; without it (and without Last-Event-ID) the stream starts with what happens next. */
export const streamQuery = z.object({ after: eventId.optional() });

// Webhooks (POST /api/admin/webhooks). Where the URL may point is checked by the domain
// (src/domain/webhookAddresses.ts), which looks its host up.
const WEBHOOK_URL_MESSAGE = 'must be an http or https URL of at most 2000 characters';
export const webhookBody = z.object(
  {
    url: z
      .string({ error: WEBHOOK_URL_MESSAGE })
      .max(2000, { error: WEBHOOK_URL_MESSAGE })
      .refine((url) => URL.canParse(url) && /^https?:$/.test(new URL(url).protocol), { error: WEBHOOK_URL_MESSAGE }),
    events: z
      .array(z.enum(EVENT_TYPES, { error: `must be event types: ${EVENT_TYPES.join(', ')}` }), {
        error: 'must be a list of event types',
      })
      .min(1, { error: 'must name at least one event type' }),
  },
  { error: 'the body must be a JSON object with a url and events' },
);

/** Webhook ids in paths: anything else is a 404, as for a webhook that does not exist. */
export const webhookId = lowerCaseUuid;

/** Delivery ids in paths: plain digits; anything else is a 404. */
export const deliveryId = z.string().regex(/^[1-9][0-9]{0,15}$/).transform(Number).pipe(z.number().max(Number.MAX_SAFE_INTEGER));

const MAX_DELIVERIES_PAGE = 200;
export const deliveriesQuery = z.object({
  limit: decimal(/^[0-9]+$/, `must be an integer from 1 to ${MAX_DELIVERIES_PAGE}`, 1, MAX_DELIVERIES_PAGE).default(50),
  before: decimal(/^[0-9]{1,16}$/, 'must be a delivery id: a whole number', 1, Number.MAX_SAFE_INTEGER).optional(),
});

// A history cursor is opaque to clients; it carries the fence of the last usage they saw.
export function encodeCursor(fence: number): string {
  return Buffer.from(`f${fence}`).toString('base64url');
}

function decodeCursor(cursor: string): number | null {
  const match = /^f([1-9][0-9]{0,14})$/.exec(Buffer.from(cursor, 'base64url').toString());
  return match?.[1] === undefined ? null : Number(match[1]);
}

/** Parses `input` or throws a 422 naming every offending field. */
export function parse<S extends z.ZodType>(schema: S, input: unknown, what: string): z.output<S> {
  const result = schema.safeParse(input);
  if (result.success) return result.data;
  throw new ValidationError(
    result.error.issues.map((issue) => ({
      field: issue.path.length === 0 ? what : issue.path.join('.'),
      message: issue.message,
    })),
  );
}

// GET /api/stats. Times are ISO 8601 with an offset; the window starts on a whole minute (the
// activity counters' unit) and holds at most MAX_STATS_BUCKETS buckets.
export const MAX_STATS_BUCKETS = 1440;
const STATS_TIME_MESSAGE = 'must be an ISO 8601 time with a time zone, such as 2026-01-01T00:00:00Z';
const statsTime = z.iso.datetime({ offset: true, error: STATS_TIME_MESSAGE }).transform((t) => new Date(t));
const BUCKET_MESSAGE = 'must be a whole number of minutes in seconds, from 60 to 86400';

export const statsQuery = z
  .object({
    pool: poolName.default('default'),
    from: statsTime.optional().meta({ description: 'Start of the window, rounded down to the minute; default: an hour before `to`' }),
    to: statsTime.optional().meta({ description: 'End of the window; default: now' }),
    bucket: decimal(/^[0-9]+$/, BUCKET_MESSAGE, 60, 86_400)
      .refine((s) => s % 60 === 0, { error: BUCKET_MESSAGE })
      .default(60),
  })
  .transform((q, ctx) => {
    const toMs = q.to?.getTime() ?? Date.now();
    const fromMs = Math.floor((q.from?.getTime() ?? toMs - 3_600_000) / 60_000) * 60_000;
    const buckets = Math.ceil((toMs - fromMs) / (q.bucket * 1000));
    if (buckets < 1) {
      ctx.addIssue({ code: 'custom', path: ['to'], message: 'must be later than from' });
      return z.NEVER;
    }
    if (buckets > MAX_STATS_BUCKETS) {
      ctx.addIssue({ code: 'custom', path: ['bucket'], message: `gives more than ${MAX_STATS_BUCKETS} buckets: widen it or narrow the window` });
      return z.NEVER;
    }
    return { pool: q.pool, from: new Date(fromMs), bucketSeconds: q.bucket, buckets };
  });
