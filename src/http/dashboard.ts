import { fileURLToPath } from 'node:url';
import express, { type Express, type RequestHandler } from 'express';

// The dashboard (docs/dashboard.md): files from public/dashboard/ and uPlot from node_modules,
// served from this origin only. Static middleware rather than routes: they are files, not
// operations of the API, and the OpenAPI document lists operations.

/** public/dashboard/ at the repository root, from src/http (tsx, tests) and from dist/http. */
const pageDir = fileURLToPath(new URL('../../public/dashboard', import.meta.url));
/** uPlot's built files: a dependency, so it is installed wherever the service runs. */
const uPlotDir = fileURLToPath(new URL('../../node_modules/uplot/dist', import.meta.url));

// Every answer gets `default-src 'none'` (app.ts); the page may load its own scripts, styles
// and icon, and call this origin, and nothing else: no inline script, no other origin.
const PAGE_POLICY = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

const pagePolicy: RequestHandler = (_req, res, next) => {
  res.setHeader('Content-Security-Policy', PAGE_POLICY);
  next();
};

const files = (dir: string) => express.static(dir, { index: 'index.html', dotfiles: 'ignore', etag: false, lastModified: false });

export function dashboardRoutes(app: Express): void {
  app.use('/dashboard/vendor', pagePolicy, express.static(uPlotDir, { index: false, etag: false, lastModified: false }));
  app.use('/dashboard', pagePolicy, files(pageDir));
}
