import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js';
import ajvFormats from 'ajv-formats';

// Values against the schemas of the OpenAPI document, with JSON Schema 2020-12 (OpenAPI 3.1's
// dialect): test/openapi.test.ts checks the document's examples, test/contract.test.ts real answers.

/** A key of the document as a part of a JSON pointer. */
export const pointerPart = (key: string) => key.replaceAll('~', '~0').replaceAll('/', '~1');

// A CommonJS module: its default export is module.exports, whose `default` is the plugin.
const addFormats = ajvFormats.default;

export function documentSchemas(document: object): { problems(pointer: string, value: unknown): string[] } {
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  addFormats(ajv);
  // The whole document as one schema, so that its $refs resolve as they do in the document.
  ajv.addSchema(document, 'openapi.json', undefined, false);
  const compiled = new Map<string, ValidateFunction>();
  return {
    /** What is wrong with `value` against the schema at `pointer` (#/...); none: []. */
    problems(pointer, value) {
      let validate = compiled.get(pointer);
      if (validate === undefined) {
        validate = ajv.compile({ $ref: `openapi.json${pointer}` });
        compiled.set(pointer, validate);
      }
      return validate(value) ? [] : (validate.errors ?? []).map((e) => `${e.instancePath} ${e.message ?? ''}`);
    },
  };
}
