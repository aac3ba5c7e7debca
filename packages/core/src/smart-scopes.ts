/**
 * SMART on FHIR scope parsing and checking (pure, no I/O).
 *
 * Understands both dialects, because EHRs in the field mix them:
 * - SMART v1 (App Launch 1.0): `patient/Observation.read`, `user/*.write`, `system/Patient.*`;
 * - SMART v2 (App Launch 2.x): `system/Observation.cruds`, `patient/*.rs`, with optional query restrictions
 *   (`patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory`).
 *
 * Malformed scopes never throw: an EHR that grants a scope string we do not understand must not take the
 * engine down. They are returned as `kind: 'malformed'` so callers can log them, and they grant nothing.
 *
 * @see https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html
 */

/** Who the access is for: one patient's compartment, what the signed-in user may see, or a backend system. */
export const SmartContext = {
  Patient: 'patient',
  User: 'user',
  System: 'system',
} as const;
export type SmartContext = (typeof SmartContext)[keyof typeof SmartContext];

/** The FHIR RESTful interactions a scope is checked against (names as in the FHIR RESTful API). */
export const ScopedInteraction = {
  Read: 'read',
  Vread: 'vread',
  SearchType: 'search-type',
  HistoryInstance: 'history-instance',
  HistoryType: 'history-type',
  Create: 'create',
  Update: 'update',
  Delete: 'delete',
} as const;
export type ScopedInteraction = (typeof ScopedInteraction)[keyof typeof ScopedInteraction];

/** SMART v2 permission letters: create, read, update, delete, search. */
export type ScopePermission = 'c' | 'r' | 'u' | 'd' | 's';

/** One query restriction of a v2 scope (`?category=...|laboratory`), kept verbatim after URL decoding. */
export interface ScopeRestriction {
  readonly name: string;
  readonly value: string;
}

/** A `context/ResourceType.permissions` scope. */
export interface ResourceScope {
  readonly kind: 'resource';
  /** The scope exactly as granted. */
  readonly raw: string;
  readonly context: SmartContext;
  /** A FHIR resource type, or `*` for every type. */
  readonly resourceType: string;
  /** 1 for `.read` / `.write` / `.*`, 2 for `.cruds`-style letters. */
  readonly version: 1 | 2;
  /** Normalised permissions: v1 `read` = `r`+`s`, `write` = `c`+`u`+`d`, `*` = all five. */
  readonly permissions: ReadonlySet<ScopePermission>;
  /** v2 query restrictions; empty when the scope is unrestricted. */
  readonly restrictions: readonly ScopeRestriction[];
}

/** `launch`, `launch/patient`, `launch/encounter`: requests launch context, grants no data access. */
export interface LaunchScope {
  readonly kind: 'launch';
  readonly raw: string;
  /** `undefined` for the bare `launch` scope (EHR launch). */
  readonly launchContext: string | undefined;
}

/** `openid`, `fhirUser`, `profile`, `offline_access`, `online_access` and any scope SMART does not define. */
export interface OtherScope {
  readonly kind: 'identity' | 'access' | 'other';
  readonly raw: string;
}

/** A scope that looks like a SMART resource scope (`patient/`, `user/`, `system/`) but does not parse. */
export interface MalformedScope {
  readonly kind: 'malformed';
  readonly raw: string;
  /** Why it was rejected (no PHI: scopes are configuration, never patient data). */
  readonly reason: string;
}

export type ParsedScope = ResourceScope | LaunchScope | OtherScope | MalformedScope;

/** What {@link scopesAllow} is asked about. */
export interface ScopeRequest {
  readonly resourceType: string;
  readonly interaction: ScopedInteraction;
  /** Only scopes of this context count. Omitted: any context counts, broadest first (system, user, patient). */
  readonly context?: SmartContext;
  /**
   * Search parameters of a `search-type` request, used to honour v2 query restrictions: a restricted scope
   * allows a search only when every restriction appears here with exactly the same value.
   */
  readonly searchParams?: Readonly<Record<string, string>> | URLSearchParams;
}

/** The answer of {@link scopesAllow}. */
export type ScopeDecision =
  | { readonly allowed: true; /** The scope that grants the interaction. */ readonly grantedBy: ResourceScope }
  | {
      readonly allowed: false;
      /** The narrowest scope that would allow the request, in the dialect of the given scopes (a hint for errors). */
      readonly required: string;
    };

