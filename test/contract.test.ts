import { readFileSync } from 'node:fs';
import type { Express } from 'express';
import supertest from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { z } from 'zod';
import {
  checkSchema,
  generatedSchema,
  importSchema,
  retiredSchema,
  clearedSchema,
  poolSchema,
  clientSchema,
  newClientSchema,
  revokedClientSchema,
  webhookSchema,
  webhookWithSecretSchema,
  deliverySchema,
  deliveriesPageSchema,
  envelope,
  errorSchema,
  eventsPageSchema,
  historySchema,
  leaseRecordSchema,
  leaseRefusalSchema,
  leaseSchema,
  readySchema,
  userRevokedSchema,
  releasedSchema,
  statsSchema,
  tokenDetailsSchema,
  tokenSchema,
  validationSchema,
} from '../src/http/contract.js';
import { createApp } from '../src/http/app.js';
import { ERRORS } from '../src/errors.js';
import { newUserId, startTestService, type TestService } from './helpers.js';
import { documentSchemas, pointerPart } from './openApiSchemas.js';

// The served OpenAPI document against the app's real routes and real answers.

interface Operation {
  responses: Record<string, unknown>;
}
type Document = { openapi: string; paths: Record<string, Record<string, Operation>> };

let t: TestService;
let doc: Document;
const ADMIN_KEY = 'contract-admin-key-0123456789';

beforeAll(async () => {
  t = await startTestService({ POOL_SIZE: '2', ADMIN_API_KEY: ADMIN_KEY, LEASE_TTL_MS: '60000' });
  doc = (await t.http.get('/openapi.json')).body as Document;
});
afterAll(async () => {
  await t.close();
});

/**
 * Checks an answer against the statuses documented for the operation, against the document's
 * schema for that status (its $refs resolved) and against the zod schema it is generated from.
 */
function conforms(res: supertest.Response, method: string, path: string, schema: z.ZodType) {
  const responses = doc.paths[path]?.[method]?.responses ?? {};
  const status = String(res.status);
  expect(Object.keys(responses), `${method} ${path} documents ${status}`).toContain(status);
  const answer = responses[status] as { $ref?: string; content?: Record<string, unknown> } | undefined;
  // A common error answer is a $ref to components.responses.
  const where = answer?.$ref ?? `#/paths/${pointerPart(path)}/${method}/responses/${status}`;
  expect(answer?.$ref ?? answer?.content?.['application/json'], `${method} ${path} ${status} has a JSON body`).toBeDefined();
  const documented = (schemas ??= documentSchemas(doc)).problems(`${where}/content/application~1json/schema`, res.body);
  expect(documented, `${method} ${path} ${status} against the document: ${res.text}`).toEqual([]);
  const parsed = schema.safeParse(res.body);
  expect(parsed.error?.issues ?? [], `${method} ${path} ${status}: ${res.text}`).toEqual([]);
}
let schemas: ReturnType<typeof documentSchemas> | undefined;

/**
 * Routes of pages for people, not operations of the API: the API reference (src/http/docs.ts).
 * The dashboard's files are served by static middleware, which registers no route.
 */
const PAGES: ReadonlySet<string> = new Set(['get /docs', 'get /docs/']);

/** Every (method, path) the Express app routes, with :params as {params}. */
function routesOf(app: Express): string[] {
  type Layer = { route?: { path: string; methods: Record<string, boolean> }; handle?: { stack?: Layer[] } };
  const walk = (stack: Layer[]): string[] =>
    stack.flatMap((layer) => {
      if (layer.route !== undefined) {
        const path = layer.route.path.replace(/:(\w+)/g, '{$1}');
        return Object.keys(layer.route.methods)
          .filter((m) => m !== '_all')
          .map((m) => `${m} ${path}`);
      }
      return layer.handle?.stack === undefined ? [] : walk(layer.handle.stack);
    });
  return walk((app as unknown as { router: { stack: Layer[] } }).router.stack);
}

