import { Validator } from '@seriousme/openapi-schema-validator';
import { describe, expect, it } from 'vitest';
import { openApiDocument } from '../src/http/contract.js';
import { documentSchemas, pointerPart } from './openApiSchemas.js';

// The OpenAPI document (GET /openapi.json) against the OpenAPI 3.1 specification, and its examples
// against its own schemas. test/contract.test.ts checks it against the routes and real answers.

/** The document as served: JSON, nothing else. */
const doc = JSON.parse(JSON.stringify(openApiDocument('1.2.3'))) as Record<string, unknown>;

type Node = Record<string, unknown>;
const isNode = (value: unknown): value is Node => typeof value === 'object' && value !== null && !Array.isArray(value);

/** Every object of the document with its JSON pointer, depth first. */
function* walk(node: unknown, pointer = ''): Generator<[string, Node]> {
  if (Array.isArray(node)) {
    for (const [i, item] of node.entries()) yield* walk(item, `${pointer}/${i}`);
    return;
  }
  if (!isNode(node)) return;
  yield [pointer, node];
  for (const [key, value] of Object.entries(node)) yield* walk(value, `${pointer}/${pointerPart(key)}`);
}

function at(pointer: string): unknown {
  return pointer
    .split('/')
    .slice(1)
    .map((part) => part.replaceAll('~1', '/').replaceAll('~0', '~'))
    .reduce<unknown>((node, key) => (isNode(node) || Array.isArray(node) ? (node as Node)[key] : undefined), doc);
}

/** Each operation as [method path, operation]. */
const operations = Object.entries(doc.paths as Record<string, Record<string, Node>>).flatMap(([path, item]) =>
  Object.entries(item).map(([method, operation]) => [`${method.toUpperCase()} ${path}`, operation] as const),
);

describe('the OpenAPI document', () => {
  it('passes the OpenAPI 3.1 specification', async () => {
    const validator = new Validator();
    const result = await validator.validate(doc);
    expect(result.errors ?? [], JSON.stringify(result.errors, null, 2)).toEqual([]);
    expect(result.valid).toBe(true);
    expect(validator.version).toBe('3.1');
  });

  it('refers only to components it has, and has none it does not use', () => {
    const refs = [...walk(doc)].flatMap(([, node]) => (typeof node.$ref === 'string' ? [node.$ref] : []));
    expect(refs.length).toBeGreaterThan(100);
    const missing = refs.filter((ref) => !ref.startsWith('#/') || at(ref.slice(1)) === undefined);
    expect(missing).toEqual([]);
    const components = doc.components as Record<string, Node>;
    const unused = ['schemas', 'responses', 'headers'].flatMap((kind) =>
      Object.keys(components[kind] ?? {})
        .map((name) => `#/components/${kind}/${name}`)
        .filter((ref) => !refs.includes(ref)),
    );
    expect(unused).toEqual([]);
  });

  it('files every operation under one of its tags, and has no tag without operations', () => {
    const declared = (doc.tags as Array<{ name: string; description: string }>).map((t) => t.name);
    const untagged = operations.filter(([, op]) => !Array.isArray(op.tags) || op.tags.length !== 1 || !declared.includes(String(op.tags[0])));
    expect(untagged.map(([name]) => name)).toEqual([]);
    const used = new Set(operations.map(([, op]) => String((op.tags as string[])[0])));
    expect(declared.filter((tag) => !used.has(tag))).toEqual([]);
    expect(operations.find(([name]) => name === 'POST /api/tokens/activate')?.[1].tags).toEqual(['Leases']);
  });

  it('names every operation once (operationId)', () => {
    const ids = operations.map(([, op]) => op.operationId);
    expect(ids.every((id) => typeof id === 'string' && /^[a-z][A-Za-z]+$/.test(id))).toBe(true);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it('shares the error answers: every error body is the Error or LeaseRefusal component', () => {
    const bodies = [...walk(doc)]
      .filter(([pointer]) => /\/responses\/[45]\d\d\/content\/application~1json$/.test(pointer))
      .map(([, media]) => media.schema);
    expect(bodies.length).toBeGreaterThan(10);
    for (const schema of bodies) {
      expect(['#/components/schemas/Error', '#/components/schemas/LeaseRefusal']).toContain((schema as Node).$ref);
    }
  });

  it('says that leases end as revoked, in every list of end reasons', () => {
    const schemas = (doc.components as { schemas: Record<string, Node> }).schemas;
    expect(schemas.EndReason?.enum).toContain('revoked');
    const validation = JSON.stringify(schemas.Validation);
    expect(validation).toMatch(/"reason":\{"type":"string","enum":\[[^\]]*"revoked"/);
    const refusal = at('/components/schemas/LeaseRefusal/properties/error/properties/details/properties/reason') as Node;
    expect(refusal.enum).toEqual(expect.arrayContaining([...(schemas.EndReason?.enum as string[]), 'not_held']));
    for (const name of ['Usage', 'LeaseRecord']) {
      expect(JSON.stringify(schemas[name]), name).toContain('"$ref":"#/components/schemas/EndReason"');
    }
  });

  it('has an example for each request body and each success answer', () => {
    const lacking: string[] = [];
    for (const [name, operation] of operations) {
      const content = [
        ...Object.entries((operation.requestBody as Node | undefined)?.content ?? {}).map(([type, media]) => [`request ${type}`, media] as const),
        ...Object.entries(operation.responses as Record<string, Node>)
          .filter(([status]) => status.startsWith('2'))
          .flatMap(([status, answer]) =>
            Object.entries((answer.content ?? {}) as Record<string, Node>).map(([type, media]) => [`${status} ${type}`, media] as const),
          ),
      ];
      expect(content.length, name).toBeGreaterThan(0);
      for (const [what, media] of content) if (media.example === undefined && media.examples === undefined) lacking.push(`${name}: ${what}`);
    }
    expect(lacking).toEqual([]);
  });

  it('has every example valid against its schema', () => {
    const schemas = documentSchemas(doc);
    const problems: string[] = [];
    let checked = 0;
    for (const [pointer, node] of walk(doc)) {
      if (!isNode(node.schema) || (node.example === undefined && node.examples === undefined)) continue;
      const examples =
        node.example !== undefined
          ? { example: node.example }
          : Object.fromEntries(Object.entries(node.examples as Record<string, Node>).map(([name, e]) => [name, e.value]));
      for (const [name, example] of Object.entries(examples)) {
        checked += 1;
        problems.push(...schemas.problems(`#${pointer}/schema`, example).map((problem) => `${pointer} ${name}: ${problem}`));
      }
    }
    expect(problems).toEqual([]);
    expect(checked).toBeGreaterThan(2 * operations.length);
  });

  it('finds an example that breaks its schema', () => {
    const schemas = documentSchemas(doc);
    const example = at('/paths/~1api~1tokens~1activate/post/responses/201/content/application~1json/example') as { data: Node };
    const lease = (data: Node) => schemas.problems('#/components/schemas/Lease', data);
    expect(lease(example.data)).toEqual([]);
    expect(lease({ ...example.data, fence: 0 })).not.toEqual([]);
    expect(lease({ ...example.data, expires_at: '2026-11-23 10:02' })).not.toEqual([]);
    expect(lease({ ...example.data, token_id: 'not-a-uuid' })).not.toEqual([]);
  });
});
