/**
 * Maps an EHR request (method + path relative to the FHIR base) to its FHIR interaction, for the scope precheck,
 * for events and metrics (never the URL itself: search values are PHI), and to decide read vs. write.
 */
import { TetherError, type ScopedInteraction } from '@tether/core';

/** A FHIR RESTful interaction as the client sees it. */
export type EhrInteraction = ScopedInteraction | 'capabilities' | 'transaction' | 'batch' | 'patch' | 'operation';

/** HTTP methods the client sends. */
export type HttpMethod = 'GET' | 'POST' | 'PUT' | 'DELETE' | 'PATCH';

/** One (resource type, interaction) pair the token must allow. */
export interface ScopeCheck {
  readonly resourceType: string;
  readonly interaction: ScopedInteraction;
}

export interface InteractionInfo {
  readonly interaction: EhrInteraction;
  readonly resourceType: string | undefined;
  /**
   * Whether the request may change state on the EHR. Writes are never resent by the client; reads (GET and
   * `POST [type]/_search`, which is a read by definition) are retried on transient failures.
   */
  readonly isWrite: boolean;
  /** What the scope precheck asks the token provider about. Empty: no precheck (capabilities, operations). */
  readonly scopeChecks: readonly ScopeCheck[];
}

/** FHIR R4 resource type names: a capital letter, then letters. */
export const RESOURCE_TYPE_PATTERN = /^[A-Z][A-Za-z]{0,63}$/;
/** FHIR ids (and version ids): `[A-Za-z0-9\-\.]{1,64}`. */
export const ID_PATTERN = /^[A-Za-z0-9\-.]{1,64}$/;

function invalid(message: string, details: Record<string, unknown> = {}): TetherError {
  return new TetherError('EHR_REQUEST_INVALID', message, { details });
}

function scoped(resourceType: string, interaction: ScopedInteraction): ScopeCheck[] {
  return [{ resourceType, interaction }];
}

/**
 * Classifies one request.
 *
 * @param method - the HTTP method.
 * @param relativePath - the path below the FHIR base, without query, e.g. `Patient/123/_history/2`.
 * @param body - the request body (only inspected for `POST [base]`, to tell a transaction from a batch).
 * @param hasQuery - whether the URL has a query: `PUT/DELETE/PATCH [type]?search` are conditional writes.
 * @throws TetherError `EHR_REQUEST_INVALID` when the path is not a FHIR interaction the client supports.
 */