describe('GET /openapi.json', () => {
  it('is an OpenAPI 3.1 document', () => {
    expect(doc.openapi).toBe('3.1.0');
  });

  it('lets answers gain fields: no schema forbids unknown ones', () => {
    expect(JSON.stringify(doc)).not.toContain('"additionalProperties":false');
  });

  it('documents exactly the routes the app serves', () => {
    const app = createApp({
      leases: t.service.leases,
      apiClients: t.service.apiClients,
      pools: t.service.pools,
      stats: t.service.stats,
      events: t.service.events,
      webhooks: t.service.webhooks,
      log: { isLevelEnabled: () => false } as never,
      metrics: t.service.metrics,
      adminApiKey: undefined,
    });
    const documented = Object.entries(doc.paths).flatMap(([path, ops]) =>
      Object.keys(ops).map((method) => `${method} ${path}`),
    );
    const routes = routesOf(app);
    expect(routes).toEqual(expect.arrayContaining([...PAGES]));
    expect(routes.filter((route) => !PAGES.has(route)).sort()).toEqual(documented.sort());
  });
});

describe('real answers match the documented schemas', () => {
  it('for every endpoint, success and failure', async () => {
    const user = newUserId();
    const activated = await t.http.post('/api/tokens/activate').send({ user_id: user });
    conforms(activated, 'post', '/api/tokens/activate', envelope(leaseSchema));
    const tokenId = activated.body.data.token_id as string;
    const fence = activated.body.data.fence as number;
    const leaseId = activated.body.data.lease_id as string;
    conforms(await t.http.post('/api/tokens/activate').send({ user_id: user }), 'post', '/api/tokens/activate', envelope(leaseSchema));
    conforms(await t.http.post('/api/tokens/activate').send({ user_id: 'x' }), 'post', '/api/tokens/activate', errorSchema);
    await t.http.post('/api/tokens/activate').send({ user_id: newUserId() });
    conforms(await t.http.post('/api/tokens/activate').send({ user_id: newUserId() }), 'post', '/api/tokens/activate', errorSchema);

    conforms(await t.http.get('/api/tokens'), 'get', '/api/tokens', envelope(tokenSchema.array()));
    conforms(await t.http.get(`/api/tokens/${tokenId}`), 'get', '/api/tokens/{id}', envelope(tokenDetailsSchema));
    conforms(await t.http.get('/api/tokens/nope'), 'get', '/api/tokens/{id}', errorSchema);

    const renewed = await t.http.post(`/api/tokens/${tokenId}/renew`).send({ user_id: user, lease_id: leaseId });
    conforms(renewed, 'post', '/api/tokens/{id}/renew', envelope(leaseSchema));
    conforms(await t.http.post(`/api/tokens/${tokenId}/renew`).send({ user_id: newUserId(), lease_id: leaseId }), 'post', '/api/tokens/{id}/renew', leaseRefusalSchema);

    const valid = await t.http.post(`/api/tokens/${tokenId}/validate`).send({ user_id: user, fence });
    conforms(valid, 'post', '/api/tokens/{id}/validate', envelope(validationSchema));
    const invalid = await t.http.post(`/api/tokens/${tokenId}/validate`).send({ user_id: user, fence: fence + 1 });
    conforms(invalid, 'post', '/api/tokens/{id}/validate', envelope(validationSchema));

    conforms(await t.http.post(`/api/tokens/${tokenId}/release`).send({ user_id: user, lease_id: leaseId }), 'post', '/api/tokens/{id}/release', envelope(releasedSchema));
    conforms(await t.http.post(`/api/tokens/${tokenId}/release`).send({ user_id: newUserId(), lease_id: leaseId }), 'post', '/api/tokens/{id}/release', leaseRefusalSchema);

    conforms(await t.http.get(`/api/tokens/${tokenId}/history?limit=1`), 'get', '/api/tokens/{id}/history', envelope(historySchema));
    conforms(await t.http.get(`/api/tokens/${tokenId}/history?limit=0`), 'get', '/api/tokens/{id}/history', errorSchema);

    conforms(await t.http.post('/api/tokens/clear'), 'post', '/api/tokens/clear', errorSchema);
    conforms(await t.http.post('/api/tokens/clear').set('Authorization', 'Bearer wrong-key'), 'post', '/api/tokens/clear', errorSchema);
    conforms(
      await t.http.post('/api/tokens/clear').set('Authorization', `Bearer ${ADMIN_KEY}`),
      'post',
      '/api/tokens/clear',
      envelope(clearedSchema),
    );

    const admin = { Authorization: `Bearer ${ADMIN_KEY}` };
    const made = await t.http.post('/api/admin/clients').set(admin).send({ name: 'contract', scopes: ['lease'] });
    conforms(made, 'post', '/api/admin/clients', envelope(newClientSchema));
    conforms(await t.http.post('/api/admin/clients').set(admin).send({ name: '', scopes: ['write'] }), 'post', '/api/admin/clients', errorSchema);
    conforms(await t.http.get('/api/admin/clients').set(admin), 'get', '/api/admin/clients', envelope(clientSchema.array()));
    conforms(await t.http.get('/api/admin/clients'), 'get', '/api/admin/clients', errorSchema);
    const clientPath = `/api/admin/clients/${made.body.data.id as string}`;
    conforms(await t.http.delete(clientPath).set(admin), 'delete', '/api/admin/clients/{id}', envelope(revokedClientSchema));
    conforms(await t.http.delete('/api/admin/clients/nope').set(admin), 'delete', '/api/admin/clients/{id}', errorSchema);

    const pool = await t.http.post('/api/admin/pools').set(admin).send({ name: 'contract', size: 2 });
    conforms(pool, 'post', '/api/admin/pools', envelope(poolSchema));
    conforms(await t.http.post('/api/admin/pools').set(admin).send({ name: 'contract', size: 2 }), 'post', '/api/admin/pools', errorSchema);
    conforms(await t.http.get('/api/admin/pools').set(admin), 'get', '/api/admin/pools', envelope(poolSchema.array()));
    conforms(await t.http.patch('/api/admin/pools/contract').set(admin).send({ size: 3 }), 'patch', '/api/admin/pools/{pool}', envelope(poolSchema));
    conforms(await t.http.patch('/api/admin/pools/contract').set(admin).send({ size: 1 }), 'patch', '/api/admin/pools/{pool}', errorSchema);
    conforms(await t.http.get('/api/pools'), 'get', '/api/pools', envelope(poolSchema.array()));
    conforms(await t.http.get('/api/pools/contract'), 'get', '/api/pools/{pool}', envelope(poolSchema));
    conforms(await t.http.get('/api/pools/nope'), 'get', '/api/pools/{pool}', errorSchema);
    const inPool = await t.http.post('/api/pools/contract/tokens/activate').send({ user_id: newUserId() });
    conforms(inPool, 'post', '/api/pools/{pool}/tokens/activate', envelope(leaseSchema));
    conforms(await t.http.post('/api/pools/nope/tokens/activate').send({ user_id: newUserId() }), 'post', '/api/pools/{pool}/tokens/activate', errorSchema);
    conforms(await t.http.get('/api/pools/contract/tokens'), 'get', '/api/pools/{pool}/tokens', envelope(tokenSchema.array()));
    conforms(await t.http.post('/api/pools/contract/tokens/clear').set(admin), 'post', '/api/pools/{pool}/tokens/clear', envelope(clearedSchema));
    conforms(await t.http.post('/api/pools/contract/tokens/clear'), 'post', '/api/pools/{pool}/tokens/clear', errorSchema);

    conforms(await t.http.get('/api/stats?pool=contract&bucket=600'), 'get', '/api/stats', envelope(statsSchema));
    conforms(await t.http.get('/api/stats?bucket=61'), 'get', '/api/stats', errorSchema);
    conforms(await t.http.get('/api/stats?pool=nope'), 'get', '/api/stats', errorSchema);
    const generated = await t.http.post('/api/admin/pools/contract/tokens/generate').set(admin).send({ count: 1 });
    conforms(generated, 'post', '/api/admin/pools/{pool}/tokens/generate', envelope(generatedSchema));
    conforms(await t.http.post('/api/admin/pools/contract/tokens/generate').set(admin).send({ count: 0 }), 'post', '/api/admin/pools/{pool}/tokens/generate', errorSchema);
    await t.http.post('/api/admin/pools').set(admin).send({ name: 'contract-values', size: 0 });
    const imported = await t.http
      .post('/api/admin/pools/contract-values/tokens/import')
      .set(admin)
      .set('Content-Type', 'text/plain')
      .send('contract-value-1\nnot a value\ncontract-value-1\n');
    conforms(imported, 'post', '/api/admin/pools/{pool}/tokens/import', envelope(importSchema));
    conforms(await t.http.post('/api/admin/pools/contract-values/tokens/import').set(admin).send({ values: 1 }), 'post', '/api/admin/pools/{pool}/tokens/import', errorSchema);
    const holder = newUserId();
    const valued = await t.http.post('/api/pools/contract-values/tokens/activate').send({ user_id: holder });
    conforms(valued, 'post', '/api/pools/{pool}/tokens/activate', envelope(leaseSchema));
    expect(valued.body.data.value).toBe('contract-value-1');
    conforms(await t.http.post('/api/tokens/check').send({ value: 'contract-value-1' }), 'post', '/api/tokens/check', envelope(checkSchema));
    conforms(await t.http.post('/api/tokens/check').send({ value: 'unknown-value' }), 'post', '/api/tokens/check', envelope(checkSchema));
    conforms(await t.http.post('/api/tokens/check').send({}), 'post', '/api/tokens/check', errorSchema);
    const redeemed = await t.http.post('/api/tokens/redeem').send({ user_id: holder, value: 'contract-value-1' });
    conforms(redeemed, 'post', '/api/tokens/redeem', envelope(releasedSchema));
    conforms(await t.http.post('/api/tokens/redeem').send({ user_id: holder, value: 'contract-value-1' }), 'post', '/api/tokens/redeem', errorSchema);
    const retiring = await t.http.post(`/api/admin/tokens/${generated.body.data.token_ids[0] as string}/retire`).set(admin);
    conforms(retiring, 'post', '/api/admin/tokens/{id}/retire', envelope(retiredSchema));
    conforms(await t.http.post(`/api/admin/tokens/${tokenId}/retire`).set(admin).send({ now: 1 }), 'post', '/api/admin/tokens/{id}/retire', errorSchema);
    const events = await t.http.get('/api/events?after=0&limit=5');
    conforms(events, 'get', '/api/events', envelope(eventsPageSchema));
    expect(events.body.data.events).toHaveLength(5);
    conforms(await t.http.get('/api/events?after=-1'), 'get', '/api/events', errorSchema);
    conforms(await t.http.get('/api/events/stream?after=x'), 'get', '/api/events/stream', errorSchema);
    const held = (await t.http.post('/api/pools/contract/tokens/activate').send({ user_id: newUserId() })).body.data;
    conforms(await t.http.get(`/api/leases/${held.lease_id as string}`), 'get', '/api/leases/{lease_id}', envelope(leaseRecordSchema));
    conforms(await t.http.get('/api/leases/nope'), 'get', '/api/leases/{lease_id}', errorSchema);
    const revokePath = `/api/admin/leases/${held.lease_id as string}/revoke`;
    conforms(await t.http.post(revokePath).set(admin), 'post', '/api/admin/leases/{lease_id}/revoke', envelope(leaseRecordSchema));
    conforms(await t.http.post(revokePath), 'post', '/api/admin/leases/{lease_id}/revoke', errorSchema);
    // A revoked lease says so wherever its end is told: history, validate, release and renew.
    const heldToken = held.token_id as string;
    const heldRef = { user_id: held.user_id as string, lease_id: held.lease_id as string };
    const history = await t.http.get(`/api/tokens/${heldToken}/history?limit=1`);
    conforms(history, 'get', '/api/tokens/{id}/history', envelope(historySchema));
    expect(history.body.data.usages[0].end_reason).toBe('revoked');
    const revokedValidation = await t.http.post(`/api/tokens/${heldToken}/validate`).send({ user_id: heldRef.user_id, fence: held.fence as number });
    conforms(revokedValidation, 'post', '/api/tokens/{id}/validate', envelope(validationSchema));
    expect(revokedValidation.body.data).toEqual({ valid: false, reason: 'revoked' });
    for (const action of ['release', 'renew']) {
      const refused = await t.http.post(`/api/tokens/${heldToken}/${action}`).send(heldRef);
      conforms(refused, 'post', `/api/tokens/{id}/${action}`, leaseRefusalSchema);
      expect(refused.body.error, action).toMatchObject({ code: 'lease_ended', details: { reason: 'revoked' } });
    }
    const userPath = `/api/admin/users/${held.user_id as string}/revoke`;
    conforms(await t.http.post(userPath).set(admin), 'post', '/api/admin/users/{user_id}/revoke', envelope(userRevokedSchema));
    conforms(await t.http.post('/api/admin/users/nope/revoke').set(admin), 'post', '/api/admin/users/{user_id}/revoke', errorSchema);

    const hook = await t.http.post('/api/admin/webhooks').set(admin).send({ url: 'http://93.184.215.14/hook', events: ['lease.expired'] });
    conforms(hook, 'post', '/api/admin/webhooks', envelope(webhookWithSecretSchema));
    conforms(await t.http.post('/api/admin/webhooks').set(admin).send({ url: 'http://127.0.0.1/', events: ['lease.expired'] }), 'post', '/api/admin/webhooks', errorSchema);
    conforms(await t.http.get('/api/admin/webhooks').set(admin), 'get', '/api/admin/webhooks', envelope(webhookSchema.array()));
    conforms(await t.http.get('/api/admin/webhooks'), 'get', '/api/admin/webhooks', errorSchema);
    const hookPath = `/api/admin/webhooks/${hook.body.data.id as string}`;
    conforms(await t.http.post(`${hookPath}/rotate`).set(admin), 'post', '/api/admin/webhooks/{id}/rotate', envelope(webhookWithSecretSchema));
    conforms(await t.http.post('/api/admin/webhooks/nope/rotate').set(admin), 'post', '/api/admin/webhooks/{id}/rotate', errorSchema);
    // This process runs no worker: a delivery made by hand stands for one the worker made.
    const { rows } = await t.db.pool.query<{ id: string }>(
      'INSERT INTO webhook_deliveries (webhook_id, event_id, next_attempt_at) VALUES ($1, 1, now()) RETURNING id',
      [hook.body.data.id],
    );
    const deliveryPath = `${hookPath}/deliveries/${rows[0]?.id ?? ''}/replay`;
    const replayPath = '/api/admin/webhooks/{id}/deliveries/{delivery_id}/replay';
    conforms(await t.http.post(deliveryPath).set(admin), 'post', replayPath, envelope(deliverySchema));
    conforms(await t.http.post(`${hookPath}/deliveries/99999/replay`).set(admin), 'post', replayPath, errorSchema);
    conforms(await t.http.get(`${hookPath}/deliveries`).set(admin), 'get', '/api/admin/webhooks/{id}/deliveries', envelope(deliveriesPageSchema));
    conforms(await t.http.get(`${hookPath}/deliveries?limit=0`).set(admin), 'get', '/api/admin/webhooks/{id}/deliveries', errorSchema);
    conforms(await t.http.delete(hookPath).set(admin), 'delete', '/api/admin/webhooks/{id}', envelope(webhookSchema));
    conforms(await t.http.delete(hookPath).set(admin), 'delete', '/api/admin/webhooks/{id}', errorSchema);

    conforms(await t.http.get('/readyz'), 'get', '/readyz', envelope(readySchema));
  });
});

