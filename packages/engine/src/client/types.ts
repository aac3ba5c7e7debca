/**
 * Public types of the EHR client's calls.
 */
import type { ErrorCategory, TetherError } from '@tether/core';
import type { Priority } from './concurrency.js';
import type { WriteOutcome } from './events.js';
import type { HttpMethod } from './interaction.js';
import type { RateLimit } from './options.js';

/**
 * Which EHR a call goes to, and the tenant's limits. Built from a `TenantRecord` (and later its vendor profile):
 * `{ tenantId: t.id, baseUrl: t.fhirBaseUrl }` is enough.
 */
export interface EhrTarget {
  /** The tenant (health system) id. Concurrency, rate limit and breaker state are kept per tenant. */
  readonly tenantId: string;
  /**
   * The FHIR base URL, e.g. `https://fhir.example.org/api/FHIR/R4`. http(s), no credentials, no query or fragment.
   * Credentials are only ever sent to this URL's origin.
   */
  readonly baseUrl: string;
  /** Requests in flight for this tenant. Default: the client's `concurrency`. */
  readonly concurrency?: number;
  /** The tenant's token bucket; `null` = no client-side limit. Default: the client's `rateLimit`. */
  readonly rateLimit?: RateLimit | null;
  /** 5xx statuses this vendor guarantees to mean "not applied" (see `writeNotAppliedStatuses`). Default: the client's. */
  readonly writeNotAppliedStatuses?: readonly number[];
}

/** Options of one call. */
export interface CallOptions {
  /** `interactive` (default) goes ahead of `batch` in the tenant's queue. */
  readonly priority?: Priority;
  /** Overall deadline of this call in milliseconds (queueing, waits, attempts, backoff). Default: `deadlineMs`. */
  readonly deadlineMs?: number;
  /** Sent as `X-Request-Id` and `X-Correlation-Id`. Default: a new UUID. Must not contain PHI. */
  readonly correlationId?: string;
  /** The caller's W3C `traceparent`: attempts become its children. Default: a new trace. */
  readonly traceparent?: string;
  /** Cancels the call. A write cancelled after sending is `unknown`. */
  readonly signal?: AbortSignal;
}

/** Options of a write. */
export interface WriteOptions extends CallOptions {
  /** `Prefer` header: `return=minimal`, `return=representation` or `return=OperationOutcome`. */
  readonly prefer?: 'return=minimal' | 'return=representation' | 'return=OperationOutcome';
}

/** A FHIR resource as JSON. */
export interface FhirResource {
  readonly resourceType: string;
  readonly id?: string;
  readonly [key: string]: unknown;
}

/** A FHIR Bundle as JSON (the parts the client looks at). */
export interface FhirBundle extends FhirResource {
  readonly resourceType: 'Bundle';
  readonly type?: string;
  readonly link?: readonly { readonly relation?: string; readonly url?: string }[];
  readonly entry?: readonly Record<string, unknown>[];
}

/**
 * Search parameters. Repeated names are repeated parameters (AND); a comma inside one value is OR, as in FHIR.
 * Values are sent, never logged.
 */
export type SearchParams =
  | URLSearchParams
  | Readonly<Record<string, string | number | boolean | readonly (string | number | boolean)[]>>
  | readonly (readonly [string, string])[];

/** The answer of a successful read or search. */
export interface EhrResponse<T extends FhirResource = FhirResource> {
  readonly status: number;
  readonly body: T;
  /** Response headers, lower-case names; repeated headers joined with `, `. */
  readonly headers: Readonly<Record<string, string>>;
  /** Requests sent (1 unless retried or refreshed after a 401). */
  readonly attempts: number;
  /** The correlation id the request carried (for a coalesced GET: the first caller's). */
  readonly correlationId: string;
  readonly traceId: string;
}

/** The headers of a write's answer that the write-back layer needs. */
export interface WriteHeaders {
  readonly location?: string;
  readonly etag?: string;
  readonly lastModified?: string;
  readonly retryAfter?: string;
}

/**
 * The classified outcome of a write. Writes never throw for anything the network or the EHR does (only for a
 * malformed call: `EHR_REQUEST_INVALID`); the outcome says what the write-back layer may do next.
 *
 * | outcome | meaning | next step |
 * |---|---|---|
 * | `applied` | 2xx: the EHR applied it | verify (read back) |
 * | `not_sent` | nothing was applied (no byte left, or a refusal that proves it) | retry later is safe |
 * | `rejected` | 4xx: the EHR refused it; see `category` | fix, or exception queue |
 * | `rate_limited` | 429: not applied | retry after `retryAfterMs` |
 * | `unknown` | sent, outcome unknown (timeout, reset, 5xx) | reconcile by reading the EHR; never resend blindly |
 */
export interface WriteResult {
  readonly outcome: WriteOutcome;
  /** HTTP status when there was a response. */
  readonly status?: number;
  /** The parsed JSON answer (resource, Bundle or OperationOutcome) when there was one. */
  readonly body?: Record<string, unknown>;
  readonly headers: WriteHeaders;
  /** For `rejected` (and every failure): `validation`, `not-found`, `conflict`, `precondition-failed`, `forbidden-scope`, `auth`, ... */
  readonly category?: ErrorCategory;
  /** For `rate_limited` (and refusals because of a rate limit or an open circuit): how long to wait, in ms. */
  readonly retryAfterMs?: number;
  /** Set for every outcome but a clean `applied`; `retryClass` says what a caller may do. */
  readonly error?: TetherError;
  /** Requests handed to the network (0 when refused before: scope, breaker, rate limit, token). */
  readonly attempts: number;
  readonly correlationId: string;
  readonly traceId: string;
}

/** A low-level request. */
export interface EhrRequestSpec {
  readonly method: HttpMethod;
  /** Path below the FHIR base without a leading slash, e.g. `Patient/123/_history`; `''` for the base. */
  readonly path: string;
  readonly query?: SearchParams;
  /** JSON body (resource or Bundle). */
  readonly body?: Record<string, unknown>;
  readonly ifMatch?: string;
  readonly ifNoneExist?: string;
  readonly prefer?: WriteOptions['prefer'];
}
