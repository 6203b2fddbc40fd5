// GET /api/stats: how busy a pool has been, bucket by bucket, from its history and the activity
// counters (src/db/stats.ts computes it all in one statement).

import type { Pool } from '../db/pool.js';
import * as sql from '../db/stats.js';

export interface StatsBucket {
  readonly start: Date;
  /** Share of the pool's tokens held over the bucket, from 0 to 1. */
  readonly heldShare: number;
  readonly activations: number;
  readonly expiries: number;
  readonly refusals: number;
  readonly waits: number;
}

export interface PoolStats {
  readonly tokens: number;
  readonly buckets: StatsBucket[];
}

export function createStats(deps: { pool: Pool }) {
  return {
    async read(args: { poolId: number; from: Date; bucketSeconds: number; buckets: number }): Promise<PoolStats> {
      const rows = await sql.poolStats(deps.pool, args);
      const tokens = rows[0]?.tokens ?? 0;
      const capacity = tokens * args.bucketSeconds;
      return {
        tokens,
        buckets: rows.map((row) => ({
          start: row.start,
          heldShare: capacity === 0 ? 0 : Math.min(1, row.held_seconds / capacity),
          activations: row.activations,
          expiries: row.expiries,
          refusals: row.refusals,
          waits: row.waits,
        })),
      };
    },
  };
}

export type Stats = ReturnType<typeof createStats>;
