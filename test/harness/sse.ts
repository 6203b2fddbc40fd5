import { waitFor } from './waitFor.js';

// A Server-Sent Events client for the tests: reads GET /api/events/stream through fetch and keeps
// every event and comment it received, in order. Needs nothing from vitest.

export interface SseEvent {
  readonly id: string | undefined;
  readonly event: string;
  readonly data: string;
}

export interface SseStream {
  readonly status: number;
  readonly headers: Headers;
  /** Every event received so far, in order. */
  readonly events: SseEvent[];
  /** Comment lines received so far (`: ...`), without the colon. */
  readonly comments: string[];
  /** The JSON of every event of the log received so far (not reset events). */
  logEvents(): Array<{ id: number; type: string; data: Record<string, unknown> }>;
  /** Waits until `probe` holds for the events received, or fails at the deadline. */
  until(probe: (stream: SseStream) => boolean, what: string, timeoutMs?: number): Promise<void>;
  /** Resolves once the server has ended the stream (or it was closed here). */
  readonly ended: Promise<void>;
  hasEnded(): boolean;
  close(): void;
}

export async function openStream(url: string, headers: Record<string, string> = {}): Promise<SseStream> {
  const controller = new AbortController();
  const res = await fetch(url, { headers, signal: controller.signal });
  const events: SseEvent[] = [];
  const comments: string[] = [];
  let done = false;

  const take = (block: string) => {
    let id: string | undefined;
    let event = 'message';
    const data: string[] = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) comments.push(line.slice(1).trim());
      else if (line.startsWith('id: ')) id = line.slice(4);
      else if (line.startsWith('event: ')) event = line.slice(7);
      else if (line.startsWith('data: ')) data.push(line.slice(6));
    }
    if (data.length > 0) events.push({ id, event, data: data.join('\n') });
  };

  const ended = (async () => {
    const decoder = new TextDecoder();
    let buffer = '';
    try {
      if (res.body === null) return;
      const reader = res.body.getReader();
      for (let read = await reader.read(); !read.done; read = await reader.read()) {
        buffer += decoder.decode(read.value, { stream: true });
        for (let end = buffer.indexOf('\n\n'); end >= 0; end = buffer.indexOf('\n\n')) {
          take(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch {
      // Closed here (abort) or by the server mid-chunk: the stream has ended either way.
    } finally {
      done = true;
    }
  })();

  const stream: SseStream = {
    status: res.status,
    headers: res.headers,
    events,
    comments,
    logEvents: () =>
      events
        .filter((e) => e.event !== 'reset')
        .map((e) => JSON.parse(e.data) as { id: number; type: string; data: Record<string, unknown> }),
    async until(probe, what, timeoutMs = 10_000) {
      await waitFor(() => probe(stream), { what, timeoutMs, intervalMs: 10 });
    },
    ended,
    hasEnded: () => done,
    close: () => controller.abort(),
  };
  return stream;
}
