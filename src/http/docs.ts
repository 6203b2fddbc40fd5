import type { Express } from 'express';
import swaggerUi from 'swagger-ui-express';
import { pagePolicy } from './headers.js';

// GET /docs: the API reference, swagger-ui (swagger-ui-express, with the swagger-ui-dist files it
// serves from node_modules) rendering GET /openapi.json. Everything comes from this origin.

// No validatorUrl: swagger-ui would otherwise show a badge fetched from the public validator.
const OPTIONS = { swaggerUrl: '/openapi.json', customSiteTitle: 'token-lease API', swaggerOptions: { validatorUrl: null } };

// swagger-ui's page needs, beyond what every page may do (src/http/headers.ts):
// - style-src 'unsafe-inline': swagger-ui-express's page has two <style> elements, one of them
//   built from its options, and an inline style attribute on its SVG sprite; swagger-ui also
//   writes style attributes as it renders. Styles only: scripts stay 'self'.
// - img-src data: swagger-ui.css draws its icons (arrows, locks, the spinner) as data: SVGs.
const policy = pagePolicy({ 'style-src': ["'self'", "'unsafe-inline'"], 'img-src': ["'self'", 'data:'] });

export function docsRoutes(app: Express): void {
  const page = swaggerUi.setup(undefined, OPTIONS);
  // The page's assets are relative (./swagger-ui.css): it must be read as /docs/.
  app.get('/docs', (req, res, next) => {
    if (req.originalUrl.split('?')[0] === '/docs') res.redirect(301, '/docs/');
    else next();
  });
  app.use('/docs', policy, swaggerUi.serveFiles(undefined, OPTIONS));
  app.get('/docs/', page);
}
