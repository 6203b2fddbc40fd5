import type { Express, Request, RequestHandler, Response } from 'express';
import type { Caller } from '../auth/caller.js';
import type { HeldLease, Leases, Usage } from '../domain/leases.js';
import { NotFoundError, PoolExhaustedError } from '../errors.js';
import { actingUser, callerOf, maySeeHolder, restrictedToClient, type AuthMode } from './authenticate.js';
import { jsonBody } from './body.js';
import { requestIdOf } from './requestId.js';
import type {
  CheckJson,
  HistoryJson,
  LeaseJson,
  ReleasedJson,
  RetiredJson,
  TokenDetailsJson,
  UsageJson,
  ValidationJson,
} from './contract.js';
import { methodNotAllowed, sendError } from './errors.js';
import { sendJson, sendSerializedJson } from './json.js';
import { isPoolExhausted, iso, listFor, tokenJson, type ReadModel, type Rendered } from './readModel.js';
import {
  activateQuery,
  checkBody,
  encodeCursor,
  historyQuery,
  leaseBody,
  parse,
  redeemBody,
  retireBody,
  tokenId,
  userBody,
  validateBody,
} from './schemas.js';

// The token API. Field names are the public contract: add fields, never rename them.

/** A lease for its holder: with the token's value, when it has one (and in no other answer). */
function leaseJson(lease: HeldLease): LeaseJson {
  return {
    token_id: lease.tokenId,
    user_id: lease.userId,
    activated_at: iso(lease.startedAt),
    expires_at: iso(lease.expiresAt),
    lease_id: lease.leaseId,
    fence: lease.fence,
    ...(lease.value === null ? {} : { value: lease.value }),
  };
}

function releasedJson(usage: Usage): ReleasedJson {
  return { token_id: usage.tokenId, ...usageJson(usage), lease_id: usage.leaseId, user_id: usage.userId };
}

function usageJson(usage: Usage): UsageJson {
  return {
    lease_id: usage.leaseId,
    user_id: usage.userId,
    fence: usage.fence,
    started_at: iso(usage.startedAt),
    expires_at: iso(usage.expiresAt),
    ended_at: usage.endedAt === null ? null : iso(usage.endedAt),
    end_reason: usage.endReason,
  };
}

function parseTokenId(raw: unknown): string {
  const parsed = tokenId.safeParse(raw);
  if (!parsed.success) throw new NotFoundError({ token_id: raw });
  return parsed.data;
}

/** Sends a list of tokens (GET /api/tokens, a named pool's) as the caller may see it. */
export function sendTokenList(res: Response, mode: AuthMode, answer: Rendered): void {
  const caller = callerOf(res);
  sendSerializedJson(res, 200, listFor(answer, { full: maySeeHolder(mode, caller, ''), userId: caller.userId }));
}

/** The pool an activation acts on, with its own limit on this process's waiters, if any. */
export interface ActivationTarget {
  readonly leases: Leases;
  readonly maxWaiters?: number | undefined;
}

/** A success answer of the lease operations the fast lane also serves (src/http/fastLane.ts). */
export interface JsonAnswer {
  readonly status: number;
  readonly json: string;
  /** The Location header of a 201. */
  readonly location?: string | undefined;
}

/** The user an activation's request `body` acts for, as `caller`. */
export function activatingUser(caller: Caller, body: unknown): string {
  return actingUser(caller, parse(userBody, body, 'body').user_id);
}

/**
 * An activation of `target`'s pool for `userId` (activatingUser), asked by `caller`: a new lease
 * (201, with its Location), or the one the user holds (200). Throws PoolExhaustedError when the
 * pool is full, and with `waitMs` waits for a place in the queue first.
 */
export async function activation(
  write: ReadModel['write'],
  target: ActivationTarget,
  userId: string,
  caller: Caller,
  options: { waitMs: number; signal?: AbortSignal | undefined; reqId: string | undefined },
): Promise<JsonAnswer> {
  const { created, lease } = await write(
    target.leases.activate(userId, { ...options, clientId: caller.clientId, maxWaiters: target.maxWaiters }),
    // An activation that found the user's lease, or was refused, changed nothing.
    (outcome) => isPoolExhausted(outcome) || (!(outcome instanceof Error) && !outcome.created),
  );
  const json = JSON.stringify({ data: leaseJson(lease) });
  return created ? { status: 201, json, location: `/api/tokens/${lease.tokenId}` } : { status: 200, json };
}

