// Calls to the service from the dashboard. The bearer credential lives in this module's memory
// only: never in the URL, storage or a cookie, and it is gone when the page is reloaded.

let bearer = null;

export function setBearer(value) {
  bearer = value;
}

export function hasBearer() {
  return bearer !== null;
}

/** An answer other than 2xx, with the service's error code. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function headers(extra = {}) {
  return bearer === null ? extra : { ...extra, Authorization: `Bearer ${bearer}` };
}

/** GET or POST `path`; answers the `data` of the JSON answer, or throws ApiError. */
export async function call(path, { method = 'GET', signal } = {}) {
  const res = await fetch(path, { method, headers: headers({ Accept: 'application/json' }), signal, cache: 'no-store' });
  const body = await res.json().catch(() => null);
  if (!res.ok) {
    const error = body?.error ?? {};
    throw new ApiError(res.status, error.code ?? 'http_error', error.message ?? `HTTP ${res.status}`);
  }
  return body?.data;
}

/** Whether the service serves `path` for `method`, from its OpenAPI document (read once). */
let openApi;
export async function serves(method, path) {
  openApi ??= fetch('/openapi.json', { cache: 'no-store' }).then((res) => (res.ok ? res.json() : { paths: {} }));
  const doc = await openApi;
  return Boolean(doc.paths?.[path]?.[method]);
}

/**
 * Follows a Server-Sent Events stream with fetch (an EventSource cannot send the Authorization
 * header): calls onEvent(type, data, id) per event until `signal` aborts or the stream ends.
 */
export async function follow(path, { lastEventId, signal, onOpen, onEvent }) {
  const extra = { Accept: 'text/event-stream' };
  if (lastEventId !== undefined) extra['Last-Event-ID'] = String(lastEventId);
  const res = await fetch(path, { headers: headers(extra), signal, cache: 'no-store' });
  if (!res.ok || res.body === null) throw new ApiError(res.status, 'stream_refused', `the stream answered ${res.status}`);
  onOpen();
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) !== -1) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, '');
      let type = 'message';
      let id;
      const data = [];
      for (const line of frame.split(/\r?\n/)) {
        if (line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon === -1 ? line : line.slice(0, colon);
        const text = colon === -1 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (field === 'event') type = text;
        else if (field === 'data') data.push(text);
        else if (field === 'id') id = text;
      }
      if (data.length > 0) onEvent(type, JSON.parse(data.join('\n')), id);
    }
  }
}
