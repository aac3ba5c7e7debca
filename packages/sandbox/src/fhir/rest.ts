import { randomUUID } from 'node:crypto';
import { validateResource } from '@medplum/core';
import type { Resource as FhirResource } from '@medplum/fhirtypes';
import { operationOutcome, TetherError } from '@tether/core';
import { Interaction } from '../interactions.js';
import type { SandboxProfile } from '../profile.js';
import { ensureDefinitions, isKnownResourceType } from './definitions.js';
import { parseSearch } from './search.js';
import type { MemoryStore, Resource, VersionRecord } from './store.js';

/**
 * The FHIR RESTful interactions of the sandbox, independent of HTTP plumbing: the HTTP layer parses the request
 * into a {@link RestRequest}, calls {@link FhirRest.execute} and writes the {@link RestResponse} back. Batch and
 * transaction entries go through the same code.
 */
export interface RestRequest {
  readonly method: string;
  /** Path below the FHIR base, without leading slash or query (`Patient/123/_history/2`). */
  readonly path: string;
  readonly query: URLSearchParams;
  readonly headers: {
    readonly ifMatch?: string | undefined;
    readonly ifNoneExist?: string | undefined;
    readonly prefer?: string | undefined;
  };
  /** The parsed JSON body, if any. */
  readonly body?: unknown;
  readonly requestId: string;
  /** Epoch ms. */
  readonly now: number;
  /** The body of a single create/update was already validated structurally (by the validation worker pool). */
  readonly prevalidated?: boolean;
}

export interface RestResponse {
  readonly status: number;
  readonly body?: unknown;
  readonly headers?: Readonly<Record<string, string>>;
  /** True when the request changed server state (used by after-commit faults). */
  readonly wrote: boolean;
  /** `body` already serialised (the store caches each version's JSON), to skip a second JSON.stringify. */
  readonly json?: string | undefined;
  /** Epoch ms of the version answered, for `Bundle.entry.response.lastModified` at full precision. */
  readonly lastUpdated?: number;
}

/** A request's route: the resource type and interaction decide scope checks and fault matching. */
export interface Route {
  readonly interaction: Interaction;
  readonly resourceType: string | undefined;
  readonly id?: string;
  readonly versionId?: string;
  /** `POST [type]/_search`: the parameters come in a form-encoded body (merged into the query by the caller). */
  readonly postSearch?: boolean;
}

/** Resource types whose writes carry a per-request rejection list (schema drift). */
export type RejectedElements = (resourceType: string) => readonly string[];

export interface FhirRestOptions {
  readonly store: MemoryStore;
  readonly profile: SandboxProfile;
  /** Absolute base URL, e.g. `http://127.0.0.1:8090/fhir/R4`. */
  readonly baseUrl: () => string;
  /** Visibility lag (ms) for searches of a resource type at a time; 0 = none. */
  readonly visibilityLagMs?: (resourceType: string, now: number) => number;
  /** Called when a search hid matches because of the visibility lag. */
  readonly onLagHit?: (resourceType: string, hidden: number) => void;
  /** Elements rejected with 422 (schema drift); called once per written resource. */
  readonly rejectedElements?: (resourceType: string, now: number) => readonly string[];
  /** Called when schema drift rejected a write. */
  readonly onDriftHit?: (element: string) => void;
}

const ETAG_RE = /^(?:W\/)?"([^"\s]+)"$/;

/** Parses `W/"3"` (or `"3"`) into `3`; throws FHIR_INVALID_IF_MATCH on anything else. */
export function parseETag(value: string): string {
  const m = ETAG_RE.exec(value.trim());
  if (!m?.[1]) throw new TetherError('FHIR_INVALID_IF_MATCH', 'If-Match must be a version ETag such as W/"3".');
  return m[1];
}

const ID_RE = /^[A-Za-z0-9\-.]{1,64}$/;
/** `Patient?identifier=...`: a conditional reference, resolved by search inside a transaction. */
const CONDITIONAL_REFERENCE = /^[A-Z][A-Za-z]+\?.+/;