/** The release of the lease a request `body` names on token `rawId`, for `caller`: the ended usage's JSON. */
export async function release(
  write: ReadModel['write'],
  leases: Leases,
  caller: Caller,
  rawId: unknown,
  body: unknown,
  reqId: string | undefined,
): Promise<string> {
  const tokenId = parseTokenId(rawId);
  const { user_id: bodyUserId, lease_id: leaseId } = parse(leaseBody, body, 'body');
  const userId = actingUser(caller, bodyUserId);
  const usage = await write(leases.release({ tokenId, userId, leaseId, clientId: restrictedToClient(caller), reqId }));
  return JSON.stringify({ data: releasedJson(usage) });
}

/**
 * POST .../activate: a lease for the caller's user of the pool `target` picks (the default
 * pool's route, or a named pool's), or the lease they hold; with ?wait=, a place in the queue
 * of a full pool.
 */
export function activateHandler(deps: {
  write: ReadModel['write'];
  target: (req: Request) => ActivationTarget | Promise<ActivationTarget>;
}): RequestHandler {
  return async (req, res) => {
    const caller = callerOf(res);
    const userId = activatingUser(caller, req.body);
    const { waitMs } = parse(activateQuery, req.query, 'query');
    const target = await deps.target(req);
    // A waiting client that disconnects gives up its place in the queue. Only a request that
    // may wait needs to hear of it.
    const gone = waitMs > 0 ? new AbortController() : undefined;
    if (gone !== undefined) {
      res.on('close', () => {
        if (!res.writableEnded) gone.abort();
      });
    }
    let answer: JsonAnswer;
    try {
      answer = await activation(deps.write, target, userId, caller, { waitMs, signal: gone?.signal, reqId: requestIdOf(res) });
    } catch (error) {
      // A full pool's refusal, the answer this route gives most under load, is sent from
      // here: passed to next(), Express would match every later route's path on its way to
      // the error handler (about 4% of a refusal's CPU).
      if (!(error instanceof PoolExhaustedError)) throw error;
      sendError(res, error);
      return;
    }
    if (answer.location !== undefined) res.setHeader('Location', answer.location);
    sendSerializedJson(res, answer.status, answer.json);
  };
}

