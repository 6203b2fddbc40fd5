import type { Express } from 'express';
import type { PoolDirectory } from '../domain/pools.js';
import type { Stats } from '../domain/stats.js';
import type { StatsJson } from './contract.js';
import { methodNotAllowed } from './errors.js';
import { sendJson } from './json.js';
import { iso } from './readModel.js';
import { parse, statsQuery } from './schemas.js';

// GET /api/stats: a pool's activity over a time window, bucket by bucket (docs/api.md). Any
// caller who may call /api/ may read it: it names no holder.

export function statsRoutes(router: Pick<Express, 'route'>, deps: { stats: Stats; directory: PoolDirectory }): void {
  router
    .route('/api/stats')
    .get(async (req, res) => {
      const query = parse(statsQuery, req.query, 'query');
      const pool = await deps.directory.find(query.pool);
      const stats = await deps.stats.read({ poolId: pool.id, from: query.from, bucketSeconds: query.bucketSeconds, buckets: query.buckets });
      const data: StatsJson = {
        pool: query.pool,
        from: iso(query.from),
        to: iso(new Date(query.from.getTime() + query.buckets * query.bucketSeconds * 1000)),
        bucket_seconds: query.bucketSeconds,
        tokens: stats.tokens,
        buckets: stats.buckets.map((b) => ({
          start: iso(b.start),
          held_share: b.heldShare,
          activations: b.activations,
          expiries: b.expiries,
          refusals: b.refusals,
          waits: b.waits,
        })),
      };
      sendJson(res, 200, { data });
    })
    .all(methodNotAllowed(['GET']));
}