/** Two entries of one transaction must not name the same resource (R4 http.html#trules). */
function assertDistinctIdentities(entries: readonly ParsedEntry[]): void {
  const seen = new Set<string>();
  for (const [i, e] of entries.entries()) {
    const keys: string[] = [];
    if (e.fullUrl) keys.push(`fullUrl ${e.fullUrl}`);
    if (e.method === 'PUT' || e.method === 'DELETE') {
      const [type, id] = e.path.split('/');
      if (type && id) keys.push(`${type}/${id}`);
    }
    for (const k of keys) {
      if (seen.has(k)) {
        throw new TetherError('FHIR_TRANSACTION_FAILED', `Transaction entry ${i} names a resource another entry already names. Nothing was applied.`, {
          details: { entry: i, entryCode: 'FHIR_INVALID_BUNDLE', entryStatus: 400 },
        });
      }
      seen.add(k);
    }
  }
}

/** Resolves a path and method into a route; throws FHIR_UNKNOWN_RESOURCE_TYPE / FHIR_METHOD_NOT_ALLOWED / FHIR_NOT_FOUND. */
export function resolveRoute(method: string, path: string): Route {
  const parts = path.split('/').filter((p) => p !== '');
  const [type, second, third, fourth] = parts;
  if (parts.length === 0) {
    if (method === 'POST') return { interaction: Interaction.Transaction, resourceType: undefined };
    throw new TetherError('FHIR_METHOD_NOT_ALLOWED', 'Only POST of a batch or transaction Bundle is allowed at the base.');
  }
  if (type === 'metadata' && parts.length === 1) {
    if (method !== 'GET') throw new TetherError('FHIR_METHOD_NOT_ALLOWED', 'metadata supports GET only.');
    return { interaction: Interaction.Capabilities, resourceType: undefined };
  }
  if (!type || !isKnownResourceType(type)) {
    throw new TetherError('FHIR_UNKNOWN_RESOURCE_TYPE', 'The URL does not name a FHIR R4 resource type.');
  }
  if (parts.length > 4) throw new TetherError('FHIR_NOT_FOUND', 'No such endpoint.');
  if (second === undefined) {
    if (method === 'GET') return { interaction: Interaction.SearchType, resourceType: type };
    if (method === 'POST') return { interaction: Interaction.Create, resourceType: type };
    throw new TetherError('FHIR_METHOD_NOT_ALLOWED', `${method} is not allowed on a resource type.`);
  }
  if (second === '_search' && third === undefined) {
    if (method !== 'POST') throw new TetherError('FHIR_METHOD_NOT_ALLOWED', '_search supports POST only; use GET [type]?params.');
    return { interaction: Interaction.SearchType, resourceType: type, postSearch: true };
  }
  if (second === '_history' && third === undefined) {
    if (method !== 'GET') throw new TetherError('FHIR_METHOD_NOT_ALLOWED', 'History supports GET only.');
    return { interaction: Interaction.HistoryType, resourceType: type };
  }
  if (!ID_RE.test(second)) throw new TetherError('FHIR_NOT_FOUND', 'The id in the URL is not a valid FHIR id.');
  if (third === undefined) {
    switch (method) {
      case 'GET':
        return { interaction: Interaction.Read, resourceType: type, id: second };
      case 'PUT':
        return { interaction: Interaction.Update, resourceType: type, id: second };
      case 'DELETE':
        return { interaction: Interaction.Delete, resourceType: type, id: second };
      default:
        throw new TetherError('FHIR_METHOD_NOT_ALLOWED', `${method} is not allowed on a resource instance.`);
    }
  }
  if (third !== '_history') throw new TetherError('FHIR_NOT_FOUND', 'No such endpoint.');
  if (method !== 'GET') throw new TetherError('FHIR_METHOD_NOT_ALLOWED', 'History supports GET only.');
  if (fourth === undefined) return { interaction: Interaction.HistoryInstance, resourceType: type, id: second };
  return { interaction: Interaction.Vread, resourceType: type, id: second, versionId: fourth };
}

