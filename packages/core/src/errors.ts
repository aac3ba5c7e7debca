/**
 * Tether's error model.
 *
 * Every error Tether raises or returns carries a stable string `code` from {@link ERROR_CATALOGUE}, a `category`
 * (what kind of failure it is) and a `retryClass` (what a caller may safely do about it). Callers match on
 * `code`, never on the message: messages may change, codes never do (a retired code is never reused).
 *
 * `docs/errors.md` lists every code; `errors.test.ts` fails when the two disagree.
 */

/** What a caller may do about a failure. */
export const RetryClass = {
  /** Nothing was applied, or repeating the request is safe: retry with backoff. */
  Transient: 'transient',
  /** The outcome is unknown (the request may have been applied): verify before any retry. */
  Ambiguous: 'ambiguous',
  /** Retrying cannot help: fix the input, the configuration or the permissions first. */
  Permanent: 'permanent',
} as const;
export type RetryClass = (typeof RetryClass)[keyof typeof RetryClass];

/** The kind of failure, used for metrics labels, dashboards and routing to the exception queue. */
export const ErrorCategory = {
  Auth: 'auth',
  ForbiddenScope: 'forbidden-scope',
  Validation: 'validation',
  NotFound: 'not-found',
  Conflict: 'conflict',
  PreconditionFailed: 'precondition-failed',
  RateLimited: 'rate-limited',
  Transient: 'transient',
  Ambiguous: 'ambiguous',
  Config: 'config',
  Internal: 'internal',
} as const;
export type ErrorCategory = (typeof ErrorCategory)[keyof typeof ErrorCategory];

/** One entry of the catalogue: the facts that do not depend on the individual occurrence. */
export interface ErrorSpec {
  readonly category: ErrorCategory;
  readonly retryClass: RetryClass;
  /** HTTP status used when the error is answered on an HTTP surface. */
  readonly httpStatus: number;
  /** FHIR OperationOutcome `issue.code` used when the error is answered as an OperationOutcome. */
  readonly issueCode: string;
  /** One line for the catalogue; never contains data from the occurrence. */
  readonly summary: string;
}

const spec = (
  category: ErrorCategory,
  retryClass: RetryClass,
  httpStatus: number,
  issueCode: string,
  summary: string,
): ErrorSpec => ({ category, retryClass, httpStatus, issueCode, summary });

const P = RetryClass.Permanent;
const T = RetryClass.Transient;
const C = ErrorCategory;

/**
 * Every error code Tether uses. Keys are the stable codes.
 * Prefixes: `FHIR_` answers of the sandbox FHIR server, `AUTH_` authorization, `FAULT_` injected faults,
 * `CONFIG_` configuration and startup.
 */
