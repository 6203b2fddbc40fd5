// The event log as the domain sees it: what an event is, who may read which, and pages of the
// log read up to a horizon (src/domain/eventFeed.ts keeps the horizon). The events are written
// by the lease functions in sql/, never from here.

import type { Queryable } from '../db/pool.js';
import { type EventRow, listEvents } from '../db/events.js';

export const EVENT_TYPES = [
  'lease.activated',
  'lease.renewed',
  'lease.released',
  'lease.expired',
  'lease.cleared',
  'lease.evicted',
  'lease.revoked',
  'lease.redeemed',
  'lease.retired',
  'token.retired',
] as const;
export type EventType = (typeof EVENT_TYPES)[number];

/** One change to a lease, as the log keeps it. */
export interface LeaseEvent {
  readonly id: number;
  readonly type: EventType;
  /** The change's clock: the database time it took once the token was locked. */
  readonly at: Date;
  readonly pool: string;
  readonly tokenId: string;
  readonly leaseId: string | null;
  readonly userId: string | null;
  /** The API client that made the lease: decides who may read the event, never shown. */
  readonly clientId: string | null;
  readonly fence: number | null;
  readonly startedAt: Date | null;
  readonly expiresAt: Date | null;
  readonly endedAt: Date | null;
}

/**
 * Who reads the log: everyone's events (`all`: AUTH_MODE=none, the read or admin scope), or
 * only those of the caller's own leases: a user's (a JWT's sub), or an API client's (the leases
 * it made).
 */
export interface Viewer {
  readonly all: boolean;
  readonly userId: string | null;
  readonly clientId: string | null;
}

export function mayRead(viewer: Viewer, event: LeaseEvent): boolean {
  if (viewer.all) return true;
  return (
    (viewer.userId !== null && event.userId === viewer.userId) ||
    (viewer.clientId !== null && event.clientId === viewer.clientId)
  );
}

export function toEvent(row: EventRow): LeaseEvent {
  return {
    id: Number(row.id),
    type: row.type as EventType,
    at: row.at,
    pool: row.pool,
    tokenId: row.token_id,
    leaseId: row.lease_id,
    userId: row.user_id,
    clientId: row.client_id,
    fence: row.fence === null ? null : Number(row.fence),
    startedAt: row.started_at,
    expiresAt: row.expires_at,
    endedAt: row.ended_at,
  };
}

export interface EventPage {
  readonly events: readonly LeaseEvent[];
  /** Where the next page starts: every event the viewer may read up to here is in this one. */
  readonly nextAfter: number;
}

/**
 * A viewer limited to their own leases scans at most this many ids per page, so a page costs the
 * same however few of the log's events are theirs; `nextAfter` then moves past what was scanned.
 */
const SCAN_WINDOW = 10_000;

/** The events after `after` up to `upTo` (a horizon: every id up to it is final) the viewer may read, oldest first. */
export async function readEvents(
  db: Queryable,
  args: { after: number; upTo: number; limit: number; viewer: Viewer },
): Promise<EventPage> {
  const { after, viewer, limit } = args;
  if (after >= args.upTo) return { events: [], nextAfter: after };
  const upTo = viewer.all ? args.upTo : Math.min(args.upTo, after + SCAN_WINDOW);
  // A viewer limited to their own leases who is neither a user nor a client reads nothing
  // (without this, both filters off would read everything).
  if (!viewer.all && viewer.userId === null && viewer.clientId === null) return { events: [], nextAfter: upTo };
  const rows = await listEvents(db, {
    after,
    upTo,
    limit,
    userId: viewer.all ? null : viewer.userId,
    clientId: viewer.all || viewer.userId !== null ? null : viewer.clientId,
  });
  const events = rows.map(toEvent);
  const last = events.at(-1);
  return { events, nextAfter: events.length === limit && last !== undefined ? last.id : upTo };
}
