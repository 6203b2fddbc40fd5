import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { ExpressAdapter } from '@bull-board/express';
import type { Queue } from 'bullmq';
import type { Express, RequestHandler } from 'express';
import { methodNotAllowed } from './errors.js';
import { pagePolicy } from './headers.js';

// The queue board at /admin/queues: @bull-board's page and API over this process's BullMQ queues
// (release jobs, webhook deliveries), behind the admin credentials (adminPageAuth), and
// read-only unless QUEUE_BOARD_WRITE=true.

export const QUEUE_BOARD_PATH = '/admin/queues';

export interface QueueBoardOptions {
  readonly queues: readonly Queue[];
  /** QUEUE_BOARD_WRITE: the board may act on jobs and queues. */
  readonly write: boolean;
  /** Lets admin callers through (src/http/authenticate.ts adminPageAuth), within their budget. */
  readonly admit: readonly RequestHandler[];
}

// The board's page needs, beyond what every page may do (src/http/headers.ts), as found by
// running it in Chromium:
// - base-uri 'self': the page sets <base href="/admin/queues/"> to find its assets.
// - style-src 'unsafe-inline': its loading screen is a <style> element and style attributes in
//   the page, and its React code writes style attributes. Styles only: scripts stay 'self'.
const policy = pagePolicy({ 'base-uri': ["'self'"], 'style-src': ["'self'", "'unsafe-inline'"] });

/** The page's link to its web fonts on fonts.googleapis.com: the page falls back to local fonts. */
const WEB_FONTS = /<link [^>]*href="https:\/\/fonts\.googleapis\.com\/[^>]*>\s*/g;

/** Takes the web fonts' link out of the board's page (the HTML its entry route renders). */
const withoutWebFonts: RequestHandler = (req, res, next) => {
  if (req.method === 'GET' && !/^\/(api|static)\//.test(req.path)) {
    const send = res.send.bind(res);
    res.send = (body?: unknown) => send(typeof body === 'string' ? body.replace(WEB_FONTS, '') : body);
  }
  next();
};

export function queueBoardRoutes(app: Express, options: QueueBoardOptions): void {
  const server = new ExpressAdapter().setBasePath(QUEUE_BOARD_PATH);
  createBullBoard({
    queues: options.queues.map((queue) => new BullMQAdapter(queue, { readOnlyMode: !options.write })),
    serverAdapter: server,
    options: { uiConfig: { boardTitle: 'token-lease queues' } },
  });
  const board = server.getRouter() as Express;
  // Its own Express app: without this it would add X-Powered-By and ETags to every answer.
  board.disable('x-powered-by');
  board.set('etag', false);
  // Read-only: bull-board hides its actions, and its API refuses every write here as well.
  const readOnly = methodNotAllowed(['GET']);
  const refuseWrites: RequestHandler = (req, res, next) => {
    if (!options.write && req.path.startsWith('/api/') && req.method !== 'GET' && req.method !== 'HEAD') readOnly(req, res, next);
    else next();
  };
  app.use(QUEUE_BOARD_PATH, ...options.admit, policy, refuseWrites, withoutWebFonts, board);
}
