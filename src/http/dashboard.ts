import { fileURLToPath } from 'node:url';
import express, { type Express } from 'express';
import { pagePolicy } from './headers.js';

// The dashboard (docs/dashboard.md): files from public/dashboard/ and uPlot from node_modules,
// served from this origin only. Static middleware rather than routes: they are files, not
// operations of the API, and the OpenAPI document lists operations.

/** public/dashboard/ at the repository root, from src/http (tsx, tests) and from dist/http. */
const pageDir = fileURLToPath(new URL('../../public/dashboard', import.meta.url));
/** uPlot's built files: a dependency, so it is installed wherever the service runs. */
const uPlotDir = fileURLToPath(new URL('../../node_modules/uplot/dist', import.meta.url));

// The page may load its own scripts, styles and icon, and call this origin, and nothing else: no
// inline script or style, no other origin (src/http/headers.ts).
const policy = pagePolicy();

const files = (dir: string) => express.static(dir, { index: 'index.html', dotfiles: 'ignore', etag: false, lastModified: false });

export function dashboardRoutes(app: Express): void {
  app.use('/dashboard/vendor', policy, express.static(uPlotDir, { index: false, etag: false, lastModified: false }));
  app.use('/dashboard', policy, files(pageDir));
}
