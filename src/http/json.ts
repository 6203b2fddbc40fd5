import type { Response } from 'express';

export const JSON_TYPE = 'application/json; charset=utf-8';

/**
 * Answers `status` with `body` as JSON: the bytes and headers Express's res.json sends for these
 * answers (app.ts turns ETags off), written straight to Node's response. res.json reads three
 * app settings, then res.send parses the Content-Type again to add the charset and checks the
 * request's freshness, and on the hot routes that is a measurable part of the request.
 */
export function sendJson(res: Response, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': JSON_TYPE, 'Content-Length': Buffer.byteLength(text) }).end(text);
}
