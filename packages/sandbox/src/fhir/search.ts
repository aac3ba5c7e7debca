import { TetherError } from '@tether/core';
import { RESULT_PARAMS, searchParamsFor } from './definitions.js';
import { normaliseReference, parseDateValues, parseTokenValues, type Criterion } from './search-values.js';

/** Default and maximum page sizes (entries per search page). */
export const DEFAULT_PAGE_SIZE = 50;
export const MAX_PAGE_SIZE = 1000;

export interface ParsedSearch {
  readonly criteria: readonly Criterion[];
  readonly count: number;
  readonly offset: number;
  /** `_summary=count`: total only. */
  readonly summaryCount: boolean;
  /** Parameters that were ignored (unknown or unsupported), in lenient mode. */
  readonly ignored: readonly string[];
  /** The parameters that define the result set, for building `self`/`next` links. */
  readonly canonical: URLSearchParams;
}

const RESULT = new Set<string>(RESULT_PARAMS);

/**
 * Parses a type-level search. Unknown parameters are ignored (as most servers do) unless `strict`, in which case
 * they are rejected with FHIR_UNKNOWN_SEARCH_PARAMETER. Bad values of known parameters are always rejected.
 */
export function parseSearch(resourceType: string, params: URLSearchParams, options: { strict: boolean }): ParsedSearch {
  const supported = searchParamsFor(resourceType);
  const criteria: Criterion[] = [];
  const ignored: string[] = [];
  const canonical = new URLSearchParams();
  let count = DEFAULT_PAGE_SIZE;
  let offset = 0;
  let summaryCount = false;

  for (const [rawName, value] of params) {
    const [name, modifier] = rawName.split(':', 2) as [string, string | undefined];
    if (RESULT.has(name)) {
      if (name === '_count') {
        count = parseNonNegativeInt('_count', value);
        if (count > MAX_PAGE_SIZE) count = MAX_PAGE_SIZE;
      } else if (name === '_offset') {
        offset = parseNonNegativeInt('_offset', value);
      } else if (name === '_summary') {
        if (value === 'count') summaryCount = true;
        else if (value !== 'false') reject(options.strict, ignored, rawName, '_summary supports only count and false.');
      }
      continue;
    }
    const sp = supported.get(name);
    const modifierOk = modifier === undefined || (modifier === 'not' && sp?.type === 'token');
    if (!sp || !modifierOk) {
      reject(options.strict, ignored, rawName, `Search parameter '${rawName}' is not supported for ${resourceType}.`);
      continue;
    }
    canonical.append(rawName, value);
    switch (sp.type) {
      case 'token':
        criteria.push({ kind: 'token', code: name, values: parseTokenValues(value), not: modifier === 'not' });
        break;
      case 'reference': {
        const values = value.split(',').filter(Boolean).map((v) => (v.includes('/') ? normaliseReference(v) : v));
        const qualified = name === 'patient' ? values.map((v) => (v.includes('/') ? v : `Patient/${v}`)) : values;
        criteria.push({ kind: 'reference', code: name, values: qualified });
        break;
      }
      case 'date':
        criteria.push({ kind: 'date', code: name, values: parseDateValues(name, value) });
        break;
    }
  }
  return { criteria, count, offset, summaryCount, ignored, canonical };
}

function parseNonNegativeInt(name: string, value: string): number {
  if (!/^\d{1,9}$/.test(value)) {
    throw new TetherError('FHIR_INVALID_SEARCH', `Parameter '${name}' needs a non-negative integer.`);
  }
  return Number(value);
}

function reject(strict: boolean, ignored: string[], name: string, message: string): void {
  if (strict) throw new TetherError('FHIR_UNKNOWN_SEARCH_PARAMETER', message);
  ignored.push(name);
}
