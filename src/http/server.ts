import { createServer, IncomingMessage, ServerResponse, type Server } from 'node:http';
import type { Express } from 'express';

// The one speed device outside plain Express (docs/performance.md, "The HTTP server").
//
// Express moves every request and response Node gives it onto its own prototypes with
// Object.setPrototypeOf (express/lib/application.js, app.handle). An object whose prototype
// changes gets a new hidden class, and Node's http code, which every request and response passes
// through afterwards, runs polymorphic and slower (expressjs/express#5998). http.createServer
// takes the classes to build requests and responses with (its documented IncomingMessage and
// ServerResponse options); given constructors that build them on Express's prototypes from the
// start, Express finds the prototype already in place and nothing changes class. Everything
// else is Node's and Express's own behaviour. Without it (`expressPrototypes: false`) the server
// is plain http.createServer(app); test/server.test.ts runs the app both ways.

export interface HttpServerOptions {
  /** Build requests and responses on Express's prototypes from the start (the default in main/). */
  readonly expressPrototypes: boolean;
}

export function createHttpServer(app: Express, options: HttpServerOptions): Server {
  if (!options.expressPrototypes) return createServer(app);
  return createServer(
    {
      IncomingMessage: builtOn<typeof IncomingMessage>(IncomingMessage, app.request),
      ServerResponse: builtOn<typeof ServerResponse>(ServerResponse, app.response),
    },
    app,
  );
}

/**
 * A constructor that runs `base`'s constructor (Reflect.construct, with this function as
 * new.target) on a new object whose prototype is `prototype`, which must inherit from
 * `base.prototype`, as Express's request and response do from Node's.
 */
function builtOn<C extends new (...args: never[]) => object>(base: C, prototype: object): C {
  function Built(...args: unknown[]): object {
    return Reflect.construct(base, args, Built) as object;
  }
  Built.prototype = prototype;
  return Built as unknown as C;
}