/** Codes any path may answer, which no operation lists: 405, for a method the path does not have. */
const UNDOCUMENTED: ReadonlySet<string> = new Set([ERRORS.method_not_allowed.code]);

describe('the error registry', () => {
  it('is the table of errors in docs/api.md: every code, its status and its message', () => {
    const markdown = readFileSync(new URL('../docs/api.md', import.meta.url), 'utf8');
    const section = markdown.slice(markdown.indexOf('## Errors'));
    const rows = [...section.matchAll(/^\| (\d{3}) \| `([a-z_]+)` \| `([^`]*)` \|/gm)].map((m) => ({
      status: Number(m[1]),
      code: m[2],
      message: m[3],
    }));
    const registry = Object.values(ERRORS).map(({ status, code, message }) => ({ status, code, message }));
    expect(rows).toEqual(expect.arrayContaining(registry));
    expect(rows).toHaveLength(registry.length);
  });

  it('gives every error the OpenAPI document names its entry in the registry', async () => {
    type Answer = { 'x-error-codes'?: string[]; $ref?: string };
    const doc = (await t.http.get('/openapi.json')).body as {
      paths: Record<string, Record<string, { responses: Record<string, Answer> }>>;
      components: { responses: Record<string, Answer> };
    };
    // A common error answer is a $ref to components.responses.
    const resolved = (answer: Answer) => (answer.$ref === undefined ? answer : doc.components.responses[answer.$ref.split('/').at(-1) ?? '']);
    const named = Object.values(doc.paths)
      .flatMap((ops) => Object.values(ops))
      .flatMap((op) =>
        Object.entries(op.responses).flatMap(([status, answer]) => {
          const codes = resolved(answer)?.['x-error-codes'];
          if (!status.startsWith('2')) expect(codes, `${status} ${JSON.stringify(answer)}`).toBeDefined();
          return (codes ?? []).map((code) => [code, Number(status)] as const);
        }),
      );
    expect(named.length).toBeGreaterThan(0);
    expect(new Set(named.map(([code]) => code))).toEqual(new Set(Object.keys(ERRORS).filter((code) => !UNDOCUMENTED.has(code))));
    const statusOf = new Map(Object.values(ERRORS).map((e) => [e.code as string, e.status]));
    for (const [code, status] of named) expect(statusOf.get(code), code).toBe(status);
  });
});
