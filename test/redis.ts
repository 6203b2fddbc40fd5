import { Redis } from 'ioredis';
import { uniqueName } from './harness/databases.js';

// The tests' Redis: the machine's shared one, never flushed; each service gets its own key
// prefix under the run's, and the run's keys are deleted at the end.

export const testRedisUrl = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';

export const runRedisPrefix = (runId: string) => `tl-test-${runId}`;

export const testRedisPrefix = (runId: string) => `${runRedisPrefix(runId)}-${uniqueName()}`;

/** Deletes every key matching `pattern` (a SCAN MATCH pattern). */
export async function deleteRedisKeys(redisUrl: string, pattern: string): Promise<void> {
  const redis = new Redis(redisUrl, { maxRetriesPerRequest: 1 });
  redis.on('error', () => undefined); // the commands below reject with it
  try {
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
      cursor = next;
      if (keys.length > 0) await redis.unlink(...keys);
    } while (cursor !== '0');
  } finally {
    redis.disconnect();
  }
}