/** Headers every version answer carries. */
function versionHeaders(v: VersionRecord): Record<string, string> {
  return { ETag: `W/"${v.versionId}"`, 'Last-Modified': new Date(v.lastUpdated).toUTCString() };
}

type PreferReturn = 'minimal' | 'representation' | 'OperationOutcome';

function preferReturn(prefer: string | undefined): PreferReturn | undefined {
  const m = /return=(minimal|representation|OperationOutcome)/.exec(prefer ?? '');
  return m?.[1] as PreferReturn | undefined;
}

/**
 * Structural validation with `@medplum/core`. Codes and terminology are not checked here (that is Tether's own
 * terminology layer). The diagnostics name elements, never values.
 */
export function validateStructure(resource: Resource): void {
  ensureDefinitions();
  let issues: { expression?: string[]; details?: { text?: string } }[];
  try {
    issues = validateResource(resource as unknown as FhirResource);
  } catch (err) {
    issues = (err as { outcome?: { issue?: typeof issues } }).outcome?.issue ?? [{ details: { text: 'Invalid resource' } }];
  }
  const errors = issues.filter((i) => (i as { severity?: string }).severity !== 'warning' && (i as { severity?: string }).severity !== 'information');
  if (errors.length === 0) return;
  const expressions = errors.flatMap((i) => i.expression ?? []);
  const text = errors
    .slice(0, 10)
    .map((i) => `${(i.expression ?? []).join(',')}: ${i.details?.text ?? 'invalid'}`)
    .join('; ');
  throw new TetherError('FHIR_INVALID_RESOURCE', `Structural validation failed: ${text}`, {
    details: { expression: expressions },
  });
}

/** Walks `Observation.note` / `Observation.component.code` style paths; true when the element is present. */
function hasElement(resource: Resource, path: string): boolean {
  const [type, ...rest] = path.split('.');
  if (type !== resource.resourceType || rest.length === 0) return false;
  let cur: unknown[] = [resource];
  for (const name of rest) {
    const next: unknown[] = [];
    for (const node of cur) {
      if (!node || typeof node !== 'object') continue;
      const rec = node as Record<string, unknown>;
      // `value` matches valueQuantity, valueString... (choice types).
      const keys = Object.keys(rec).filter((k) => k === name || (k.startsWith(name) && /^[A-Z]/.test(k.slice(name.length))));
      for (const k of keys) {
        const v = rec[k];
        if (Array.isArray(v)) next.push(...v);
        else if (v !== undefined) next.push(v);
      }
    }
    cur = next;
  }
  return cur.length > 0;
}

/** Reads a JSON body as a resource of the expected type; throws on anything else. */
function bodyResource(body: unknown, expectedType: string | undefined): Resource {
  if (!body || typeof body !== 'object' || Array.isArray(body)) {
    throw new TetherError('FHIR_INVALID_RESOURCE', 'The body must be a JSON object with a resourceType.');
  }
  const r = body as Resource;
  if (typeof r.resourceType !== 'string') {
    throw new TetherError('FHIR_INVALID_RESOURCE', 'The body has no resourceType.');
  }
  if (expectedType !== undefined && r.resourceType !== expectedType) {
    throw new TetherError('FHIR_RESOURCE_TYPE_MISMATCH', 'The body resourceType differs from the URL resource type.');
  }
  return r;
}

export class FhirRest {
  readonly #o: FhirRestOptions;

  constructor(options: FhirRestOptions) {
    this.#o = options;
  }