/** Adds the token API's routes to the app itself: a nested router costs every request a second walk. */
export function tokenRoutes(
  router: Pick<Express, 'route'>,
  deps: {
    leases: Leases;
    mode: AuthMode;
    readModel: ReadModel;
    /** What lease and admin routes run before their handlers: rate limits, scope checks (app.ts). */
    first: { lease: readonly RequestHandler[]; admin: readonly RequestHandler[] };
    /** The default pool with its settings (named pools); absent: `leases`, with MAX_WAITERS only. */
    defaultPool?: (() => Promise<ActivationTarget>) | undefined;
  },
): void {
  const { leases, readModel: list, mode, first } = deps;
  const holderShown = (res: Parameters<typeof callerOf>[0], holderId: string) => maySeeHolder(mode, callerOf(res), holderId);
  // Every write goes through the read model, which counts it as a change to the token list.
  const write = list.write.bind(list);

  // The router tries routes in this order: the busiest first, but /clear before /:id, which
  // would take it.
  router
    .route('/api/tokens')
    // Not async: a current answer is sent without a promise or a turn of the microtask queue.
    .get((_req, res, next) => {
      const send = (answer: Rendered) => sendTokenList(res, mode, answer);
      const answer = list.currentRendered();
      if (answer !== undefined) send(answer);
      else list.getRendered().then(send, next);
    })
    .all(methodNotAllowed(['GET']));

  router
    .route('/api/tokens/activate')
    .post(...first.lease, ...jsonBody, activateHandler({ write, target: deps.defaultPool ?? (() => ({ leases })) }))
    .all(methodNotAllowed(['POST']));

  router
    .route('/api/tokens/:id/release')
    .post(...first.lease, ...jsonBody, async (req, res) => {
      sendSerializedJson(res, 200, await release(write, leases, callerOf(res), req.params.id, req.body, requestIdOf(res)));
    })
    .all(methodNotAllowed(['POST']));

  router
    .route('/api/tokens/:id/validate')
    .post(...first.lease, ...jsonBody, async (req, res) => {
      const id = parseTokenId(req.params.id);
      const body = parse(validateBody, req.body, 'body');
      const result = await leases.validate({ tokenId: id, userId: body.user_id, fence: body.fence });
      const data: ValidationJson = result.valid
        ? { valid: true, lease_id: result.leaseId, expires_at: iso(result.expiresAt) }
        : { valid: false, reason: result.reason };
      sendJson(res, 200, { data });
    })
    .all(methodNotAllowed(['POST']));

  router
    .route('/api/tokens/:id/renew')
    .post(...first.lease, ...jsonBody, async (req, res) => {
      const id = parseTokenId(req.params.id);
      const body = parse(leaseBody, req.body, 'body');
      const caller = callerOf(res);
      const userId = actingUser(caller, body.user_id);
      const ref = { tokenId: id, userId, leaseId: body.lease_id, clientId: restrictedToClient(caller), reqId: requestIdOf(res) };
      const lease = await write(leases.renew(ref));
      sendJson(res, 200, { data: leaseJson(lease) });
    })
    .all(methodNotAllowed(['POST']));

  router
    .route('/api/tokens/clear')
    // Takes no body: the key is checked first, and whatever was sent is left unread.
    .post(...first.admin, async (_req, res) => {
      const { cleared } = await write(leases.clear());
      sendJson(res, 200, { data: { cleared_tokens: cleared } });
    })
    .all(methodNotAllowed(['POST']));

  // Before /api/tokens/:id, which would take them.
  router
    .route('/api/tokens/check')
    .post(...first.lease, ...jsonBody, async (req, res) => {
      const { value } = parse(checkBody, req.body, 'body');
      const check = await leases.check(value);
      const data: CheckJson = {
        token_id: check.tokenId,
        held: check.held,
        expires_at: check.expiresAt === null ? null : iso(check.expiresAt),
        fence: check.fence,
        ...(holderShown(res, check.userId ?? '') ? { user_id: check.userId } : {}),
      };
      sendJson(res, 200, { data });
    })
    .all(methodNotAllowed(['POST']));

  router
    .route('/api/tokens/redeem')
    .post(...first.lease, ...jsonBody, async (req, res) => {
      const body = parse(redeemBody, req.body, 'body');
      const caller = callerOf(res);
      const userId = actingUser(caller, body.user_id);
      const usage = await write(leases.redeem({ value: body.value, userId, clientId: restrictedToClient(caller) }));
      sendJson(res, 200, { data: releasedJson(usage) });
    })
    .all(methodNotAllowed(['POST']));

  router
    .route('/api/admin/tokens/:id/retire')
    .post(...first.admin, ...jsonBody, async (req, res) => {
      const id = parseTokenId(req.params.id);
      const { now } = parse(retireBody, req.body, 'body');
      const retired = await write(leases.retire({ tokenId: id, now }));
      const data: RetiredJson = {
        token_id: retired.tokenId,
        status: retired.status,
        usage: retired.usage === null ? null : usageJson(retired.usage),
      };
      sendJson(res, 200, { data });
    })
    .all(methodNotAllowed(['POST']));

  router
    .route('/api/tokens/:id')
    .get(async (req, res) => {
      const token = await leases.getToken(parseTokenId(req.params.id));
      const { lease } = token;
      const shown = lease === null || holderShown(res, lease.userId);
      const data: TokenDetailsJson = {
        ...tokenJson(token),
        ...(shown ? {} : { current_user_id: null }),
        active_usage:
          lease === null
            ? null
            : {
                user_id: shown ? lease.userId : null,
                started_at: iso(lease.startedAt),
                expires_at: iso(lease.expiresAt),
                lease_id: shown ? lease.leaseId : null,
                fence: lease.fence,
              },
      };
      sendJson(res, 200, { data });
    })
    .all(methodNotAllowed(['GET']));

  router
    .route('/api/tokens/:id/history')
    .get(async (req, res) => {
      const id = parseTokenId(req.params.id);
      const query = parse(historyQuery, req.query, 'query');
      const page = await leases.history(id, {
        beforeFence: query.cursor ?? null,
        limit: query.limit,
      });
      const data: HistoryJson = {
        token_id: page.tokenId,
        usages: page.usages.map((usage) =>
          holderShown(res, usage.userId) ? usageJson(usage) : { ...usageJson(usage), user_id: null, lease_id: null },
        ),
        next_cursor: page.nextBeforeFence === null ? null : encodeCursor(page.nextBeforeFence),
      };
      sendJson(res, 200, { data });
    })
    .all(methodNotAllowed(['GET']));
}
