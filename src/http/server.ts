import { createServer, IncomingMessage, ServerResponse, type Server } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { Express } from 'express';

/**
 * When the request's head had been read (performance.now()), set on each response as Node
 * creates it: the start of the duration src/http/app.ts records. Set in the constructor, it is
 * part of every response's shape from the start; added later (by a middleware, as it was) it
 * cost a router layer and a change of hidden class, 2.4 µs of the 20 µs of CPU a cached
 * GET /api/tokens took.
 */
export const RECEIVED_AT = Symbol('receivedAt');

/**
 * The HTTP server for `app`, with every request and response built on Express's prototypes
 * (app.request, app.response) from the start.
 *
 * Express moves each request and response Node gives it onto its own prototypes with
 * Object.setPrototypeOf (express/lib/application.js, handle). An object whose prototype changes
 * gets a new hidden class, and Node's http code, which every request and response passes
 * through, runs polymorphic and slow from then on; on the activate + release cycle that cost the
 * service about a third of its CPU per request (expressjs/express#5998 reports the same). Built
 * here on those prototypes, the objects never change class: Express's call finds the prototype
 * already in place and does nothing. Everything else is Node's and Express's own behaviour, but
 * for a missing Host header (SERVER_OPTIONS) and the time each request arrived (RECEIVED_AT).
 */
export function createHttpServer(app: Express): Server {
  // Node's constructors are plain functions, so they can run on an object that already has
  // Express's prototype (a class cannot be called that way). Should a Node release turn them into
  // classes, serve as usual.
  if (isClass(IncomingMessage) || isClass(ServerResponse)) return createServer(SERVER_OPTIONS, app);

  // Whatever Node passes (the socket; the request and its options) goes through unchanged.
  function Request(this: IncomingMessage, ...args: unknown[]): void {
    Reflect.apply(IncomingMessage, this, args);
  }
  Request.prototype = app.request;

  function Response(this: ServerResponse & { [RECEIVED_AT]?: number | undefined }, ...args: unknown[]): void {
    Reflect.apply(ServerResponse, this, args);
    this[RECEIVED_AT] = performance.now();
  }
  Response.prototype = app.response;

  return createServer(
    {
      ...SERVER_OPTIONS,
      IncomingMessage: Request as unknown as typeof IncomingMessage,
      ServerResponse: Response as unknown as typeof ServerResponse,
    },
    app,
  );
}

/**
 * A request without the Host header HTTP/1.1 requires gets Node's bare 400 unless this is off;
 * the app (observe in src/http/app.ts) refuses it with the JSON body instead.
 */
const SERVER_OPTIONS = { requireHostHeader: false } as const;

function isClass(constructor: object): boolean {
  return Function.prototype.toString.call(constructor).startsWith('class');
}