  /** Executes one (already routed and authorised) request. Throws TetherError for every client error. */
  execute(req: RestRequest, route: Route): RestResponse {
    switch (route.interaction) {
      case Interaction.Read:
        return this.#versionAnswer(this.#o.store.read(route.resourceType as string, route.id as string), 200);
      case Interaction.Vread:
        return this.#versionAnswer(
          this.#o.store.vread(route.resourceType as string, route.id as string, route.versionId as string),
          200,
        );
      case Interaction.SearchType:
        return this.#search(req, route.resourceType as string);
      case Interaction.HistoryInstance:
      case Interaction.HistoryType:
        return this.#history(req, route);
      case Interaction.Create:
        return this.#o.store.atomic(() => this.#create(req, route.resourceType as string, Interaction.Create));
      case Interaction.Update:
        return this.#o.store.atomic(() => this.#update(req, route, Interaction.Update));
      case Interaction.Delete:
        return this.#delete(req, route, Interaction.Delete);
      case Interaction.Batch:
      case Interaction.Transaction:
        return this.#bundle(req);
      case Interaction.Capabilities:
        throw new TetherError('FHIR_NOT_FOUND', 'metadata is served by the HTTP layer.');
    }
  }

  #url(v: VersionRecord): string {
    return `${this.#o.baseUrl()}/${v.resourceType}/${v.id}`;
  }

  #versionAnswer(v: VersionRecord, status: number): RestResponse {
    return { status, body: v.resource, json: v.json, headers: versionHeaders(v), wrote: false, lastUpdated: v.lastUpdated };
  }

  #writeAnswer(v: VersionRecord, status: number, prefer: string | undefined): RestResponse {
    const headers = { ...versionHeaders(v), Location: `${this.#url(v)}/_history/${v.versionId}` };
    const lastUpdated = v.lastUpdated;
    const mode = preferReturn(prefer);
    const profileMode = this.#o.profile.writeResponse;
    if (mode === 'minimal' || (mode === undefined && profileMode === 'empty')) {
      return { status, headers, wrote: true, lastUpdated };
    }
    if (mode === 'OperationOutcome' || (mode === undefined && profileMode === 'outcome')) {
      return {
        status,
        headers,
        wrote: true,
        lastUpdated,
        body: { resourceType: 'OperationOutcome', issue: [{ severity: 'information', code: 'informational', diagnostics: 'OK' }] },
      };
    }
    return { status, headers, wrote: true, body: v.resource, json: v.json, lastUpdated };
  }

  #checkWritable(resource: Resource, now: number, prevalidated = false): void {
    if (!prevalidated) validateStructure(resource);
    const rejected = this.#o.rejectedElements?.(resource.resourceType, now) ?? [];
    for (const element of rejected) {
      if (hasElement(resource, element)) {
        this.#o.onDriftHit?.(element);
        throw new TetherError('FHIR_ELEMENT_REJECTED', `The server no longer accepts element ${element}.`, {
          details: { expression: [element] },
        });
      }
    }
  }

  /** Finds the resources a conditional request (`If-None-Exist`) names, ignoring visibility lag. */
  #conditionalMatches(resourceType: string, query: string): readonly VersionRecord[] {
    const params = new URLSearchParams(query.startsWith('?') ? query.slice(1) : query);
    const parsed = parseSearch(resourceType, params, { strict: true });
    if (parsed.criteria.length === 0) {
      throw new TetherError('FHIR_INVALID_SEARCH', 'If-None-Exist needs at least one search parameter.');
    }
    return this.#o.store.search(resourceType, parsed.criteria, { now: 0, visibilityLagMs: 0, offset: 0, count: 2 }).matches;
  }

  #create(req: RestRequest, type: string, interaction: string, presetId?: string): RestResponse & { version?: VersionRecord } {
    const resource = bodyResource(req.body, type);
    if (req.headers.ifNoneExist !== undefined) {
      if (!this.#o.profile.conditionalCreate) {
        throw new TetherError('FHIR_METHOD_NOT_ALLOWED', 'This server profile does not support conditional create.');
      }
      const matches = this.#conditionalMatches(type, req.headers.ifNoneExist);
      if (matches.length > 1) {
        throw new TetherError('FHIR_MULTIPLE_MATCHES', 'If-None-Exist matched more than one resource.');
      }
      const existing = matches[0];
      if (existing) {
        const answer = this.#writeAnswer(existing, 200, req.headers.prefer);
        return { ...answer, wrote: false, version: existing };
      }
    }
    const { id: _ignored, ...rest } = resource;
    const input = rest as Resource;
    this.#checkWritable(input, req.now, req.prevalidated);
    const ctx = { requestId: req.requestId, interaction, now: req.now };
    const v = this.#o.store.create(input, ctx, presetId);
    return { ...this.#writeAnswer(v, 201, req.headers.prefer), version: v };
  }

  #update(req: RestRequest, route: Route, interaction: string): RestResponse & { version?: VersionRecord } {
    const type = route.resourceType as string;
    const id = route.id as string;
    const resource = bodyResource(req.body, type);
    if (resource.id !== id) {
      throw new TetherError('FHIR_ID_MISMATCH', 'The body id must equal the id in the URL.');
    }
    let ifMatch: string | undefined;
    if (req.headers.ifMatch !== undefined) ifMatch = parseETag(req.headers.ifMatch);
    else if (this.#o.profile.requireIfMatch) {
      throw new TetherError('FHIR_IF_MATCH_REQUIRED', 'This server requires If-Match on updates.');
    }
    this.#checkWritable(resource, req.now, req.prevalidated);
    const { version, created } = this.#o.store.update(resource as Resource & { id: string }, {
      requestId: req.requestId,
      interaction,
      now: req.now,
      ifMatch,
      allowCreate: this.#o.profile.updateCreate,
    });
    return { ...this.#writeAnswer(version, created ? 201 : 200, req.headers.prefer), version };
  }

  #delete(req: RestRequest, route: Route, interaction: string): RestResponse {
    const v = this.#o.store.delete(route.resourceType as string, route.id as string, {
      requestId: req.requestId,
      interaction,
      now: req.now,
    });
    return { status: 204, headers: v ? { ETag: `W/"${v.versionId}"` } : {}, wrote: v !== undefined };
  }

  #page(
    req: RestRequest,
    path: string,
    canonical: URLSearchParams,
    count: number,
    offset: number,
    total: number,
  ): { relation: string; url: string }[] {
    const link = (o: number): string => {
      const p = new URLSearchParams(canonical);
      p.set('_count', String(count));
      if (o > 0) p.set('_offset', String(o));
      const qs = p.toString();
      return `${this.#o.baseUrl()}/${path}${qs ? `?${qs}` : ''}`;
    };
    const links = [{ relation: 'self', url: link(offset) }];
    if (count > 0 && offset + count < total) links.push({ relation: 'next', url: link(offset + count) });
    if (count > 0 && offset > 0) links.push({ relation: 'previous', url: link(Math.max(0, offset - count)) });
    void req;
    return links;
  }

  #search(req: RestRequest, type: string): RestResponse {
    const parsed = parseSearch(type, req.query, { strict: this.#o.profile.strictSearch });
    const lag = this.#o.visibilityLagMs?.(type, req.now) ?? 0;
    const count = parsed.summaryCount ? 0 : parsed.count;
    const result = this.#o.store.search(type, parsed.criteria, {
      now: req.now,
      visibilityLagMs: lag,
      offset: parsed.offset,
      count,
    });
    if (result.hiddenByLag > 0) this.#o.onLagHit?.(type, result.hiddenByLag);
    const body = {
      resourceType: 'Bundle',
      id: randomUUID(),
      meta: { lastUpdated: new Date(req.now).toISOString() },
      type: 'searchset',
      total: result.total,
      link: this.#page(req, type, parsed.canonical, count, parsed.offset, result.total),
      // FHIR JSON forbids empty arrays: no matches means no `entry` at all.
      ...(result.matches.length > 0
        ? { entry: result.matches.map((v) => ({ fullUrl: this.#url(v), resource: v.resource, search: { mode: 'match' } })) }
        : {}),
    };
    return { status: 200, body, wrote: false };
  }

  #history(req: RestRequest, route: Route): RestResponse {
    const type = route.resourceType as string;
    const all = this.#o.store.history(type, route.id);
    const parsed = parseSearch(type, new URLSearchParams(), { strict: false });
    const count = Math.min(
      req.query.has('_count') ? Number(req.query.get('_count')) || parsed.count : parsed.count,
      1000,
    );
    const offset = Number(req.query.get('_offset') ?? 0) || 0;
    const page = all.slice(offset, offset + count);
    const path = route.id === undefined ? `${type}/_history` : `${type}/${route.id}/_history`;
    return {
      status: 200,
      wrote: false,
      body: {
        resourceType: 'Bundle',
        id: randomUUID(),
        type: 'history',
        total: all.length,
        link: this.#page(req, path, new URLSearchParams(), count, offset, all.length),
        ...(page.length === 0 ? {} : { entry: page.map((v) => ({
          fullUrl: this.#url(v),
          ...(v.resource ? { resource: v.resource } : {}),
          request: {
            method: v.method,
            url: v.method === 'POST' ? v.resourceType : `${v.resourceType}/${v.id}`,
          },
          response: {
            status: v.method === 'DELETE' ? '204' : v.versionId === '1' ? '201' : '200',
            etag: `W/"${v.versionId}"`,
            lastModified: new Date(v.lastUpdated).toISOString(),
          },
        })) }),
      },
    };
  }

  /** Routes of a Bundle's entries, for scope checks before execution. */
  static entryRoutes(body: unknown): Route[] {
    const entries = (body as { entry?: unknown[] } | undefined)?.entry;
    if (!Array.isArray(entries)) return [];
    return entries.map((e) => {
      const request = (e as { request?: { method?: unknown; url?: unknown } }).request;
      const url = typeof request?.url === 'string' ? request.url.split('?')[0] ?? '' : '';
      const method = typeof request?.method === 'string' ? request.method.toUpperCase() : '';
      try {
        return resolveRoute(method, url);
      } catch {
        // Invalid entries are reported by the bundle processing itself.
        return { interaction: Interaction.Read, resourceType: undefined };
      }
    });
  }

  #bundle(req: RestRequest): RestResponse {
    const bundle = req.body as { resourceType?: unknown; type?: unknown; entry?: unknown } | undefined;
    if (!bundle || typeof bundle !== 'object' || bundle.resourceType !== 'Bundle') {
      throw new TetherError('FHIR_INVALID_BUNDLE', 'POST to the base needs a Bundle.');
    }
    if (bundle.type !== 'batch' && bundle.type !== 'transaction') {
      throw new TetherError('FHIR_INVALID_BUNDLE', 'Bundle.type must be batch or transaction.');
    }
    const entries = bundle.entry === undefined ? [] : bundle.entry;
    if (!Array.isArray(entries)) throw new TetherError('FHIR_INVALID_BUNDLE', 'Bundle.entry must be an array.');
    const parsed = entries.map((e, i) => parseEntry(e, i));
    if (bundle.type === 'batch') return this.#batch(req, parsed);
    return this.#transaction(req, parsed);
  }

  #entryRequest(req: RestRequest, e: ParsedEntry, body: unknown): RestRequest {
    return {
      method: e.method,
      path: e.path,
      query: e.query,
      headers: { ifMatch: e.ifMatch, ifNoneExist: e.ifNoneExist, prefer: 'return=representation' },
      body,
      requestId: req.requestId,
      now: req.now,
    };
  }

  #runEntry(req: RestRequest, e: ParsedEntry, interaction: string, body: unknown, presetId?: string): RestResponse & { version?: VersionRecord } {
    const route = resolveRoute(e.method, e.path);
    const r = this.#entryRequest(req, e, body);
    switch (route.interaction) {
      case Interaction.Create:
        return this.#create(r, route.resourceType as string, interaction, presetId);
      case Interaction.Update:
        return this.#update(r, route, interaction);
      case Interaction.Delete:
        return this.#delete(r, route, interaction);
      case Interaction.Read:
      case Interaction.Vread:
      case Interaction.SearchType:
      case Interaction.HistoryInstance:
      case Interaction.HistoryType:
        return this.execute(r, route);
      case Interaction.Batch:
      case Interaction.Transaction:
      case Interaction.Capabilities:
        throw new TetherError('FHIR_INVALID_BUNDLE', 'A Bundle entry cannot be a nested batch, transaction or metadata.');
    }
  }

  #batch(req: RestRequest, entries: ParsedEntry[]): RestResponse {
    let wrote = false;
    const out = entries.map((e) => {
      try {
        const r = this.#o.store.atomic(() => this.#runEntry(req, e, Interaction.Batch, e.resource));
        wrote ||= r.wrote;
        return { ...(r.body !== undefined ? { resource: r.body } : {}), response: entryResponse(r) };
      } catch (err) {
        const te = toTetherError(err);
        return { response: { status: String(te.httpStatus), outcome: operationOutcome(te.code, te.message) } };
      }
    });
    return { status: 200, wrote, body: { resourceType: 'Bundle', id: randomUUID(), type: 'batch-response', entry: out } };
  }

  #transaction(req: RestRequest, entries: ParsedEntry[]): RestResponse {
    assertDistinctIdentities(entries);
    // FHIR processing order: DELETE, POST, PUT/PATCH, GET/HEAD; responses keep the request order.
    const rank: Record<string, number> = { DELETE: 0, POST: 1, PUT: 2, PATCH: 2, GET: 3, HEAD: 3 };
    const order = entries.map((_, i) => i).sort((a, b) => (rank[entries[a]?.method ?? ''] ?? 9) - (rank[entries[b]?.method ?? ''] ?? 9));
    const results: (RestResponse & { version?: VersionRecord })[] = new Array(entries.length);
    let wrote = false;
    let current = -1;
    try {
      this.#o.store.atomic(() => {
        const deletes = order.filter((i) => entries[i]?.method === 'DELETE');
        const rest = order.filter((i) => entries[i]?.method !== 'DELETE');
        for (const i of deletes) {
          current = i;
          results[i] = this.#runEntry(req, entries[i] as ParsedEntry, Interaction.Transaction, undefined);
          wrote ||= (results[i] as RestResponse).wrote;
        }
        // Decide every POST's identity before anything references it, so the outcome does not depend on entry
        // order (R4 http.html#trules): a conditional create that matches maps its fullUrl to the existing
        // resource; every other POST gets its server id now.
        const idMap = new Map<string, string>();
        const presetIds = new Map<number, string>();
        for (const i of rest) {
          const e = entries[i] as ParsedEntry;
          if (e.method !== 'POST') continue;
          current = i;
          const type = e.path.split('/')[0] ?? '';
          let target: string | undefined;
          if (e.ifNoneExist !== undefined && this.#o.profile.conditionalCreate) {
            const matches = this.#conditionalMatches(type, e.ifNoneExist);
            if (matches.length > 1) throw new TetherError('FHIR_MULTIPLE_MATCHES', 'If-None-Exist matched more than one resource.');
            const hit = matches[0];
            if (hit) target = `${hit.resourceType}/${hit.id}`;
          }
          if (target === undefined) {
            const id = randomUUID();
            presetIds.set(i, id);
            target = `${type}/${id}`;
          }
          if (e.fullUrl) idMap.set(e.fullUrl, target);
        }
        for (const i of rest) {
          const e = entries[i] as ParsedEntry;
          current = i;
          const body = e.resource === undefined ? undefined : this.#resolveLinks(e.resource, idMap);
          results[i] = this.#runEntry(req, e, Interaction.Transaction, body, presetIds.get(i));
          wrote ||= (results[i] as RestResponse).wrote;
        }
      });
    } catch (err) {
      const te = toTetherError(err);
      throw new TetherError(
        te.code === 'INTERNAL' ? 'INTERNAL' : 'FHIR_TRANSACTION_FAILED',
        `Transaction entry ${current} failed (${te.code}): ${te.message} Nothing was applied.`,
        { cause: te, details: { entry: current, entryCode: te.code, entryStatus: te.httpStatus } },
      );
    }
    return {
      status: 200,
      wrote,
      body: {
        resourceType: 'Bundle',
        id: randomUUID(),
        type: 'transaction-response',
        entry: results.map((r) => ({ ...(r.body !== undefined ? { resource: r.body } : {}), response: entryResponse(r) })),
      },
    };
  }

  /**
   * Replaces, in a transaction entry's resource, every link to another entry's `fullUrl` (references, uri/url
   * elements, and occurrences inside narrative) with the server's `Type/id`, and resolves conditional references
   * (`Patient?identifier=...`) to the one resource they match (R4 http.html#trules). A conditional reference that
   * matches no resource or several fails the transaction with 412.
   */
  #resolveLinks(value: unknown, idMap: ReadonlyMap<string, string>): unknown {
    if (typeof value === 'string') return idMap.get(value) ?? value;
    if (value === null || typeof value !== 'object') return value;
    if (Array.isArray(value)) return value.map((v) => this.#resolveLinks(v, idMap));
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      if (k === 'reference' && typeof v === 'string' && !idMap.has(v) && CONDITIONAL_REFERENCE.test(v)) {
        const [type = '', query = ''] = v.split('?', 2);
        const matches = this.#conditionalMatches(type, query);
        if (matches.length !== 1) {
          throw new TetherError(
            matches.length === 0 ? 'FHIR_NOT_FOUND' : 'FHIR_MULTIPLE_MATCHES',
            `A conditional reference to ${type} matched ${matches.length === 0 ? 'no' : 'more than one'} resource.`,
          );
        }
        out[k] = `${type}/${(matches[0] as VersionRecord).id}`;
      } else if (k === 'div' && typeof v === 'string') {
        let div = v;
        for (const [from, to] of idMap) div = div.split(from).join(to);
        out[k] = div;
      } else {
        out[k] = this.#resolveLinks(v, idMap);
      }
    }
    return out;
  }
}

