import type { ServerResponse } from 'node:http';
import type { Response } from 'express';

export const JSON_TYPE = 'application/json; charset=utf-8';

/** Answers `status` with `body` serialised as JSON; see sendSerializedJson. */
export function sendJson(res: Response, status: number, body: unknown): void {
  sendSerializedJson(res, status, JSON.stringify(body));
}

/**
 * Answers `status` with JSON already serialised: the bytes and headers Express's res.send sends
 * for it (app.ts turns ETags off), written straight to Node's response. On every call res.json
 * and res.send read app settings, parse the Content-Type again to add the charset and work out
 * whether the request is fresh, and on the hot routes that is a measurable part of the request.
 * Only a conditional request (If-None-Match, If-Modified-Since) can be fresh, so it alone still
 * goes through res.send, which answers `If-None-Match: *` on a GET with 304 as RFC 9110 asks.
 */
export function sendSerializedJson(res: Response, status: number, json: string | Buffer): void {
  const { headers } = res.req;
  if (headers['if-none-match'] !== undefined || headers['if-modified-since'] !== undefined) {
    res.status(status).set('Content-Type', JSON_TYPE).send(json);
    return;
  }
  writeJson(res, status, json);
}

/** Writes `status` and serialised JSON to Node's response, with its type and length; Express or not. */
export function writeJson(res: ServerResponse, status: number, json: string | Buffer): void {
  const length = typeof json === 'string' ? Buffer.byteLength(json) : json.length;
  res.writeHead(status, { 'Content-Type': JSON_TYPE, 'Content-Length': length }).end(json);
}
