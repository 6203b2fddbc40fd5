import type { Express, Request, Response } from 'express';
import type { EventFeed } from '../domain/eventFeed.js';
import { type LeaseEvent, type Viewer, mayRead } from '../domain/events.js';
import { AppError, ERRORS, UnavailableError } from '../errors.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import { hasScope } from '../auth/caller.js';
import { callerOf, type AuthMode } from './authenticate.js';
import type { EventJson, EventsPageJson } from './contract.js';
import { methodNotAllowed } from './errors.js';
import { sendJson } from './json.js';
import { iso } from './readModel.js';
import { eventId, eventsQuery, parse, streamQuery } from './schemas.js';

// The event log over HTTP (docs/events.md): GET /api/events pages through it, and
// GET /api/events/stream sends the same events as Server-Sent Events, first what a resuming
// client missed (read from the log), then each new event as this process's feed reads it.
// A short module of our own: the stream is a few header lines and one frame format.

const isoOrNull = (date: Date | null) => (date === null ? null : iso(date));

export function eventJson(event: LeaseEvent): EventJson {
  return {
    id: event.id,
    type: event.type,
    timestamp: iso(event.at),
    data: {
      pool: event.pool,
      token_id: event.tokenId,
      lease_id: event.leaseId,
      user_id: event.userId,
      fence: event.fence,
      started_at: isoOrNull(event.startedAt),
      expires_at: isoOrNull(event.expiresAt),
      ended_at: isoOrNull(event.endedAt),
    },
  };
}

/** Who may read which events (docs/security.md): everyone's with AUTH_MODE=none or the read scope. */
export function viewerOf(mode: AuthMode, res: Response): Viewer {
  const caller = callerOf(res);
  return { all: mode === 'none' || hasScope(caller, 'read'), userId: caller.userId, clientId: caller.clientId };
}

const frame = (event: LeaseEvent) => `id: ${event.id}\nevent: ${event.type}\ndata: ${JSON.stringify(eventJson(event))}\n\n`;

/** A comment line every this often keeps proxies from closing an idle stream. */
const HEARTBEAT_MS = 15_000;
/** A stream whose client reads slower than events come is ended past this much unsent; it resumes with Last-Event-ID. */
const MAX_UNSENT_BYTES = 1024 * 1024;
const CATCH_UP_PAGE = 500;

export interface EventStreams {
  /** Serves GET /api/events/stream. */
  open(req: Request, res: Response, viewer: Viewer): Promise<void>;
  /** Ends every stream at once (shutdown): clients reconnect elsewhere with Last-Event-ID. */
  close(): void;
}

interface Stream {
  readonly res: Response;
  readonly viewer: Viewer;
  /** The last event id this stream has passed (sent, or not the viewer's to read). */
  position: number;
  /** False while it catches up from the log; the feed's events reach it once it is live. */
  live: boolean;
  /** Ended, by either side: nothing more is written. */
  closed: boolean;
}

/** Resolves once `res` has sent what it buffered, or its connection has gone. */
function drained(res: Response): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.once('drain', done);
    res.once('close', done);
  });
}