const CONTEXTS: ReadonlySet<string> = new Set<string>(Object.values(SmartContext));
/** Broadest first: when several contexts allow a request, prefer the one that needs no compartment filter. */
const CONTEXT_PREFERENCE: readonly SmartContext[] = ['system', 'user', 'patient'];
const IDENTITY_SCOPES: ReadonlySet<string> = new Set(['openid', 'fhirUser', 'profile']);
const ACCESS_SCOPES: ReadonlySet<string> = new Set(['offline_access', 'online_access']);
const ALL_PERMISSIONS: readonly ScopePermission[] = ['c', 'r', 'u', 'd', 's'];
/** FHIR resource type names: an upper-case letter followed by letters (R4 has no digits in type names). */
const RESOURCE_TYPE = /^[A-Z][A-Za-z]{0,63}$/;
/** v2 letters, in the mandated order, each at most once; the lookahead rejects the empty string. */
const V2_PERMISSIONS = /^(?=[cruds])c?r?u?d?s?$/;

/** Which v2 letter each interaction needs. v1 `read` maps to `r`+`s`, so it covers reads, searches and history. */
const INTERACTION_PERMISSION: Readonly<Record<ScopedInteraction, ScopePermission>> = {
  read: 'r',
  vread: 'r',
  'history-instance': 'r',
  'search-type': 's',
  'history-type': 's',
  create: 'c',
  update: 'u',
  delete: 'd',
};

const V1_PERMISSIONS: Readonly<Record<string, readonly ScopePermission[]>> = {
  read: ['r', 's'],
  write: ['c', 'u', 'd'],
  '*': ALL_PERMISSIONS,
};

/**
 * Parses one scope token. Never throws: scopes that look like resource scopes but do not parse come back as
 * `kind: 'malformed'`.
 */
export function parseScope(raw: string): ParsedScope {
  if (raw === 'launch') return { kind: 'launch', raw, launchContext: undefined };
  if (raw.startsWith('launch/')) {
    const launchContext = raw.slice('launch/'.length);
    return /^[a-z][a-zA-Z]*$/.test(launchContext)
      ? { kind: 'launch', raw, launchContext }
      : { kind: 'malformed', raw, reason: 'launch context must be a lower-case word such as launch/patient' };
  }
  if (IDENTITY_SCOPES.has(raw)) return { kind: 'identity', raw };
  if (ACCESS_SCOPES.has(raw)) return { kind: 'access', raw };

  const slash = raw.indexOf('/');
  const context = slash === -1 ? '' : raw.slice(0, slash);
  if (!CONTEXTS.has(context)) return { kind: 'other', raw };
  return parseResourceScope(raw, context as SmartContext, raw.slice(slash + 1));
}

function parseResourceScope(raw: string, context: SmartContext, rest: string): ResourceScope | MalformedScope {
  const malformed = (reason: string): MalformedScope => ({ kind: 'malformed', raw, reason });
  const question = rest.indexOf('?');
  const body = question === -1 ? rest : rest.slice(0, question);
  const query = question === -1 ? undefined : rest.slice(question + 1);

  const dot = body.lastIndexOf('.');
  if (dot === -1) return malformed('missing ".permissions" after the resource type');
  const resourceType = body.slice(0, dot);
  const permissionText = body.slice(dot + 1);
  if (resourceType !== '*' && !RESOURCE_TYPE.test(resourceType)) return malformed('resource type is not a FHIR type name or *');

  const v1 = V1_PERMISSIONS[permissionText];
  if (v1 !== undefined) {
    // Query restrictions only exist in v2; a v1 scope carrying one is something we cannot interpret safely.
    if (query !== undefined) return malformed('query restrictions are only defined for SMART v2 permissions');
    return { kind: 'resource', raw, context, resourceType, version: 1, permissions: new Set(v1), restrictions: [] };
  }
  if (!V2_PERMISSIONS.test(permissionText)) {
    return malformed('permissions must be read, write, * or SMART v2 letters in the order c r u d s');
  }

  const restrictions: ScopeRestriction[] = [];
  if (query !== undefined) {
    if (query === '') return malformed('empty query restriction');
    for (const [name, value] of new URLSearchParams(query)) {
      if (name === '') return malformed('query restriction without a parameter name');
      restrictions.push({ name, value });
    }
  }
  const permissions = new Set([...permissionText] as ScopePermission[]);
  return { kind: 'resource', raw, context, resourceType, version: 2, permissions, restrictions };
}

/**
 * Parses a space-separated scope string (as found in a token response or a client registration).
 * Duplicates are dropped; order is kept. Never throws.
 */
export function parseScopes(scope: string | undefined): ParsedScope[] {
  if (scope === undefined) return [];
  const seen = new Set<string>();
  const parsed: ParsedScope[] = [];
  for (const token of scope.split(/\s+/)) {
    if (token === '' || seen.has(token)) continue;
    seen.add(token);
    parsed.push(parseScope(token));
  }
  return parsed;
}

