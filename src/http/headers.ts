import type { IncomingMessage, ServerResponse } from 'node:http';
import type { RequestHandler } from 'express';
import helmet, { contentSecurityPolicy } from 'helmet';

// The security headers, set by helmet: every answer gets the strict set first (app.ts), and the
// browser pages (/dashboard, /docs, /admin/queues) replace its Content-Security-Policy with a
// page policy that lets them load what they need from this origin, and nothing from another.

type Directives = Record<string, readonly string[]>;

// helmet is Connect-style middleware: it takes Node's own request and response as well as
// Express's (https://helmetjs.github.io/faq/use-without-express), so the fast lane runs it too.

/**
 * On every answer: JSON is never to be sniffed as something else, cached on the way or framed,
 * and loads nothing (`default-src 'none'`). helmet's other headers come with it (no referrer,
 * same-origin resource and opener policies, `X-Frame-Options: DENY`), all but HSTS: TLS ends in
 * front of the service, where whoever runs it knows whether the whole host is HTTPS.
 */
export function securityHeaders(): (req: IncomingMessage, res: ServerResponse, next: (err?: unknown) => void) => void {
  const headers = helmet({
    contentSecurityPolicy: { useDefaults: false, directives: { defaultSrc: ["'none'"], frameAncestors: ["'none'"] } },
    xFrameOptions: { action: 'deny' },
    strictTransportSecurity: false,
  });
  return (req, res, next) => {
    res.setHeader('Cache-Control', 'no-store');
    headers(req, res, next);
  };
}

/** What every page may do: its own scripts, styles, images and calls, from this origin only. */
const PAGE: Directives = {
  'default-src': ["'none'"],
  'script-src': ["'self'"],
  'style-src': ["'self'"],
  'img-src': ["'self'"],
  'connect-src': ["'self'"],
  'base-uri': ["'none'"],
  'form-action': ["'none'"],
  'frame-ancestors': ["'none'"],
};

/** A page's Content-Security-Policy: PAGE, with `extra` directives replacing PAGE's. */
export function pagePolicy(extra: Directives = {}): RequestHandler {
  return contentSecurityPolicy({ useDefaults: false, directives: { ...PAGE, ...extra } });
}
