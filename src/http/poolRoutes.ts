import type { Express, Request, RequestHandler } from 'express';
import type { ImportResult, Leases } from '../domain/leases.js';
import type { PoolDirectory, PoolInfo, Pools } from '../domain/pools.js';
import { unknownPool } from '../domain/pools.js';
import type { AuthMode } from './authenticate.js';
import { importBody, jsonBody } from './body.js';
import type { GeneratedJson, ImportJson, PoolJson } from './contract.js';
import { methodNotAllowed } from './errors.js';
import { sendJson } from './json.js';
import type { ReadModel } from './readModel.js';
import { activateHandler, sendTokenList } from './routes.js';
import { generateBody, idempotencyKey, importJsonBody, importLines, parse, poolBody, poolName, poolPatch } from './schemas.js';

// Named pools: the admin routes that make, list and change them, and each pool's own
// activate, list and clear, which behave as the default pool's routes under /api/tokens do.
// Routes that name a token (/api/tokens/:id/...) serve the tokens of every pool.

function poolJson(pool: PoolInfo): PoolJson {
  return {
    name: pool.name,
    size: pool.size,
    lease_ttl_ms: pool.leaseTtlMs,
    max_lease_ms: pool.maxLeaseMs,
    full_policy: pool.fullPolicy,
    max_waiters: pool.maxWaiters,
    free: pool.free,
    held: pool.held,
    retired: pool.retired,
  };
}

function importJson(result: ImportResult): ImportJson {
  return {
    items: result.items.map((item) => ({
      line: item.line,
      value: item.value,
      outcome: item.outcome,
      reason: item.reason,
      token_id: item.tokenId,
    })),
    totals: { ...result.totals },
  };
}

/** The Idempotency-Key a request was sent with, if any. */
function idempotencyKeyOf(req: Request): string | undefined {
  return parse(idempotencyKey, req.get('Idempotency-Key'), 'Idempotency-Key');
}

/** The pool a path names; a name no pool has, or could have, is a 404. */
function pathPool(req: Request): string {
  const parsed = poolName.safeParse(req.params.pool);
  if (!parsed.success) throw unknownPool(String(req.params.pool));
  return parsed.data;
}

export function poolRoutes(
  router: Pick<Express, 'route'>,
  deps: {
    pools: Pools;
    directory: PoolDirectory;
    /** The lease operations of a pool. */
    leasesOf: (pool: { readonly id: number; readonly name: string }) => Leases;
    mode: AuthMode;
    /** Counts each write as a change, and keeps each pool's list (src/http/readModel.ts). */
    readModel: ReadModel;
    first: { lease: readonly RequestHandler[]; admin: readonly RequestHandler[] };
  },
): void {
  const { pools, directory, leasesOf, mode, first } = deps;
  const write = deps.readModel.write.bind(deps.readModel);
  const listPools: RequestHandler = async (_req, res) => {
    sendJson(res, 200, { data: (await pools.list()).map(poolJson) });
  };
  const leasesFor = async (req: Request) => {
    const name = pathPool(req);
    const pool = await directory.find(name);
    return { leases: leasesOf({ id: pool.id, name }), maxWaiters: pool.maxWaiters, poolId: pool.id };
  };

  router
    .route('/api/admin/pools')
    .post(...first.admin, ...jsonBody, async (req, res) => {
      const body = parse(poolBody, req.body, 'body');
      const pool = await write(
        pools.create({
          name: body.name,
          size: body.size,
          leaseTtlMs: body.lease_ttl_ms,
          maxLeaseMs: body.max_lease_ms,
          fullPolicy: body.full_policy,
          maxWaiters: body.max_waiters,
        }),
      );
      res.setHeader('Location', `/api/pools/${pool.name}`);
      sendJson(res, 201, { data: poolJson(pool) });
    })
    .get(...first.admin, listPools)
    .all(methodNotAllowed(['GET', 'POST']));

  router
    .route('/api/admin/pools/:pool')
    .patch(...first.admin, ...jsonBody, async (req, res) => {
      const name = pathPool(req);
      const body = parse(poolPatch, req.body, 'body');
      const pool = await write(
        pools.update(name, {
          size: body.size,
          leaseTtlMs: body.lease_ttl_ms,
          maxLeaseMs: body.max_lease_ms,
          fullPolicy: body.full_policy,
          maxWaiters: body.max_waiters,
        }),
      );
      sendJson(res, 200, { data: poolJson(pool) });
    })
    .all(methodNotAllowed(['PATCH']));

  // Tokens with values (src/domain/addTokens.ts). An Idempotency-Key makes a retry answer the
  // first request's result.
  router
    .route('/api/admin/pools/:pool/tokens/generate')
    .post(...first.admin, ...jsonBody, async (req, res) => {
      const { count } = parse(generateBody, req.body, 'body');
      const key = idempotencyKeyOf(req);
      const { leases } = await leasesFor(req);
      const { tokenIds } = await write(leases.generate({ count, idempotencyKey: key }));
      const data: GeneratedJson = { token_ids: tokenIds };
      sendJson(res, 201, { data });
    })
    .all(methodNotAllowed(['POST']));

  router
    .route('/api/admin/pools/:pool/tokens/import')
    .post(...first.admin, ...importBody, async (req, res) => {
      const inputs =
        typeof req.body === 'string'
          ? importLines(req.body)
          : parse(importJsonBody, req.body, 'body').values.map((value, i) => ({ line: i + 1, value }));
      const key = idempotencyKeyOf(req);
      const { leases } = await leasesFor(req);
      const result = await write(leases.import({ inputs, idempotencyKey: key }));
      sendJson(res, 200, { data: importJson(result) });
    })
    .all(methodNotAllowed(['POST']));

  router
    .route('/api/pools')
    .get(listPools)
    .all(methodNotAllowed(['GET']));

  router
    .route('/api/pools/:pool')
    .get(async (req, res) => {
      sendJson(res, 200, { data: poolJson(await pools.get(pathPool(req))) });
    })
    .all(methodNotAllowed(['GET']));

  router
    .route('/api/pools/:pool/tokens')
    .get(async (req, res) => {
      const { leases, poolId } = await leasesFor(req);
      sendTokenList(res, mode, await deps.readModel.listOf(poolId, () => leases.listTokens()).getRendered());
    })
    .all(methodNotAllowed(['GET']));

  router
    .route('/api/pools/:pool/tokens/activate')
    .post(...first.lease, ...jsonBody, activateHandler({ write, target: leasesFor }))
    .all(methodNotAllowed(['POST']));

  router
    .route('/api/pools/:pool/tokens/clear')
    .post(...first.admin, async (req, res) => {
      const { leases } = await leasesFor(req);
      const { cleared } = await write(leases.clear());
      sendJson(res, 200, { data: { cleared_tokens: cleared } });
    })
    .all(methodNotAllowed(['POST']));
}