export function classifyRequest(method: HttpMethod, relativePath: string, body?: unknown, hasQuery = false): InteractionInfo {
  const segments = relativePath === '' ? [] : relativePath.split('/');
  if (segments.some((s) => s === '')) throw invalid('The request path has an empty segment.');
  const isWrite = method !== 'GET';
  if (segments.some((s) => s.startsWith('$'))) {
    // Operations ($everything, $match, ...) have no SMART interaction; the EHR checks them. A POSTed operation may
    // change state, so it is treated as a write (never resent).
    const first = segments[0];
    return { interaction: 'operation', resourceType: first && RESOURCE_TYPE_PATTERN.test(first) ? first : undefined, isWrite, scopeChecks: [] };
  }
  const [type, second, third, fourth, ...rest] = segments;
  if (type === undefined) {
    if (method !== 'POST') throw invalid('Only POST (transaction or batch) is supported on the FHIR base.');
    return bundleInteraction(body);
  }
  if (type === 'metadata' && segments.length === 1 && method === 'GET') {
    return { interaction: 'capabilities', resourceType: undefined, isWrite: false, scopeChecks: [] };
  }
  if (!RESOURCE_TYPE_PATTERN.test(type)) throw invalid('The request path does not start with a resource type.');
  if (rest.length > 0) throw invalid('The request path is longer than any FHIR interaction.', { resourceType: type });
  const bad = (): TetherError => invalid(`${method} is not a FHIR interaction on this path.`, { resourceType: type });

  if (second === undefined) {
    if (method === 'GET') return { interaction: 'search-type', resourceType: type, isWrite: false, scopeChecks: scoped(type, 'search-type') };
    if (method === 'POST') return { interaction: 'create', resourceType: type, isWrite: true, scopeChecks: scoped(type, 'create') };
    // Conditional update / delete / patch: the search in the query selects the resource.
    if (hasQuery && method === 'PUT') return { interaction: 'update', resourceType: type, isWrite: true, scopeChecks: scoped(type, 'update') };
    if (hasQuery && method === 'DELETE') return { interaction: 'delete', resourceType: type, isWrite: true, scopeChecks: scoped(type, 'delete') };
    if (hasQuery && method === 'PATCH') return { interaction: 'patch', resourceType: type, isWrite: true, scopeChecks: scoped(type, 'update') };
    throw bad();
  }
  if (second === '_search') {
    if (method !== 'POST' || third !== undefined) throw bad();
    return { interaction: 'search-type', resourceType: type, isWrite: false, scopeChecks: scoped(type, 'search-type') };
  }
  if (second === '_history') {
    if (method !== 'GET' || third !== undefined) throw bad();
    return { interaction: 'history-type', resourceType: type, isWrite: false, scopeChecks: scoped(type, 'history-type') };
  }
  if (!ID_PATTERN.test(second)) throw invalid('The resource id is not a valid FHIR id.', { resourceType: type });
  if (third === undefined) {
    switch (method) {
      case 'GET':
        return { interaction: 'read', resourceType: type, isWrite: false, scopeChecks: scoped(type, 'read') };
      case 'PUT':
        return { interaction: 'update', resourceType: type, isWrite: true, scopeChecks: scoped(type, 'update') };
      case 'DELETE':
        return { interaction: 'delete', resourceType: type, isWrite: true, scopeChecks: scoped(type, 'delete') };
      case 'PATCH':
        return { interaction: 'patch', resourceType: type, isWrite: true, scopeChecks: scoped(type, 'update') };
      case 'POST':
        throw bad();
    }
  }
  if (third === '_history' && method === 'GET') {
    if (fourth === undefined) {
      return { interaction: 'history-instance', resourceType: type, isWrite: false, scopeChecks: scoped(type, 'history-instance') };
    }
    if (!ID_PATTERN.test(fourth)) throw invalid('The version id is not a valid FHIR id.', { resourceType: type });
    return { interaction: 'vread', resourceType: type, isWrite: false, scopeChecks: scoped(type, 'vread') };
  }
  throw bad();
}

/**
 * A `POST [base]` Bundle: a transaction or a batch. Both are writes. The scope precheck covers every entry, as the
 * EHR would: one entry the tenant may not do fails (or partly fails) the whole Bundle.
 */
function bundleInteraction(body: unknown): InteractionInfo {
  const bundle = body as { resourceType?: unknown; type?: unknown; entry?: unknown } | undefined;
  if (bundle?.resourceType !== 'Bundle' || (bundle.type !== 'transaction' && bundle.type !== 'batch')) {
    throw invalid('POST to the FHIR base needs a Bundle of type transaction or batch.');
  }
  const entries = bundle.entry === undefined ? [] : bundle.entry;
  if (!Array.isArray(entries)) throw invalid('Bundle.entry must be an array.');
  const checks: ScopeCheck[] = [];
  const seen = new Set<string>();
  entries.forEach((entry: unknown, index: number) => {
    const request = (entry as { request?: { method?: unknown; url?: unknown } } | null)?.request;
    const method = typeof request?.method === 'string' ? request.method.toUpperCase() : undefined;
    const url = typeof request?.url === 'string' ? request.url : undefined;
    if (method === undefined || url === undefined || !['GET', 'POST', 'PUT', 'DELETE', 'PATCH'].includes(method)) {
      throw invalid('Every Bundle entry needs request.method and request.url.', { entry: index });
    }
    // Entry URLs are relative to the base; a conditional one carries a query ("Patient?identifier=..."), whose
    // values are never looked at here.
    const query = url.indexOf('?');
    const path = query === -1 ? url : url.slice(0, query);
    let info: InteractionInfo;
    try {
      info = classifyRequest(method as HttpMethod, path, undefined, query !== -1);
    } catch {
      throw invalid('A Bundle entry has a request.url that is not a FHIR interaction.', { entry: index });
    }
    for (const check of info.scopeChecks) {
      const key = `${check.resourceType} ${check.interaction}`;
      if (!seen.has(key)) {
        seen.add(key);
        checks.push(check);
      }
    }
  });
  return { interaction: bundle.type, resourceType: undefined, isWrite: true, scopeChecks: checks };
}