export const ERROR_CATALOGUE = {
  // Sandbox FHIR server: bad requests (never a 500, never a partial write).
  FHIR_INVALID_JSON: spec(C.Validation, P, 400, 'structure', 'The request body is not valid JSON.'),
  FHIR_UNSUPPORTED_MEDIA_TYPE: spec(C.Validation, P, 415, 'not-supported', 'The request body is not application/fhir+json or application/json.'),
  FHIR_NOT_ACCEPTABLE: spec(C.Validation, P, 406, 'not-supported', 'The client does not accept JSON; only JSON is served.'),
  FHIR_BODY_TOO_LARGE: spec(C.Validation, P, 413, 'too-costly', 'The request body exceeds the configured size limit.'),
  FHIR_UNKNOWN_RESOURCE_TYPE: spec(C.Validation, P, 404, 'not-supported', 'The URL names a resource type this server does not know.'),
  FHIR_RESOURCE_TYPE_MISMATCH: spec(C.Validation, P, 400, 'invalid', 'The resourceType in the body differs from the one in the URL.'),
  FHIR_ID_MISMATCH: spec(C.Validation, P, 400, 'invalid', 'The id in the body of an update differs from the id in the URL.'),
  FHIR_INVALID_RESOURCE: spec(C.Validation, P, 400, 'invalid', 'The resource failed structural validation.'),
  FHIR_INVALID_IF_MATCH: spec(C.Validation, P, 400, 'invalid', 'The If-Match header is not a version ETag such as W/"3".'),
  FHIR_IF_MATCH_REQUIRED: spec(C.PreconditionFailed, P, 412, 'conflict', 'This server profile requires If-Match on updates.'),
  FHIR_VERSION_CONFLICT: spec(C.PreconditionFailed, P, 412, 'conflict', 'If-Match names a version that is not the current one.'),
  FHIR_MULTIPLE_MATCHES: spec(C.PreconditionFailed, P, 412, 'multiple-matches', 'A conditional request matched more than one resource.'),
  FHIR_INVALID_SEARCH: spec(C.Validation, P, 400, 'invalid', 'A search parameter or its value is not valid.'),
  FHIR_UNKNOWN_SEARCH_PARAMETER: spec(C.Validation, P, 400, 'not-supported', 'A search parameter is not supported (strict search profile).'),
  FHIR_NOT_FOUND: spec(C.NotFound, P, 404, 'not-found', 'No resource exists with that type and id (or version).'),
  FHIR_GONE: spec(C.NotFound, P, 410, 'deleted', 'The resource was deleted.'),
  FHIR_METHOD_NOT_ALLOWED: spec(C.Validation, P, 405, 'not-supported', 'The HTTP method is not supported on this URL.'),
  FHIR_INVALID_BUNDLE: spec(C.Validation, P, 400, 'invalid', 'A batch or transaction Bundle is malformed.'),
  FHIR_TRANSACTION_FAILED: spec(C.Validation, P, 400, 'processing', 'An entry of a transaction failed, so none of it was applied.'),
  FHIR_ELEMENT_REJECTED: spec(C.Validation, P, 422, 'business-rule', 'The server rejects an element of the resource (schema drift).'),
  // Authorization.
  AUTH_TOKEN_MISSING: spec(C.Auth, T, 401, 'login', 'No bearer token was presented.'),
  AUTH_TOKEN_INVALID: spec(C.Auth, T, 401, 'login', 'The bearer token is unknown, expired or revoked.'),
  AUTH_INSUFFICIENT_SCOPE: spec(C.ForbiddenScope, P, 403, 'forbidden', 'The token has no scope that covers this interaction.'),
  // Injected faults (sandbox only).
  FAULT_INJECTED_ERROR: spec(C.Transient, T, 503, 'transient', 'An error response injected by the sandbox fault profile.'),
  FAULT_RATE_LIMITED: spec(C.RateLimited, T, 429, 'throttled', 'A 429 injected by the sandbox fault profile.'),
  FAULT_PROFILE_INVALID: spec(C.Config, P, 400, 'invalid', 'A fault profile does not match the schema.'),
  // EHR client (engine): every outcome of a call to an EHR, classified.
  EHR_REQUEST_INVALID: spec(C.Validation, P, 400, 'invalid', 'The EHR call itself is malformed (a bug in the caller), so it was not sent.'),
  EHR_SCOPE_MISSING: spec(C.ForbiddenScope, P, 403, 'forbidden', 'The tenant was not granted a scope this call needs; it was not sent.'),
  EHR_UNAUTHORIZED: spec(C.Auth, T, 401, 'login', 'The EHR rejected the token even after a refresh.'),
  EHR_FORBIDDEN: spec(C.ForbiddenScope, P, 403, 'forbidden', 'The EHR refused the call (403).'),
  EHR_VALIDATION: spec(C.Validation, P, 400, 'invalid', 'The EHR rejected the content (400 or 422).'),
  EHR_NOT_FOUND: spec(C.NotFound, P, 404, 'not-found', 'The EHR has no such resource (404 or 410).'),
  EHR_CONFLICT: spec(C.Conflict, P, 409, 'conflict', 'The EHR reported a conflict (409), e.g. a lock or a stale version.'),
  EHR_PRECONDITION_FAILED: spec(C.PreconditionFailed, P, 412, 'conflict', 'The EHR refused a conditional request (412): stale version or several matches.'),
  EHR_RATE_LIMITED: spec(C.RateLimited, T, 429, 'throttled', 'The EHR or the tenant rate limit says wait (429, Retry-After).'),
  EHR_UNAVAILABLE: spec(C.Transient, T, 503, 'transient', 'The EHR could not be reached or answered 5xx, and nothing was applied (or the call was a read).'),
  EHR_TIMEOUT: spec(C.Transient, T, 504, 'timeout', 'A read timed out (connect, headers, body or deadline).'),
  EHR_CIRCUIT_OPEN: spec(C.Transient, T, 503, 'transient', 'The circuit breaker for this tenant and EHR is open; the call was not sent.'),
  EHR_OUTCOME_UNKNOWN: spec(C.Ambiguous, RetryClass.Ambiguous, 502, 'incomplete', 'A write was sent but its outcome is unknown (timeout, reset, 5xx after send): verify before any retry.'),
  EHR_RESPONSE_INVALID: spec(C.Transient, T, 502, 'structure', 'The EHR answered something that is not the expected FHIR JSON.'),
  // Auth broker (engine).
  AUTH_DISCOVERY_FAILED: spec(C.Auth, T, 502, 'transient', 'The SMART configuration or CapabilityStatement could not be read.'),
  AUTH_TOKEN_REQUEST_FAILED: spec(C.Auth, T, 502, 'transient', 'The token endpoint could not be reached or answered 5xx; backing off.'),
  AUTH_GRANT_INVALID: spec(C.Auth, P, 401, 'security', 'The token endpoint refused the credentials or grant (invalid_grant, invalid_client, revoked): the tenant is paused until an operator acts.'),
  AUTH_TENANT_PAUSED: spec(C.Auth, P, 401, 'suppressed', 'The tenant is paused (auth_paused or disabled); no EHR call is made until an operator resumes it.'),
  // Tenants and secrets (engine).
  TENANT_NOT_FOUND: spec(C.NotFound, P, 404, 'not-found', 'No tenant has that id.'),
  TENANT_EXISTS: spec(C.Conflict, P, 409, 'duplicate', 'A tenant with that id exists already.'),
  CRYPTO_MASTER_KEY_MISSING: spec(C.Config, P, 500, 'security', 'TETHER_MASTER_KEY is missing or malformed (required in production mode).'),
  CRYPTO_DECRYPT_FAILED: spec(C.Internal, P, 500, 'security', 'A stored secret could not be decrypted (wrong master key or tampered data).'),
  // Store (engine).
  STORE_UNAVAILABLE: spec(C.Transient, T, 503, 'transient', 'The database could not be reached or timed out.'),
  STORE_MIGRATION_FAILED: spec(C.Config, P, 500, 'exception', 'A schema migration failed; the store refuses to start.'),
  AUDIT_LOG_DAMAGED: spec(C.Internal, P, 500, 'exception', 'The audit log cannot be appended to (its head row is missing): nothing was recorded; run `tether audit verify`.'),
  // Write-back commands (engine).
  COMMAND_INVALID: spec(C.Validation, P, 400, 'invalid', 'A command does not match the command schema (the message names the field, never its value).'),
  COMMAND_NOT_FOUND: spec(C.NotFound, P, 404, 'not-found', 'No command has that id.'),
  COMMAND_NOT_RETRYABLE: spec(C.Conflict, P, 409, 'business-rule', "The operator action is not allowed in the command's current state."),
  COMMAND_STATE_CONFLICT: spec(C.Conflict, T, 409, 'conflict', 'The command changed concurrently (version mismatch); re-read it and try again.'),
  IDEMPOTENCY_KEY_REUSED: spec(C.Validation, P, 422, 'business-rule', 'The idempotency key was already used for a different payload.'),
  IDEMPOTENCY_KEY_IN_PROGRESS: spec(C.Conflict, T, 409, 'conflict', 'A request with this idempotency key is still being accepted; retry shortly.'),
  // Service state.
  SERVICE_UNAVAILABLE: spec(C.Transient, T, 503, 'transient', 'The service is starting or stopping; retry shortly.'),
  // Configuration and startup.
  CONFIG_INVALID: spec(C.Config, P, 400, 'invalid', 'An options object or configuration file is not valid.'),
  CONFIG_UNSAFE: spec(C.Config, P, 500, 'security', 'Production mode refused to start: no master key, an embedded sandbox or sandbox tenant, a plain-HTTP EHR URL, or no API auth setting.'),
  // HTTP API (engine).
  API_UNAUTHENTICATED: spec(C.Auth, P, 401, 'login', 'The request has no valid API key (Authorization: Bearer <key>), or the key was revoked.'),
  API_FORBIDDEN: spec(C.ForbiddenScope, P, 403, 'forbidden', "The API key's role or tenant scope does not allow this request."),
  API_NOT_FOUND: spec(C.NotFound, P, 404, 'not-found', 'No API route matches the method and path.'),
  REQUEST_INVALID: spec(C.Validation, P, 400, 'invalid', 'The request is malformed (JSON syntax, query or path parameters, headers); the message names the part.'),
  REQUEST_TOO_LARGE: spec(C.Validation, P, 413, 'too-long', 'The request body is larger than the configured limit.'),
  UNSUPPORTED_MEDIA_TYPE: spec(C.Validation, P, 415, 'not-supported', 'The request body is not application/json (or application/fhir+json).'),
  INTERNAL: spec(C.Internal, T, 500, 'exception', 'An unexpected internal error; the details are in the log (without PHI).'),
} as const satisfies Record<string, ErrorSpec>;