/** The streams of this process, fed by one EventFeed; at most `maxStreams` at once. */
export function createEventStreams(deps: {
  feed: EventFeed;
  maxStreams: number;
  log: Logger;
  metrics: Metrics;
  heartbeatMs?: number;
}): EventStreams {
  const { feed, log, metrics } = deps;
  const streams = new Set<Stream>();
  let closing = false;
  let unfollow: (() => void) | undefined;
  let heartbeat: NodeJS.Timeout | undefined;

  const write = (stream: Stream, text: string) => {
    if (stream.closed) return;
    stream.res.write(text);
    if (stream.res.writableLength > MAX_UNSENT_BYTES) {
      log.info({ unsent: stream.res.writableLength }, 'event stream ended: its client reads too slowly');
      stream.closed = true;
      stream.res.end();
    }
  };

  // Each event is serialised once, and each stream gets one write per batch.
  const deliver = (events: readonly LeaseEvent[]) => {
    const frames = new Map<number, string>();
    for (const stream of streams) {
      if (!stream.live) continue;
      let text = '';
      for (const event of events) {
        if (event.id <= stream.position) continue;
        stream.position = event.id;
        if (!mayRead(stream.viewer, event)) continue;
        let framed = frames.get(event.id);
        if (framed === undefined) {
          framed = frame(event);
          frames.set(event.id, framed);
        }
        text += framed;
      }
      if (text !== '') write(stream, text);
    }
  };

  function added(stream: Stream): void {
    streams.add(stream);
    metrics.openStreams.set(streams.size);
    if (streams.size === 1) {
      unfollow = feed.follow(deliver);
      heartbeat = setInterval(() => {
        for (const s of streams) write(s, ': keep-alive\n\n');
      }, deps.heartbeatMs ?? HEARTBEAT_MS);
      heartbeat.unref();
    }
  }

  function removed(stream: Stream): void {
    if (!streams.delete(stream)) return;
    metrics.openStreams.set(streams.size);
    if (streams.size === 0) {
      unfollow?.();
      unfollow = undefined;
      clearInterval(heartbeat);
    }
  }

  /** Reads what the stream missed from the log, up to the feed's horizon, then makes it live. */
  async function catchUp(stream: Stream): Promise<void> {
    for (;;) {
      const upTo = feed.knownHorizon();
      if (stream.position >= upTo) {
        stream.live = true;
        return;
      }
      const page = await feed.page({ after: stream.position, upTo, limit: CATCH_UP_PAGE, viewer: stream.viewer });
      if (stream.closed) return;
      for (const event of page.events) write(stream, frame(event));
      stream.position = page.nextAfter;
      // Only a write past the buffer's high-water mark is followed by 'drain'.
      if (stream.res.writableNeedDrain) await drained(stream.res);
      // The connection may have gone while it drained.
      // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition
      if (stream.closed) return;
    }
  }

  return {
    async open(req, res, viewer) {
      const query = parse(streamQuery, req.query, 'query');
      const header = req.headers['last-event-id'];
      const resumeAt = header === undefined ? query.after : parse(eventId, header, 'Last-Event-ID');
      if (closing) throw new UnavailableError('shutting_down');
      if (streams.size >= deps.maxStreams) throw new AppError(ERRORS.too_many_streams, { max_streams: deps.maxStreams });

      const stream: Stream = { res, viewer, position: Number.MAX_SAFE_INTEGER, live: false, closed: false };
      added(stream);
      res.on('close', () => {
        stream.closed = true;
        removed(stream);
      });
      // A connection that fails mid-stream ends it; the client resumes with Last-Event-ID.
      res.on('error', (err) => log.debug({ err }, 'event stream failed'));
      res.writeHead(200, {
        'Content-Type': 'text/event-stream; charset=utf-8',
        // Proxies such as nginx would otherwise hold events back in their buffers.
        'X-Accel-Buffering': 'no',
      });
      res.flushHeaders();
      try {
        // A horizon confirmed after this request came (and after the feed began to follow the
        // log): from it on, the feed hands this stream every event.
        const now = await feed.horizon();
        if (resumeAt === undefined) {
          // What happens from now on: after every event committed before this request.
          stream.position = now;
        } else {
          const removedThrough = await feed.removedThrough();
          if (resumeAt < removedThrough) {
            res.write(`event: reset\ndata: ${JSON.stringify({ after: resumeAt, removed_through: removedThrough })}\n\n`);
          }
          stream.position = resumeAt;
        }
        // The first line: from here on, every event after the starting point comes.
        res.write(': token-lease events\n\n');
        await catchUp(stream);
      } catch (err) {
        // The answer has begun: the stream ends, and the client resumes with Last-Event-ID.
        log.warn({ err }, 'event stream could not catch up');
        res.end();
      }
    },
    close() {
      closing = true;
      for (const stream of streams) {
        stream.closed = true;
        stream.res.end();
      }
    },
  };
}

/** GET /api/events and GET /api/events/stream. */
export function eventRoutes(
  router: Pick<Express, 'route'>,
  deps: { feed: EventFeed; streams: EventStreams; mode: AuthMode },
): void {
  const { feed, streams, mode } = deps;

  router
    .route('/api/events')
    .get(async (req, res) => {
      const query = parse(eventsQuery, req.query, 'query');
      const page = await feed.page({ after: query.after, limit: query.limit, viewer: viewerOf(mode, res) });
      const data: EventsPageJson = { events: page.events.map(eventJson), next_after: page.nextAfter };
      sendJson(res, 200, { data });
    })
    .all(methodNotAllowed(['GET']));

  router
    .route('/api/events/stream')
    .get((req, res) => streams.open(req, res, viewerOf(mode, res)))
    .all(methodNotAllowed(['GET']));
}
