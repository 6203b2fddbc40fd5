import type { Express, RequestHandler } from 'express';
import type { Leases } from '../domain/leases.js';
import type { LeaseRecord } from '../domain/revoke.js';
import { NotFoundError } from '../errors.js';
import { callerOf, maySeeHolder, type AuthMode } from './authenticate.js';
import type { LeaseRecordJson, UserRevokedJson } from './contract.js';
import { methodNotAllowed } from './errors.js';
import { sendJson } from './json.js';
import { requestIdOf } from './requestId.js';
import type { ReadModel } from './readModel.js';
import { iso } from './readModel.js';
import { leaseId, parse, userPathParameters } from './schemas.js';

// The operator's lease tools: one lease by its id, open or ended, and the admin's revokes of one
// lease or of every lease one user holds (src/domain/revoke.ts).

function leaseRecordJson(lease: LeaseRecord): LeaseRecordJson {
  return {
    lease_id: lease.leaseId,
    pool: lease.pool,
    token_id: lease.tokenId,
    user_id: lease.userId,
    fence: lease.fence,
    started_at: iso(lease.startedAt),
    expires_at: iso(lease.expiresAt),
    ended_at: lease.endedAt === null ? null : iso(lease.endedAt),
    end_reason: lease.endReason,
    active: lease.active,
  };
}

/** A lease id in a path; a malformed one is a 404, as for a lease that does not exist. */
function pathLease(raw: unknown): string {
  const parsed = leaseId.safeParse(raw);
  if (!parsed.success) throw new NotFoundError({ lease_id: raw });
  return parsed.data;
}

export function leaseRoutes(
  router: Pick<Express, 'route'>,
  deps: {
    leases: Leases;
    mode: AuthMode;
    /** Counts each revoke as a change of the token list (src/http/readModel.ts). */
    readModel: ReadModel;
    /** What an admin route runs first: who is calling, the admin budget, the admin scope. */
    first: { admin: readonly RequestHandler[] };
  },
): void {
  const { leases, mode, first } = deps;
  const write = deps.readModel.write.bind(deps.readModel);

  router
    .route('/api/leases/:lease_id')
    .get(async (req, res) => {
      const id = pathLease(req.params.lease_id);
      const lease = await leases.lease(id);
      // Whose lease it is, and that it exists, is for the holder and read or admin callers alone.
      if (!maySeeHolder(mode, callerOf(res), lease.userId)) throw new NotFoundError({ lease_id: id });
      sendJson(res, 200, { data: leaseRecordJson(lease) });
    })
    .all(methodNotAllowed(['GET']));

  router
    .route('/api/admin/leases/:lease_id/revoke')
    // Takes no body, like the clears.
    .post(...first.admin, async (req, res) => {
      const lease = await write(leases.revoke(pathLease(req.params.lease_id), requestIdOf(res)));
      sendJson(res, 200, { data: leaseRecordJson(lease) });
    })
    .all(methodNotAllowed(['POST']));

  router
    .route('/api/admin/users/:user_id/revoke')
    .post(...first.admin, async (req, res) => {
      const { user_id: userId } = parse(userPathParameters, req.params, 'path');
      const revoked = await write(leases.revokeUser(userId, requestIdOf(res)));
      const data: UserRevokedJson = { user_id: userId, revoked: revoked.length, leases: revoked.map(leaseRecordJson) };
      sendJson(res, 200, { data });
    })
    .all(methodNotAllowed(['POST']));
}