export type ErrorCode = keyof typeof ERROR_CATALOGUE;

/** All codes, for the catalogue test and documentation generators. */
export const ERROR_CODES: readonly ErrorCode[] = Object.freeze(Object.keys(ERROR_CATALOGUE) as ErrorCode[]);

const TETHER_ERROR = Symbol.for('tether.error');

/**
 * The base class of every error Tether raises. `instanceof` works across duplicate copies of the package
 * (it checks a `Symbol.for` brand), but prefer matching on {@link TetherError.code}.
 *
 * Messages must never contain PHI: say which field is wrong, never what it holds.
 */
export class TetherError extends Error {
  readonly code: ErrorCode;
  readonly category: ErrorCategory;
  readonly retryClass: RetryClass;
  readonly httpStatus: number;
  /** Extra machine-readable facts (no PHI): e.g. the scope that was missing, a Retry-After in seconds. */
  readonly details: Readonly<Record<string, unknown>>;

  constructor(code: ErrorCode, message?: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
    const entry = ERROR_CATALOGUE[code];
    super(message ?? entry.summary, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'TetherError';
    this.code = code;
    this.category = entry.category;
    this.retryClass = entry.retryClass;
    this.httpStatus = entry.httpStatus;
    this.details = Object.freeze({ ...(options?.details ?? {}) });
    Object.defineProperty(this, TETHER_ERROR, { value: true });
  }

  static override [Symbol.hasInstance](value: unknown): boolean {
    return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[TETHER_ERROR] === true;
  }
}

/** Type guard that works across package copies. */
export const isTetherError = (e: unknown): e is TetherError => e instanceof TetherError;

/** Looks up the catalogue entry of a code. */
export const errorSpec = (code: ErrorCode): ErrorSpec => ERROR_CATALOGUE[code];
