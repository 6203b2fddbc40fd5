import { randomUUID } from 'node:crypto';
import type { Request, Response } from 'express';

// Every request's id: the client's X-Request-Id when it is short and plain, else a random UUID.
// It is sent back as X-Request-Id, and it is on the request's log line and on the lines of the
// lease changes the request made.

const PLAIN = /^[\w.:-]{1,128}$/;

/** The id of a request that sent `given` as its X-Request-Id (or nothing). */
export function requestIdFrom(given: string | string[] | undefined): string {
  return typeof given === 'string' && PLAIN.test(given) ? given : randomUUID();
}

/** Gives the request its id (app.ts, first middleware) and answers it in X-Request-Id. */
export function assignRequestId(req: Request, res: Response): string {
  const id = requestIdFrom(req.headers['x-request-id']);
  res.setHeader('X-Request-Id', id);
  res.locals.reqId = id;
  return id;
}

/** The id assignRequestId gave the request. */
export function requestIdOf(res: Response): string | undefined {
  return res.locals.reqId as string | undefined;
}