interface ParsedEntry {
  readonly method: string;
  readonly path: string;
  readonly query: URLSearchParams;
  readonly fullUrl: string | undefined;
  readonly resource: unknown;
  readonly ifMatch: string | undefined;
  readonly ifNoneExist: string | undefined;
}

function parseEntry(raw: unknown, i: number): ParsedEntry {
  const e = raw as {
    fullUrl?: unknown;
    resource?: unknown;
    request?: { method?: unknown; url?: unknown; ifMatch?: unknown; ifNoneExist?: unknown };
  };
  const method = e?.request?.method;
  const url = e?.request?.url;
  if (typeof method !== 'string' || typeof url !== 'string') {
    throw new TetherError('FHIR_INVALID_BUNDLE', `Bundle entry ${i} needs request.method and request.url.`);
  }
  const [path = '', qs = ''] = url.split('?', 2);
  const upper = method.toUpperCase();
  if (!['GET', 'POST', 'PUT', 'DELETE'].includes(upper)) {
    throw new TetherError('FHIR_INVALID_BUNDLE', `Bundle entry ${i} has an unsupported method.`);
  }
  if ((upper === 'POST' || upper === 'PUT') && (typeof e.resource !== 'object' || e.resource === null)) {
    throw new TetherError('FHIR_INVALID_BUNDLE', `Bundle entry ${i} needs a resource.`);
  }
  return {
    method: upper,
    path: path.replace(/^\//, ''),
    query: new URLSearchParams(qs),
    fullUrl: typeof e.fullUrl === 'string' ? e.fullUrl : undefined,
    resource: e.resource,
    ifMatch: typeof e.request?.ifMatch === 'string' ? e.request.ifMatch : undefined,
    ifNoneExist: typeof e.request?.ifNoneExist === 'string' ? e.request.ifNoneExist : undefined,
  };
}

function entryResponse(r: RestResponse): Record<string, string> {
  const h = r.headers ?? {};
  return {
    status: String(r.status),
    ...(h['Location'] ? { location: h['Location'] } : {}),
    ...(h['ETag'] ? { etag: h['ETag'] } : {}),
    ...(r.lastUpdated !== undefined ? { lastModified: new Date(r.lastUpdated).toISOString() } : {}),
  };
}

function toTetherError(err: unknown): TetherError {
  return err instanceof TetherError ? err : new TetherError('INTERNAL', undefined, { cause: err });
}