function restrictionsSatisfied(scope: ResourceScope, request: ScopeRequest): boolean {
  if (scope.restrictions.length === 0) return true;
  // Conservative: a restricted scope can only be checked against a search's parameters. For reads and writes
  // we would have to evaluate the restriction against the resource itself, so we do not let it grant them.
  if (request.interaction !== 'search-type' || request.searchParams === undefined) return false;
  const params = request.searchParams;
  const get = (name: string): string | undefined =>
    params instanceof URLSearchParams ? (params.get(name) ?? undefined) : params[name];
  return scope.restrictions.every((r) => get(r.name) === r.value);
}

function resourceScopes(scopes: readonly ParsedScope[] | string): ResourceScope[] {
  const parsed = typeof scopes === 'string' ? parseScopes(scopes) : scopes;
  return parsed.filter((s): s is ResourceScope => s.kind === 'resource');
}

/**
 * Decides whether the granted scopes allow one interaction on one resource type.
 *
 * @param scopes - parsed scopes (from {@link parseScopes}) or a raw scope string.
 * @param request - the resource type, interaction and optionally the context that must grant it.
 * @returns `{ allowed: true, grantedBy }` with the granting scope (its `context` tells the caller whether a
 *   patient-compartment filter applies), or `{ allowed: false, required }` with a hint such as
 *   `system/Observation.c` for a "missing scope" error.
 */
export function scopesAllow(scopes: readonly ParsedScope[] | string, request: ScopeRequest): ScopeDecision {
  const candidates = resourceScopes(scopes);
  const needed = INTERACTION_PERMISSION[request.interaction];
  const contexts = request.context === undefined ? CONTEXT_PREFERENCE : [request.context];
  for (const context of contexts) {
    const grantedBy = candidates.find(
      (s) =>
        s.context === context &&
        (s.resourceType === '*' || s.resourceType === request.resourceType) &&
        s.permissions.has(needed) &&
        restrictionsSatisfied(s, request),
    );
    if (grantedBy !== undefined) return { allowed: true, grantedBy };
  }
  const hintContext = request.context ?? CONTEXT_PREFERENCE.find((c) => candidates.some((s) => s.context === c)) ?? 'system';
  // Answer in the dialect the EHR speaks: if every resource scope granted is v1, a v2 hint would confuse.
  const version = candidates.length > 0 && candidates.every((s) => s.version === 1) ? 1 : 2;
  return { allowed: false, required: requiredScopeFor(request.resourceType, request.interaction, hintContext, version) };
}

/**
 * The narrowest scope that grants an interaction, e.g. `requiredScopeFor('Observation', 'create')` is
 * `system/Observation.c`; with `version` 1 it is `system/Observation.write`.
 *
 * @param context - defaults to `system` (backend services).
 * @param version - SMART scope dialect; defaults to 2.
 */
export function requiredScopeFor(
  resourceType: string,
  interaction: ScopedInteraction,
  context: SmartContext = 'system',
  version: 1 | 2 = 2,
): string {
  const letter = INTERACTION_PERMISSION[interaction];
  if (version === 2) return `${context}/${resourceType}.${letter}`;
  return `${context}/${resourceType}.${letter === 'r' || letter === 's' ? 'read' : 'write'}`;
}

/**
 * True when `requested` (one scope string) asks for nothing beyond what `allowed` grants: an authorization server
 * uses it to grant `system/Patient.rs` to a client registered with `system/*.cruds`, or `patient/Observation.read`
 * to one registered with `patient/Observation.rs`. Non-resource scopes (`openid`, `launch/patient`,
 * `offline_access`) are covered only by the same string. A requested scope with query restrictions is covered by
 * an unrestricted grant or by the identical restricted one.
 */
export function scopeCoveredBy(requested: string, allowed: readonly ParsedScope[] | string): boolean {
  const grants = typeof allowed === 'string' ? parseScopes(allowed) : allowed;
  const want = parseScope(requested);
  if (grants.some((g) => g.raw === requested)) return true;
  if (want.kind !== 'resource') return false;
  for (const letter of want.permissions) {
    const ok = grants.some(
      (g) =>
        g.kind === 'resource' &&
        g.context === want.context &&
        (g.resourceType === '*' || g.resourceType === want.resourceType) &&
        g.permissions.has(letter) &&
        (g.restrictions.length === 0 ||
          (g.restrictions.length === want.restrictions.length &&
            g.restrictions.every((r, i) => r.name === want.restrictions[i]?.name && r.value === want.restrictions[i]?.value))),
    );
    if (!ok) return false;
  }
  return want.permissions.size > 0;
}
