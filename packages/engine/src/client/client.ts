/**
 * The resilient EHR client: every call Tether makes to an EHR goes through {@link createEhrClient}.
 *
 * Life of a call:
 * ```
 * prepare (validate, classify interaction, correlation id, trace)
 *   → [GET only] coalesce with an identical in-flight GET    (the rest runs once per shared request)
 *   → scope precheck (TokenProvider.assertScope)            refused → EHR_SCOPE_MISSING, nothing sent
 *   → tenant queue (concurrency, interactive before batch)   deadline → EHR_TIMEOUT, nothing sent
 *   → circuit breaker (tenant + origin)                      open → EHR_CIRCUIT_OPEN, nothing sent
 *   → EHR-ordered pause (Retry-After of an earlier 429)      too long → EHR_RATE_LIMITED, nothing sent
 *   → tenant token bucket                                    too long → EHR_RATE_LIMITED, nothing sent
 *   → access token                                           failure → AUTH_*, nothing sent
 *   → one HTTP attempt (undici Pool of the origin)
 *   → 401? refresh once and resend (reads and writes: a 401 means the EHR did not process the request)
 *   → reads: retry transient failures with full-jitter backoff / Retry-After, within the deadline
 *     writes: classify (applied | not_sent | rejected | rate_limited | unknown), never resend
 * ```
 */
import { TetherError, errorSpec, isTetherError, type ErrorCode } from '@tether/core';
import type { Dispatcher } from 'undici';
import { Circuit, type CircuitPermit } from './circuit.js';
import { circuitVerdict, classifyReadAttempt, classifyWriteAttempt, codeForReason, codeForStatus } from './classify.js';
import { Coalescer } from './coalesce.js';
import { CancelSource, toAbortSignal, type CancelSignal } from './cancel.js';
import { PriorityLimiter, type Priority, type Release } from './concurrency.js';
import {
  ClientEvents,
  type AttemptOutcome,
  type EhrClientEventMap,
  type EhrClientEventName,
  type EhrClientListener,
  type RequestFacts,
} from './events.js';
import { classifyRequest, ID_PATTERN, RESOURCE_TYPE_PATTERN, type HttpMethod, type InteractionInfo, type ScopeCheck } from './interaction.js';
import { resolveClientOptions, type EhrClientOptions, type RateLimit, type ResolvedClientOptions } from './options.js';
import { inProcessRateLimiter, type RateLimiter } from './rate-limiter.js';
import { backoffDelay, parseRetryAfter } from './retry.js';
import type { Span } from '@opentelemetry/api';
import { AttemptTracing, attemptSpanId, correlationIdFor, startTrace, type TraceContext } from './trace.js';
import { CallAbort, sendOnce, type IncomingHttpHeaders, type TransportRequest, type TransportResult, type TransportTimers } from './transport.js';
import { DeadlineTimers } from './deadlines.js';
import type {
  CallOptions,
  EhrRequestSpec,
  EhrResponse,
  EhrTarget,
  FhirBundle,
  FhirResource,
  SearchParams,
  WriteHeaders,
  WriteOptions,
  WriteResult,
} from './types.js';

/** Options of {@link EhrClient.search}. */
export interface SearchOptions extends CallOptions {
  /**
   * `GET` (default) or `POST` (`[type]/_search`, form-encoded). POST keeps search values out of URLs, so out of
   * proxy and EHR access logs; it is still a read (retried), but never coalesced.
   */
  readonly method?: 'GET' | 'POST';
}

/** Options of {@link EhrClient.searchPages}. */
export interface PageOptions extends SearchOptions {
  /** Most pages to follow before failing with `EHR_RESPONSE_INVALID`. Default: the client's `maxPages`. */
  readonly maxPages?: number;
}

/** The EHR client. Create with {@link createEhrClient}; `close()` when done. */
export interface EhrClient {
  /** `GET [type]/[id]`. Throws `EHR_NOT_FOUND` (404/410) and the other read errors. */
  read<T extends FhirResource = FhirResource>(
    target: EhrTarget,
    context: string,
    resourceType: string,
    id: string,
    options?: CallOptions,
  ): Promise<EhrResponse<T>>;
  /** `GET [type]/[id]/_history/[vid]`. */
  vread<T extends FhirResource = FhirResource>(
    target: EhrTarget,
    context: string,
    resourceType: string,
    id: string,
    versionId: string,
    options?: CallOptions,
  ): Promise<EhrResponse<T>>;
  /** `GET [type]?params` (or `POST [type]/_search`): the first page. */
  search(target: EhrTarget, context: string, resourceType: string, params: SearchParams, options?: SearchOptions): Promise<EhrResponse<FhirBundle>>;
  /**
   * Every page of a search: yields each Bundle, following `next` links verbatim. Refuses a `next` link to another
   * origin (`EHR_REQUEST_INVALID`: the token must never leave the tenant's EHR) and fails after `maxPages` pages or
   * on a link loop (`EHR_RESPONSE_INVALID`). Each page is its own call (own deadline and retries).
   */
  searchPages(
    target: EhrTarget,
    context: string,
    resourceType: string,
    params: SearchParams,
    options?: PageOptions,
  ): AsyncGenerator<FhirBundle, void, undefined>;
  /** `POST [type]`, optionally conditional (`If-None-Exist`). Never resent. */
  create(
    target: EhrTarget,
    context: string,
    resource: FhirResource,
    options?: WriteOptions & { readonly ifNoneExist?: string | SearchParams },
  ): Promise<WriteResult>;
  /**
   * `PUT [type]/[id]` (the id comes from the resource). `ifMatch`: an ETag (`W/"3"`) or a bare version id (`3`).
   * Never resent.
   */
  update(target: EhrTarget, context: string, resource: FhirResource, options?: WriteOptions & { readonly ifMatch?: string }): Promise<WriteResult>;
  /** `DELETE [type]/[id]`. Never resent. */
  delete(target: EhrTarget, context: string, resourceType: string, id: string, options?: WriteOptions): Promise<WriteResult>;
  /** `POST [base]` with a Bundle of type `transaction` or `batch`. Never resent. */
  transaction(target: EhrTarget, context: string, bundle: FhirBundle, options?: WriteOptions): Promise<WriteResult>;
  /** A low-level GET: answers like {@link EhrClient.read}. */
  request(target: EhrTarget, context: string, spec: EhrRequestSpec & { readonly method: 'GET' }, options?: CallOptions): Promise<EhrResponse>;
  /** A low-level write (POST, PUT, DELETE, PATCH): answers like {@link EhrClient.create}. */
  request(
    target: EhrTarget,
    context: string,
    spec: EhrRequestSpec & { readonly method: Exclude<HttpMethod, 'GET'> },
    options?: CallOptions,
  ): Promise<WriteResult>;
  /** Subscribes to an event; returns the unsubscribe function. */
  on<K extends EhrClientEventName>(event: K, listener: EhrClientListener<K>): () => void;
  /** State of a tenant's circuit for an origin (for health endpoints and tests). */
  circuitState(tenantId: string, baseUrl: string): 'closed' | 'open' | 'half-open';
  /** Stops accepting calls and closes the pools once in-flight requests finish. */
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------------------------

interface ResolvedTarget {
  readonly tenantId: string;
  readonly origin: string;
  /** Path of the FHIR base without a trailing slash (`''` for a base at the origin root). */
  readonly basePath: string;
  readonly concurrency: number;
  readonly rateLimit: RateLimit | null;
  readonly notAppliedStatuses: ReadonlySet<number>;
  /** Key of the tenant's circuit and EHR-ordered pause for this origin. */
  readonly originKey: string;
  /** Key of the tenant's token bucket. */
  readonly rateKey: string;
}

/** A resolved target and the fields of the {@link EhrTarget} it was resolved from (see resolveTarget). */
interface CachedTarget {
  readonly resolved: ResolvedTarget;
  readonly tenantId: string;
  readonly baseUrl: string;
  readonly concurrency: number | undefined;
  readonly rateLimit: RateLimit | null | undefined;
  readonly capacity: number | undefined;
  readonly refillPerSecond: number | undefined;
  readonly writeNotAppliedStatuses: readonly number[] | undefined;
}

interface PreparedCall {
  readonly target: ResolvedTarget;
  readonly context: string;
  readonly method: HttpMethod;
  /** Origin-relative path with query, sent verbatim. */
  readonly path: string;
  readonly body: Buffer | undefined;
  readonly headers: Readonly<Record<string, string>>;
  readonly info: InteractionInfo;
  readonly priority: Priority;
  readonly deadlineAt: number;
  readonly callerSignal: AbortSignal | undefined;
  readonly correlationId: string;
  readonly trace: TraceContext;
  /** Made on first use (most calls emit no event that needs it): see {@link factsOf}. */
  facts: RequestFacts | undefined;
}

/** Per tenant + origin: breaker and EHR-ordered pause. */
interface OriginState {
  readonly circuit: Circuit;
  /** Epoch ms before which the EHR asked us (429 Retry-After) not to send anything. */
  pausedUntil: number;
}

/** What {@link sendWithAuth} hands back. */
type AttemptRecord =
  /** Never reached the network: refused by the breaker, a rate limit, the token provider, or the deadline. */
  | { readonly kind: 'refused'; readonly error: TetherError; readonly retryAfterMs?: number }
  /** The final transport result (after the one 401 refresh, if any). */
  | { readonly kind: 'sent'; readonly result: TransportResult };

interface CallState {
  /** Requests handed to the transport. */
  attempts: number;
  /** Whether the one refresh after a 401 was used. */
  refreshed: boolean;
  /** The token the last send carried (what a 401 rejected). */
  token: string | undefined;
  /** The breaker's permit and the origin state of the send in progress (set by {@link admit}). */
  permit: CircuitPermit | undefined;
  origin: OriginState | undefined;
  /** The span id of the last attempt (for its log line). */
  spanId: string;
  /** The OpenTelemetry span of the attempt in progress, when an SDK records one. */
  span: Span | undefined;
}

/** A fresh {@link CallState}. */
function newCallState(): CallState {
  return { attempts: 0, refreshed: false, token: undefined, permit: undefined, origin: undefined, spanId: '', span: undefined };
}

/** {@link admit}'s answer when the request must wait for a rate limit first. */
const MUST_WAIT = Symbol('must-wait');

const FHIR_JSON = 'application/fhir+json';
/** The options of a call that was given none. */
const NO_OPTIONS: CallOptions = Object.freeze({});
/** The extra headers of a call that has none (reads): shared, never written to. */
const NO_HEADERS: Readonly<Record<string, string>> = Object.freeze({});
/** Most rate-limit waits before one send (see waitForRateLimits). */
const MAX_RATE_LIMIT_WAITS = 10;
const HEADER_VALUE = /^[\x20-\x7e]{1,8192}$/;
const TENANT_ID = /^[\x21-\x7e]{1,128}$/;

function invalid(message: string, details: Record<string, unknown> = {}): TetherError {
  return new TetherError('EHR_REQUEST_INVALID', message, { details });
}

function firstHeader(headers: IncomingHttpHeaders, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/**
 * The response headers as one string per name (repeated headers joined with `, `), frozen. Flattens undici's
 * object in place: undici makes a fresh one per response and hands it to this attempt only, and copying it showed
 * up in the benchmark profile.
 */
function flattenHeaders(headers: IncomingHttpHeaders): Record<string, string> {
  for (const k in headers) {
    const v = headers[k];
    if (typeof v === 'string') continue;
    if (v === undefined) delete headers[k];
    else headers[k] = v.join(', ');
  }
  return Object.freeze(headers as Record<string, string>);
}

function toSearchParams(params: SearchParams | undefined): URLSearchParams {
  if (params === undefined) return new URLSearchParams();
  if (params instanceof URLSearchParams) return new URLSearchParams(params);
  if (Array.isArray(params)) return new URLSearchParams(params as [string, string][]);
  const out = new URLSearchParams();
  for (const [name, value] of Object.entries(params as Record<string, string | number | boolean | readonly (string | number | boolean)[]>)) {
    if (Array.isArray(value)) for (const v of value as readonly (string | number | boolean)[]) out.append(name, String(v));
    else out.append(name, String(value));
  }
  return out;
}

/** OperationOutcome issue codes (`issue.code` and coded `details`): vendor error codes such as Epic's 59008, never text. */
function outcomeCodes(body: unknown): string[] | undefined {
  const issues = (body as { resourceType?: unknown; issue?: unknown } | undefined)?.issue;
  if ((body as { resourceType?: unknown } | undefined)?.resourceType !== 'OperationOutcome' || !Array.isArray(issues)) return undefined;
  const codes = new Set<string>();
  const TOKEN = /^[A-Za-z0-9_.-]{1,64}$/;
  for (const issue of issues.slice(0, 20) as { code?: unknown; details?: { coding?: { code?: unknown }[] } }[]) {
    if (typeof issue.code === 'string' && TOKEN.test(issue.code)) codes.add(issue.code);
    for (const c of Array.isArray(issue.details?.coding) ? issue.details.coding.slice(0, 5) : []) {
      if (typeof c.code === 'string' && TOKEN.test(c.code)) codes.add(c.code);
    }
  }
  return codes.size > 0 ? [...codes] : undefined;
}

function parseJson(body: Buffer): { ok: true; value: Record<string, unknown> | undefined } | { ok: false } {
  if (body.length === 0) return { ok: true, value: undefined };
  try {
    const value: unknown = JSON.parse(body.toString('utf8'));
    if (typeof value !== 'object' || value === null || Array.isArray(value)) return { ok: false };
    return { ok: true, value: value as Record<string, unknown> };
  } catch {
    return { ok: false };
  }
}

/** The body as a FHIR resource (a JSON object with a string `resourceType`), or undefined. */
function parseResource(body: Buffer): FhirResource | undefined {
  if (body.length === 0) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(body.toString('utf8'));
  } catch {
    return undefined;
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return undefined;
  return typeof (value as { resourceType?: unknown }).resourceType === 'string' ? (value as FhirResource) : undefined;
}

/**
 * Creates an EHR client. Options are validated at once (`CONFIG_INVALID`) and frozen; nothing is connected until
 * the first call.
 */
export function createEhrClient(options: EhrClientOptions): EhrClient {
  const o: ResolvedClientOptions = resolveClientOptions(options);
  const s = o.settings;
  const events = new ClientEvents(o.onEvent, o.logger);
  const tracing = new AttemptTracing();
  /** Deadlines and attempt budgets: batched on one Node timer, unless the caller injected its own timers. */
  const deadlines: TransportTimers = o.globalTimers ? new DeadlineTimers() : o.timers;
  const rateLimiter: RateLimiter = o.rateLimiter ?? inProcessRateLimiter();
  const pools = new Map<string, Dispatcher>();
  const limiters = new Map<string, PriorityLimiter>();
  const origins = new Map<string, OriginState>();
  const parsedBases = new Map<string, URL>();
  /**
   * Resolved targets by identity: callers pass the same target object for every call of a tenant, and resolving
   * (validation, URL parsing, keys) is then done once. Each use checks that the fields still match.
   */
  const resolvedTargets = new WeakMap<EhrTarget, CachedTarget>();
  /** InteractionInfo of `read` per resource type (what classifyRequest answers for `GET [type]/[id]`). */
  const readInfos = new Map<string, InteractionInfo>();
  const defaultNotApplied: ReadonlySet<number> = new Set(s.writeNotAppliedStatuses);
  let closed = false;

  // ------------------------------------------------------------------------------------------------ targets

  function resolveTarget(target: EhrTarget): ResolvedTarget {
    if (typeof target !== 'object' || target === null) throw invalid('target must be an object.');
    const cached = resolvedTargets.get(target);
    if (
      cached !== undefined &&
      cached.tenantId === target.tenantId &&
      cached.baseUrl === target.baseUrl &&
      cached.concurrency === target.concurrency &&
      cached.rateLimit === target.rateLimit &&
      cached.capacity === target.rateLimit?.capacity &&
      cached.refillPerSecond === target.rateLimit?.refillPerSecond &&
      cached.writeNotAppliedStatuses === target.writeNotAppliedStatuses
    ) {
      return cached.resolved;
    }
    const resolved = resolveTargetFields(target);
    resolvedTargets.set(target, {
      resolved,
      tenantId: target.tenantId,
      baseUrl: target.baseUrl,
      concurrency: target.concurrency,
      rateLimit: target.rateLimit,
      capacity: target.rateLimit?.capacity,
      refillPerSecond: target.rateLimit?.refillPerSecond,
      writeNotAppliedStatuses: target.writeNotAppliedStatuses,
    });
    return resolved;
  }

  function resolveTargetFields(target: EhrTarget): ResolvedTarget {
    if (typeof target.tenantId !== 'string' || !TENANT_ID.test(target.tenantId)) throw invalid('target.tenantId must be 1-128 printable characters.');
    let url: URL | undefined = parsedBases.get(target.baseUrl);
    try {
      if (!url) {
        url = new URL(target.baseUrl);
        // Parsed once per base URL (a handful per engine), not once per call.
        if (parsedBases.size < 10_000) parsedBases.set(target.baseUrl, url);
      }
    } catch {
      throw new TetherError('CONFIG_INVALID', 'target.baseUrl is not an absolute URL.', { details: { tenant: target.tenantId } });
    }
    if ((url.protocol !== 'https:' && url.protocol !== 'http:') || url.username !== '' || url.password !== '' || url.search !== '' || url.hash !== '') {
      throw new TetherError('CONFIG_INVALID', 'target.baseUrl must be http(s) without credentials, query or fragment.', {
        details: { tenant: target.tenantId },
      });
    }
    const concurrency = target.concurrency ?? s.concurrency;
    if (!Number.isInteger(concurrency) || concurrency < 1) throw new TetherError('CONFIG_INVALID', 'target.concurrency must be a positive integer.');
    const rateLimit = target.rateLimit === undefined ? s.rateLimit : target.rateLimit;
    if (rateLimit !== null && !(rateLimit.capacity > 0 && rateLimit.refillPerSecond > 0)) {
      throw new TetherError('CONFIG_INVALID', 'target.rateLimit needs a positive capacity and refillPerSecond.');
    }
    return {
      tenantId: target.tenantId,
      origin: url.origin,
      basePath: url.pathname.replace(/\/+$/, ''),
      concurrency,
      rateLimit,
      notAppliedStatuses: target.writeNotAppliedStatuses === undefined ? defaultNotApplied : new Set(target.writeNotAppliedStatuses),
      originKey: `${target.tenantId}\u0000${url.origin}`,
      rateKey: `ehr:${target.tenantId}`,
    };
  }

  function poolFor(origin: string): Dispatcher {
    let pool = pools.get(origin);
    if (!pool) {
      pool = o.dispatcherFactory(origin, {
        connections: s.poolConnections,
        connectTimeoutMs: s.connectTimeoutMs,
        headersTimeoutMs: s.headersTimeoutMs,
        bodyTimeoutMs: s.bodyTimeoutMs,
        keepAliveTimeoutMs: s.keepAliveTimeoutMs,
      });
      pools.set(origin, pool);
    }
    return pool;
  }

  function limiterFor(target: ResolvedTarget): PriorityLimiter {
    let limiter = limiters.get(target.tenantId);
    if (!limiter) {
      limiter = new PriorityLimiter(target.concurrency, s.batchEvery);
      limiters.set(target.tenantId, limiter);
    } else {
      limiter.setMax(target.concurrency);
    }
    return limiter;
  }

  function originStateFor(target: ResolvedTarget): OriginState {
    const { tenantId, origin, originKey: key } = target;
    let state = origins.get(key);
    if (!state) {
      const circuit = new Circuit({
        breaker: o.breakerFactory?.(),
        failureThreshold: s.breakerFailureThreshold,
        halfOpenAfterMs: s.breakerHalfOpenAfterMs,
        clock: o.clock,
        listener: {
          onOpen: (afterTrial) => {
            o.logger.warn({ tenant: tenantId, origin, afterTrial }, 'ehr_client.breaker_open');
            events.emit('breaker:open', { tenant: tenantId, origin, afterTrial, halfOpenAfterMs: s.breakerHalfOpenAfterMs });
          },
          onHalfOpen: () => {
            o.logger.info({ tenant: tenantId, origin }, 'ehr_client.breaker_half_open');
            events.emit('breaker:half-open', { tenant: tenantId, origin });
          },
          onClose: () => {
            o.logger.info({ tenant: tenantId, origin }, 'ehr_client.breaker_close');
            events.emit('breaker:close', { tenant: tenantId, origin });
          },
        },
      });
      state = { circuit, pausedUntil: 0 };
      origins.set(key, state);
    }
    return state;
  }

  // ------------------------------------------------------------------------------------------------ preparing

  function prepare(
    target: EhrTarget,
    context: string,
    method: HttpMethod,
    relativePath: string,
    query: URLSearchParams | undefined,
    body: { json: Record<string, unknown> } | { form: URLSearchParams } | undefined,
    extraHeaders: Record<string, string | undefined>,
    options: CallOptions,
    info?: InteractionInfo,
  ): PreparedCall {
    const resolved = resolveTarget(target);
    checkContext(context);
    const qs = query?.toString() ?? '';
    const interaction = info ?? classifyRequest(method, relativePath, body && 'json' in body ? body.json : undefined, qs !== '');
    const path = `${resolved.basePath}/${relativePath}${qs ? `?${qs}` : ''}`;
    return finishPrepare(resolved, context, method, path, interaction, body, extraHeaders, options);
  }

  function checkContext(context: unknown): void {
    if (typeof context !== 'string' || context === '' || context.length > 256) throw invalid('context must be a non-empty string.');
  }

  /** What classifyRequest answers for `GET [type]/[id]`, made once per resource type. */
  function readInfo(resourceType: string): InteractionInfo {
    let info = readInfos.get(resourceType);
    if (!info) {
      info = Object.freeze({
        interaction: 'read',
        resourceType,
        isWrite: false,
        scopeChecks: Object.freeze([Object.freeze({ resourceType, interaction: 'read' as const })]),
      });
      // Resource types are a closed set of names; the bound only guards against a caller inventing them.
      if (readInfos.size < 1000) readInfos.set(resourceType, info);
    }
    return info;
  }

  function finishPrepare(
    resolved: ResolvedTarget,
    context: string,
    method: HttpMethod,
    path: string,
    info: InteractionInfo,
    body: { json: Record<string, unknown> } | { form: URLSearchParams } | undefined,
    extraHeaders: Record<string, string | undefined>,
    options: CallOptions,
  ): PreparedCall {
    let headers: Record<string, string> = NO_HEADERS;
    if (extraHeaders !== NO_HEADERS || body !== undefined) {
      headers = {};
      for (const [name, value] of Object.entries(extraHeaders)) {
        if (value === undefined) continue;
        if (!HEADER_VALUE.test(value)) throw invalid(`The ${name} header value must be printable ASCII without line breaks.`, { header: name });
        headers[name] = value;
      }
    }
    let buffer: Buffer | undefined;
    if (body && 'json' in body) {
      buffer = Buffer.from(JSON.stringify(body.json), 'utf8');
      headers['content-type'] = `${FHIR_JSON}; charset=utf-8`;
    } else if (body && 'form' in body) {
      buffer = Buffer.from(body.form.toString(), 'utf8');
      headers['content-type'] = 'application/x-www-form-urlencoded';
    }
    const priority = options.priority ?? 'interactive';
    if (priority !== 'interactive' && priority !== 'batch') throw invalid("priority must be 'interactive' or 'batch'.");
    const deadlineMs = options.deadlineMs ?? s.deadlineMs;
    if (!Number.isFinite(deadlineMs) || deadlineMs <= 0) throw invalid('deadlineMs must be a positive number.');
    const correlationId = correlationIdFor(options.correlationId, o.ids);
    const trace = startTrace(options.traceparent, o.ids);
    return {
      target: resolved,
      context,
      method,
      path,
      body: buffer,
      headers,
      info,
      priority,
      deadlineAt: o.clock() + deadlineMs,
      callerSignal: options.signal,
      correlationId,
      trace,
      facts: undefined,
    };
  }

  /** The facts every per-request event carries. */
  function factsOf(call: PreparedCall): RequestFacts {
    return (call.facts ??= Object.freeze({
      tenant: call.target.tenantId,
      method: call.method,
      resourceType: call.info.resourceType,
      interaction: call.info.interaction,
      correlationId: call.correlationId,
    }));
  }

  // ------------------------------------------------------------------------------------------------ plumbing

  /** A signal that aborts at the call's deadline or when the caller's (or a shared) signal aborts. */
  function openScope(deadlineAt: number, outer: CancelSignal | undefined): { signal: CancelSignal; dispose: () => void } {
    const controller = new CancelSource();
    const timer = deadlines.setTimeout(() => controller.abort(new CallAbort('deadline')), Math.max(0, deadlineAt - o.clock()));
    const onOuter = (): void => {
      const reason: unknown = outer?.reason;
      controller.abort(reason instanceof CallAbort ? reason : new CallAbort('aborted'));
    };
    if (outer?.aborted) onOuter();
    else outer?.addEventListener('abort', onOuter, { once: true });
    return {
      signal: controller.signal,
      dispose: () => {
        deadlines.clearTimeout(timer);
        outer?.removeEventListener('abort', onOuter);
      },
    };
  }

  function abortReason(reason: unknown): 'deadline' | 'aborted' {
    return reason instanceof CallAbort && reason.reason === 'deadline' ? 'deadline' : 'aborted';
  }

  /** The error for a call that ran out of time (or was cancelled) before it could send. */
  function timeoutError(call: PreparedCall, reason: unknown, where: string, attempts: number): TetherError {
    return new TetherError('EHR_TIMEOUT', `The EHR call ended (${abortReason(reason)}) while ${where}; it was not sent.`, {
      details: { ...detailsOf(call, attempts), reason: abortReason(reason), phase: where },
    });
  }

  function detailsOf(call: PreparedCall, attempts: number): Record<string, unknown> {
    return {
      tenant: call.target.tenantId,
      method: call.method,
      resourceType: call.info.resourceType,
      interaction: call.info.interaction,
      correlationId: call.correlationId,
      attempts,
    };
  }

  function failureError(call: PreparedCall, code: ErrorCode, attempts: number, extra: Record<string, unknown>, cause?: unknown): TetherError {
    const what = `${call.method} ${call.info.resourceType ?? '(system)'} ${call.info.interaction}`;
    const status = typeof extra['status'] === 'number' && extra['status'] > 0 ? ` with status ${extra['status']}` : '';
    const reason = typeof extra['reason'] === 'string' ? ` (${extra['reason']})` : '';
    return new TetherError(code, `EHR ${what} failed${status}${reason}.`, {
      details: { ...detailsOf(call, attempts), ...extra },
      ...(cause === undefined ? {} : { cause }),
    });
  }

  /**
   * A concurrency slot of the call's tenant: at once when one is free and nobody waits (no Promise), otherwise a
   * wait in the tenant's queue.
   */
  function acquireSlot(call: PreparedCall, signal: CancelSignal): Release | Promise<Release> {
    const limiter = limiterFor(call.target);
    return limiter.tryAcquire() ?? queueForSlot(limiter, call, signal);
  }

  async function queueForSlot(limiter: PriorityLimiter, call: PreparedCall, signal: CancelSignal): Promise<Release> {
    const { release, waited, enqueuedAt } = await limiter.acquire(call.priority, signal, o.clock());
    if (waited) events.emit('queue:waited', { tenant: call.target.tenantId, priority: call.priority, waitedMs: o.clock() - enqueuedAt });
    return release;
  }

  /**
   * The token provider's scope precheck, one check per interaction the call needs (reads need one). Resolves to
   * the refusal, or undefined when the call may go (also when the provider has no precheck).
   */
  async function precheckScope(call: PreparedCall): Promise<TetherError | undefined> {
    const provider = o.tokenProvider;
    if (provider.assertScope === undefined) return undefined;
    for (const check of call.info.scopeChecks) {
      try {
        await provider.assertScope(call.target.tenantId, call.context, check.resourceType, check.interaction);
      } catch (err) {
        return scopeRefusal(call, err);
      }
    }
    return undefined;
  }

  function scopeRefusal(call: PreparedCall, err: unknown): TetherError {
    if (isTetherError(err)) return err;
    return new TetherError('EHR_SCOPE_MISSING', 'The scope precheck failed.', { details: detailsOf(call, 0), cause: err });
  }

  function tokenError(call: PreparedCall, err: unknown, attempts: number): TetherError {
    if (isTetherError(err)) return err;
    return new TetherError('AUTH_TOKEN_REQUEST_FAILED', 'The token provider failed.', { details: detailsOf(call, attempts), cause: err });
  }

  /**
   * Whether the request may go now without waiting: no EHR-ordered pause, and a token from the tenant's bucket
   * taken synchronously (or no bucket). `false` means "ask {@link waitForRateLimits}", which decides again (a
   * refused take takes nothing, so asking twice charges once).
   */
  function rateLimitsAllowNow(call: PreparedCall, state: OriginState): boolean {
    const now = o.clock();
    if (state.pausedUntil > now) return false;
    const limit = call.target.rateLimit;
    if (limit === null) return true;
    if (rateLimiter.takeSync === undefined) return false;
    try {
      return rateLimiter.takeSync(call.target.rateKey, limit, now).allowed;
    } catch {
      // waitForRateLimits asks again and turns the failure into a refusal.
      return false;
    }
  }

  /**
   * Waits for the EHR-ordered pause and the tenant's token bucket. Returns a refusal when a wait would not fit
   * the deadline or the Retry-After cap (nothing is sent then), undefined when the request may go.
   */
  async function waitForRateLimits(call: PreparedCall, state: OriginState, signal: CancelSignal, attempts: number): Promise<AttemptRecord | undefined> {
    // Normally one wait suffices; more happen when another 429 extends the pause meanwhile. The bound keeps a sleep
    // that returns early (a broken seam) from spinning: after it, the request is refused, never sent early.
    for (let waits = 0; ; waits++) {
      if (waits > MAX_RATE_LIMIT_WAITS) {
        events.emit('http:rate-limited', { ...factsOf(call), source: 'local', waitMs: 0, waited: false });
        return { kind: 'refused', error: failureError(call, 'EHR_RATE_LIMITED', attempts, { reason: 'rate-limit-waits-exhausted' }) };
      }
      const now = o.clock();
      const pause = state.pausedUntil - now;
      if (pause > 0) {
        if (pause > s.maxRetryAfterMs || now + pause >= call.deadlineAt) {
          events.emit('http:rate-limited', { ...factsOf(call), source: 'server', waitMs: pause, waited: false });
          return {
            kind: 'refused',
            retryAfterMs: pause,
            error: failureError(call, 'EHR_RATE_LIMITED', attempts, { retryAfterMs: pause, source: 'server' }),
          };
        }
        events.emit('http:rate-limited', { ...factsOf(call), source: 'server', waitMs: pause, waited: true });
        try {
          await o.sleep(pause, toAbortSignal(signal));
        } catch {
          return { kind: 'refused', error: timeoutError(call, signal.reason, 'waiting for the EHR rate limit', attempts) };
        }
        continue;
      }
      const limit = call.target.rateLimit;
      if (limit === null) return undefined;
      let decision;
      try {
        decision = rateLimiter.takeSync ? rateLimiter.takeSync(call.target.rateKey, limit, now) : await rateLimiter.take(call.target.rateKey, limit, now);
      } catch (err) {
        // A shared limiter we cannot reach: fail closed (not sent) rather than risk a storm against the EHR.
        return {
          kind: 'refused',
          error: isTetherError(err)
            ? err
            : new TetherError('STORE_UNAVAILABLE', 'The rate limiter failed.', { details: detailsOf(call, attempts), cause: err }),
        };
      }
      if (decision.allowed) return undefined;
      if (o.clock() + decision.waitMs >= call.deadlineAt) {
        events.emit('http:rate-limited', { ...factsOf(call), source: 'local', waitMs: decision.waitMs, waited: false });
        return {
          kind: 'refused',
          retryAfterMs: decision.waitMs,
          error: failureError(call, 'EHR_RATE_LIMITED', attempts, { retryAfterMs: decision.waitMs, source: 'local' }),
        };
      }
      events.emit('http:rate-limited', { ...factsOf(call), source: 'local', waitMs: decision.waitMs, waited: true });
      try {
        await o.sleep(decision.waitMs, toAbortSignal(signal));
      } catch {
        return { kind: 'refused', error: timeoutError(call, signal.reason, 'waiting for the tenant rate limit', attempts) };
      }
    }
  }

  /** Per-attempt outcome for the `http:response` event. */
  function attemptOutcome(call: PreparedCall, result: TransportResult): { outcome: AttemptOutcome; code: ErrorCode | undefined } {
    if (call.info.isWrite) {
      const verdict = classifyWriteAttempt(result, call.target.notAppliedStatuses);
      return { outcome: verdict.outcome, code: verdict.code };
    }
    const verdict = classifyReadAttempt(result);
    if (verdict.ok) return { outcome: 'ok', code: undefined };
    if (verdict.status === 429) return { outcome: 'rate_limited', code: verdict.code };
    if (verdict.status >= 400 && verdict.status < 500) return { outcome: 'rejected', code: verdict.code };
    if (result.kind === 'failed' && !result.sent) return { outcome: 'not_sent', code: verdict.code };
    return { outcome: 'failed', code: verdict.code };
  }

  /**
   * The checks before a send that need no waiting: client open, breaker permit, rate limits. Sets `state.permit`
   * and `state.origin`. Returns a refusal, {@link MUST_WAIT} (ask {@link waitForRateLimits}), or undefined: go.
   */
  function admit(call: PreparedCall, state: CallState): AttemptRecord | typeof MUST_WAIT | undefined {
    // Calls still queued when close() ran must not reopen a pool.
    if (closed) {
      return { kind: 'refused', error: new TetherError('SERVICE_UNAVAILABLE', 'The EHR client is closed.', { details: detailsOf(call, state.attempts) }) };
    }
    const originState = originStateFor(call.target);
    const permit = originState.circuit.tryAcquire();
    if (!permit) {
      const retryAfterMs = originState.circuit.remainingOpenMs();
      return {
        kind: 'refused',
        retryAfterMs,
        error: failureError(call, 'EHR_CIRCUIT_OPEN', state.attempts, { retryAfterMs, origin: call.target.origin }),
      };
    }
    state.permit = permit;
    state.origin = originState;
    return rateLimitsAllowNow(call, originState) ? undefined : MUST_WAIT;
  }

  /**
   * One send through breaker, pauses, rate limit and token; records the attempt. Kept small on purpose (every
   * local of an async function is saved at each await): the work around the awaits is in sync helpers.
   */
  async function sendOne(call: PreparedCall, state: CallState, signal: CancelSignal, refreshedToken?: string): Promise<AttemptRecord> {
    const admitted = admit(call, state);
    if (admitted !== undefined) {
      if (admitted !== MUST_WAIT) return admitted;
      const refused = await waitForRateLimits(call, state.origin as OriginState, signal, state.attempts);
      if (refused) {
        state.permit?.report('ignore');
        return refused;
      }
    }
    // Asked every time (the provider caches, and refreshes proactively near expiry), except for the resend right
    // after a 401, which uses the token the refresh returned.
    let token = refreshedToken;
    if (token === undefined) {
      try {
        token = await o.tokenProvider.getAccessToken(call.target.tenantId, call.context);
      } catch (err) {
        state.permit?.report('ignore');
        return { kind: 'refused', error: tokenError(call, err, state.attempts) };
      }
    }
    if (signal.aborted) {
      state.permit?.report('ignore');
      return { kind: 'refused', error: timeoutError(call, signal.reason, 'getting a token', state.attempts) };
    }
    const startedAt = o.clock();
    const result = await sendOnce(poolFor(call.target.origin), attemptRequest(call, state, token, startedAt, signal), deadlines);
    return recordAttempt(call, state, result, startedAt);
  }

  /** The request of one attempt: the call's headers plus auth, correlation and a new span. */
  function attemptRequest(call: PreparedCall, state: CallState, token: string, now: number, signal: CancelSignal): TransportRequest {
    state.token = token;
    state.attempts++;
    const span = tracing.start(call.trace, `tether.ehr ${call.method}`, {
      'http.request.method': call.method,
      'tether.tenant': call.target.tenantId,
      'fhir.resource_type': call.info.resourceType ?? '',
      'fhir.interaction': call.info.interaction,
      'tether.correlation_id': call.correlationId,
      'tether.attempt': state.attempts,
    });
    state.span = span;
    let traceparent: string;
    if (span) {
      // The recorded span's own ids go on the wire, so the EHR's side of the trace hangs under it.
      const sc = span.spanContext();
      state.spanId = sc.spanId;
      traceparent = `00-${sc.traceId}-${sc.spanId}-0${sc.traceFlags & 1}`;
    } else {
      const spanId = attemptSpanId(o.ids);
      state.spanId = spanId;
      traceparent = `00-${call.trace.traceId}-${spanId}-${call.trace.flags}`;
    }
    // Ours, after the call's own headers (conditional writes, content type: never one of these names).
    const headers: string[] = [
      'accept',
      FHIR_JSON,
      'authorization',
      `Bearer ${token}`,
      'user-agent',
      s.userAgent,
      'x-request-id',
      call.correlationId,
      'x-correlation-id',
      call.correlationId,
      'traceparent',
      traceparent,
    ];
    if (call.headers !== NO_HEADERS) {
      const own: string[] = [];
      for (const name in call.headers) own.push(name, call.headers[name] as string);
      headers.unshift(...own);
    }
    const remaining = call.deadlineAt - now;
    return {
      method: call.method,
      path: call.path,
      headers,
      body: call.body,
      headersTimeoutMs: s.headersTimeoutMs,
      bodyTimeoutMs: s.bodyTimeoutMs,
      maxResponseBytes: s.maxResponseBytes,
      timeoutMs: Math.min(s.attemptTimeoutMs, remaining),
      timeoutReason: remaining < s.attemptTimeoutMs ? 'deadline' : 'attempt-timeout',
      signal,
    };
  }

  /** After an attempt: the breaker's verdict, the `http:response` event and log line, an EHR-ordered pause. */
  function recordAttempt(call: PreparedCall, state: CallState, result: TransportResult, startedAt: number): AttemptRecord {
    state.permit?.report(circuitVerdict(result));
    const status = result.kind === 'failed' ? 0 : result.status;
    if (state.span) {
      const { outcome, code } = attemptOutcome(call, result);
      tracing.end(state.span, status, outcome, code);
      state.span = undefined;
    }
    const emitResponse = events.wants('http:response');
    const logAttempt = o.logsDebug();
    if (emitResponse || logAttempt) {
      // Built only for someone who receives it: this runs for every request.
      const ms = o.clock() - startedAt;
      const reason = result.kind === 'response' ? undefined : result.reason;
      const { outcome, code } = attemptOutcome(call, result);
      const category = code === undefined ? undefined : errorSpec(code).category;
      const attempt = state.attempts;
      if (emitResponse) events.emit('http:response', { ...factsOf(call), status, outcome, category, code, reason, ms, attempt });
      if (logAttempt) {
        o.logger.debug(
          {
            tenant: call.target.tenantId,
            method: call.method,
            resourceType: call.info.resourceType,
            interaction: call.info.interaction,
            correlationId: call.correlationId,
            spanId: state.spanId,
            attempt,
            status,
            outcome,
            reason,
            ms,
          },
          'ehr_client.attempt',
        );
      }
    }
    if (status === 429 && state.origin) {
      const retryAfterMs = parseRetryAfter(result.kind === 'failed' ? undefined : firstHeader(result.headers, 'retry-after'), o.clock());
      if (retryAfterMs !== undefined && retryAfterMs > 0) {
        // The EHR said when it will take requests again: nobody of this tenant sends to this origin before then.
        state.origin.pausedUntil = Math.max(state.origin.pausedUntil, o.clock() + retryAfterMs);
      }
    }
    return { kind: 'sent', result };
  }

  /** Whether `record` is a first 401: the one refresh and resend is due (see {@link sendWithAuth}). */
  function needsRefresh(record: AttemptRecord, state: CallState): boolean {
    return record.kind === 'sent' && record.result.kind === 'response' && record.result.status === 401 && !state.refreshed;
  }

  /**
   * One send, and on a 401 one refresh and one resend.
   *
   * Why a write may be resent after a 401: the EHR's authorization layer answers 401 (RFC 6750 `invalid_token`)
   * before it processes the request, so a 401 proves the write was not applied. Resending with a fresh token is
   * therefore not a "retry of a write with unknown outcome". It happens at most once per call: a second 401 is
   * final (`EHR_UNAUTHORIZED`), so a broken token never turns into a loop.
   */
  async function sendWithAuth(call: PreparedCall, state: CallState, signal: CancelSignal): Promise<AttemptRecord> {
    const first = await sendOne(call, state, signal);
    return needsRefresh(first, state) ? refreshAndResend(call, state, signal) : first;
  }

  /** After a first 401: the one refresh, then the one resend with the fresh token. */
  async function refreshAndResend(call: PreparedCall, state: CallState, signal: CancelSignal): Promise<AttemptRecord> {
    state.refreshed = true;
    events.emit('auth:refresh-after-401', { ...factsOf(call), attempt: state.attempts });
    let fresh: string;
    try {
      fresh = await o.tokenProvider.refreshAfterUnauthorized(call.target.tenantId, call.context, state.token ?? '');
    } catch (err) {
      // Nothing was applied (the 401 proves it) and nothing more was sent: a refusal.
      return { kind: 'refused', error: tokenError(call, err, state.attempts) };
    }
    return sendOne(call, state, signal, fresh);
  }

  // ------------------------------------------------------------------------------------------------ reads

  function readSuccess<T extends FhirResource>(call: PreparedCall, result: TransportResult & { kind: 'response' }, attempts: number): EhrResponse<T> {
    const value = parseResource(result.body);
    if (value === undefined) throw failureError(call, 'EHR_RESPONSE_INVALID', attempts, { status: result.status, reason: 'not-fhir-json' });
    return Object.freeze({
      status: result.status,
      body: value as T,
      headers: flattenHeaders(result.headers),
      attempts,
      correlationId: call.correlationId,
      traceId: call.trace.traceId,
    });
  }

  /**
   * Runs a read with retries, within the call's deadline. The decisions after each attempt are in
   * {@link afterReadAttempt} (sync), so that this async function stays small.
   *
   * @param outer - aborts the read: the caller's signal, or the coalescer's shared signal.
   * @param shared - true when `outer` is the coalescer's shared signal: it already aborts when the last caller
   *   leaves (each caller leaves at its own deadline), so no second deadline timer and scope are needed.
   */
  async function runRead(call: PreparedCall, outer: CancelSignal | undefined, shared = false): Promise<EhrResponse> {
    const scope = shared && outer ? undefined : openScope(call.deadlineAt, outer);
    const signal = scope?.signal ?? (outer as CancelSignal);
    const state = newCallState();
    try {
      // The scope precheck, once per request sent (a coalesced GET is one request: same tenant, context and URL,
      // so the same token and scopes as every caller that joined it). Refused: nothing is queued or sent.
      const checks = call.info.scopeChecks;
      if (o.tokenProvider.assertScope !== undefined && checks.length > 0) {
        try {
          for (let i = 0; i < checks.length; i++) {
            const check = checks[i] as ScopeCheck;
            await o.tokenProvider.assertScope(call.target.tenantId, call.context, check.resourceType, check.interaction);
          }
        } catch (err) {
          throw scopeRefusal(call, err);
        }
      }
      for (let round = 1; ; round++) {
        let release = acquireSlot(call, signal);
        if (typeof release !== 'function') release = await queuedSlot(release, call, state);
        let record: AttemptRecord;
        try {
          record = await sendOne(call, state, signal);
          if (needsRefresh(record, state)) record = await refreshAndResend(call, state, signal);
        } finally {
          release();
        }
        const next = afterReadAttempt(call, state, record, round);
        if (typeof next !== 'number') return next;
        await sleepBeforeRetry(call, state, signal, next);
      }
    } finally {
      scope?.dispose();
    }
  }

  /** A slot the read had to queue for; a deadline or cancel while queued ends the read. */
  async function queuedSlot(pending: Promise<Release>, call: PreparedCall, state: CallState): Promise<Release> {
    try {
      return await pending;
    } catch (reason) {
      throw timeoutError(call, reason, 'waiting for a concurrency slot', state.attempts);
    }
  }

  async function sleepBeforeRetry(call: PreparedCall, state: CallState, signal: CancelSignal, delay: number): Promise<void> {
    try {
      await o.sleep(delay, toAbortSignal(signal));
    } catch (reason) {
      throw timeoutError(call, reason, 'waiting to retry', state.attempts);
    }
  }

  /**
   * What follows one attempt of a read: the response (success), the wait before the next attempt (a number, after
   * `http:retry`), or a thrown failure (not retryable, attempts or deadline exhausted, Retry-After over the cap).
   */
  function afterReadAttempt(call: PreparedCall, state: CallState, record: AttemptRecord, round: number): EhrResponse | number {
    if (record.kind === 'refused') throw record.error;
    const result = record.result;
    const verdict = classifyReadAttempt(result);
    if (verdict.ok && result.kind === 'response') return readSuccess(call, result, state.attempts);

    const headers = result.kind === 'failed' ? undefined : result.headers;
    const retryAfterMs = headers ? parseRetryAfter(firstHeader(headers, 'retry-after'), o.clock()) : undefined;
    const body = result.kind === 'response' ? parseJson(result.body) : undefined;
    const extra: Record<string, unknown> = {
      status: verdict.status,
      ...(verdict.reason === undefined ? {} : { reason: verdict.reason }),
      ...(retryAfterMs === undefined ? {} : { retryAfterMs }),
      ...(body?.ok && body.value ? { ehrCodes: outcomeCodes(body.value) } : {}),
    };
    const code = verdict.code ?? (verdict.status > 0 ? codeForStatus(verdict.status) : codeForReason(verdict.reason ?? 'network'));
    const cause = result.kind === 'response' ? undefined : result.cause;
    if (!verdict.retryable || round >= s.maxAttempts) throw failureError(call, code, state.attempts, extra, cause);
    if (retryAfterMs !== undefined && retryAfterMs > s.maxRetryAfterMs) {
      // Waiting less than the EHR asked would send early; waiting longer than the cap holds the caller: give up.
      throw failureError(call, code, state.attempts, { ...extra, retryAfterExceedsCap: true }, cause);
    }
    // Retry-After is a floor: wait it out, plus a little jitter so the callers it paused do not return in step.
    const delay =
      retryAfterMs !== undefined
        ? retryAfterMs + Math.floor(Math.min(Math.max(o.random(), 0), 1) * s.retryBaseDelayMs)
        : backoffDelay(round, { baseDelayMs: s.retryBaseDelayMs, maxDelayMs: s.retryMaxDelayMs }, o.random);
    if (o.clock() + delay >= call.deadlineAt) {
      throw failureError(call, code, state.attempts, { ...extra, deadlineReached: true }, cause);
    }
    events.emit('http:retry', {
      ...factsOf(call),
      attempt: state.attempts,
      delayMs: delay,
      status: verdict.status,
      reason: verdict.reason ?? 'status',
      retryAfter: retryAfterMs !== undefined,
    });
    return delay;
  }

  /** How a GET caller takes part in a coalesced request (one object per client). */
  const coalescer = new Coalescer<PreparedCall, EhrResponse>(deadlines, {
    start: (call, shared) => runRead(call, shared, true),
    joined: (call) => events.emit('http:coalesced', factsOf(call)),
    left: (call, reason) => timeoutError(call, reason, 'waiting for a shared request', 0),
  });

  /**
   * A read: a GET joins an identical one in flight (or starts it); `POST _search` runs on its own. Not async: the
   * scope precheck happens inside the (shared) run, so a read costs one async frame less.
   */
  function executeRead(call: PreparedCall): Promise<EhrResponse> {
    if (closed) return Promise.reject(new TetherError('SERVICE_UNAVAILABLE', 'The EHR client is closed.'));
    return call.method === 'GET' ? coalesce(call) : runRead(call, call.callerSignal);
  }

  /**
   * Same tenant, same context (token and its scopes), same URL: the same answer. The caller leaves at its own
   * deadline or signal; the shared request ends when the last caller left.
   */
  function coalesce(call: PreparedCall): Promise<EhrResponse> {
    const key = `${call.target.tenantId}\u0000${call.context}\u0000${call.target.origin}${call.path}`;
    return coalescer.run(key, call, call.deadlineAt - o.clock(), call.callerSignal);
  }

  // ------------------------------------------------------------------------------------------------ writes

  function writeResult(call: PreparedCall, state: CallState, record: AttemptRecord): WriteResult {
    const base = { attempts: state.attempts, correlationId: call.correlationId, traceId: call.trace.traceId };
    if (record.kind === 'refused') {
      return Object.freeze({
        ...base,
        outcome: 'not_sent',
        headers: {},
        category: record.error.category,
        error: record.error,
        ...(record.retryAfterMs === undefined ? {} : { retryAfterMs: record.retryAfterMs }),
      });
    }
    const result = record.result;
    const verdict = classifyWriteAttempt(result, call.target.notAppliedStatuses);
    const headers: WriteHeaders = result.kind === 'failed' ? {} : pickWriteHeaders(result.headers);
    const parsed = result.kind === 'response' ? parseJson(result.body) : undefined;
    const body = parsed?.ok ? parsed.value : undefined;
    const retryAfterMs = headers.retryAfter === undefined ? undefined : parseRetryAfter(headers.retryAfter, o.clock());
    let code = verdict.code;
    let reason: string | undefined = verdict.reason;
    if (verdict.outcome === 'applied' && parsed !== undefined && !parsed.ok) {
      // Applied (the status says so), but the answer is not JSON: keep the outcome, flag the body.
      code = 'EHR_RESPONSE_INVALID';
      reason = 'not-fhir-json';
    }
    const status = result.kind === 'failed' ? undefined : result.status;
    if (verdict.outcome === 'unknown') {
      o.logger.warn(
        {
          tenant: call.target.tenantId,
          resourceType: call.info.resourceType,
          interaction: call.info.interaction,
          correlationId: call.correlationId,
          status: status ?? 0,
          reason: verdict.reason,
        },
        'ehr_client.write_outcome_unknown',
      );
    }
    const error =
      code === undefined
        ? undefined
        : failureError(
            call,
            code,
            state.attempts,
            {
              status: status ?? 0,
              outcome: verdict.outcome,
              ...(reason === undefined ? {} : { reason }),
              ...(retryAfterMs === undefined ? {} : { retryAfterMs }),
              ...(body ? { ehrCodes: outcomeCodes(body) } : {}),
            },
            result.kind === 'response' ? undefined : result.cause,
          );
    return Object.freeze({
      ...base,
      outcome: verdict.outcome,
      headers,
      ...(status === undefined ? {} : { status }),
      ...(body === undefined ? {} : { body }),
      ...(error === undefined ? {} : { error, category: error.category }),
      ...(retryAfterMs === undefined ? {} : { retryAfterMs }),
    });
  }

  function pickWriteHeaders(headers: IncomingHttpHeaders): WriteHeaders {
    const location = firstHeader(headers, 'location');
    const etag = firstHeader(headers, 'etag');
    const lastModified = firstHeader(headers, 'last-modified');
    const retryAfter = firstHeader(headers, 'retry-after');
    return Object.freeze({
      ...(location === undefined ? {} : { location }),
      ...(etag === undefined ? {} : { etag }),
      ...(lastModified === undefined ? {} : { lastModified }),
      ...(retryAfter === undefined ? {} : { retryAfter }),
    });
  }

  async function executeWrite(call: PreparedCall): Promise<WriteResult> {
    const state = newCallState();
    if (closed) {
      return writeResult(call, state, { kind: 'refused', error: new TetherError('SERVICE_UNAVAILABLE', 'The EHR client is closed.') });
    }
    const refused = await precheckScope(call);
    if (refused) return writeResult(call, state, { kind: 'refused', error: refused });
    const scope = openScope(call.deadlineAt, call.callerSignal);
    try {
      let release: Release;
      try {
        release = await acquireSlot(call, scope.signal);
      } catch (reason) {
        return writeResult(call, state, { kind: 'refused', error: timeoutError(call, reason, 'waiting for a concurrency slot', 0) });
      }
      try {
        // Exactly one send (two after a 401, see sendWithAuth). Whatever happens, it is classified, not retried.
        return writeResult(call, state, await sendWithAuth(call, state, scope.signal));
      } finally {
        release();
      }
    } finally {
      scope.dispose();
    }
  }

  // ------------------------------------------------------------------------------------------------ API

  function checkType(resourceType: unknown): string {
    if (typeof resourceType !== 'string' || !RESOURCE_TYPE_PATTERN.test(resourceType)) throw invalid('resourceType is not a FHIR resource type name.');
    return resourceType;
  }

  function checkId(id: unknown, field: string): string {
    if (typeof id !== 'string' || !ID_PATTERN.test(id)) throw invalid(`${field} is not a valid FHIR id.`, { field });
    return id;
  }

  function checkResource(resource: FhirResource): FhirResource {
    if (typeof resource !== 'object' || resource === null || Array.isArray(resource)) throw invalid('resource must be a FHIR resource object.');
    checkType(resource.resourceType);
    return resource;
  }

  /** Turns `3` into `W/"3"`; passes an ETag through. */
  function ifMatchValue(value: string): string {
    if (/^(W\/)?"[^"]*"$/.test(value)) return value;
    if (ID_PATTERN.test(value)) return `W/"${value}"`;
    throw invalid('ifMatch must be an ETag such as W/"3" or a version id.', { field: 'ifMatch' });
  }

  /** Origin-relative path of a `next` link, verbatim; refuses other origins (credentials stay home). */
  function nextPath(link: string, target: ResolvedTarget, baseUrl: string): string {
    // eslint-disable-next-line no-control-regex -- control characters are exactly what must be refused
    if (/[\s\x00-\x1f\x7f]/.test(link)) {
      throw new TetherError('EHR_RESPONSE_INVALID', 'A next link contains whitespace or control characters.', { details: { tenant: target.tenantId } });
    }
    let url: URL;
    try {
      url = new URL(link, `${baseUrl.replace(/\/+$/, '')}/`);
    } catch {
      throw new TetherError('EHR_RESPONSE_INVALID', 'A next link is not a URL.', { details: { tenant: target.tenantId } });
    }
    if (url.origin !== target.origin || url.username !== '' || url.password !== '') {
      // Never follow: the request would carry the tenant's bearer token to another host.
      throw invalid('A next link points to another origin; it was not followed.', { tenant: target.tenantId, reason: 'cross-origin-next-link' });
    }
    const absolute = /^[A-Za-z][A-Za-z0-9+.-]*:\/\/[^/?#]*(.*)$/.exec(link);
    let path = absolute ? (absolute[1] ?? '') : `${url.pathname}${url.search}`;
    const hash = path.indexOf('#');
    if (hash !== -1) path = path.slice(0, hash);
    if (!path.startsWith('/')) path = `/${path}`;
    return path;
  }

  const client: EhrClient = {
    read<T extends FhirResource = FhirResource>(target: EhrTarget, context: string, resourceType: string, id: string, options: CallOptions = NO_OPTIONS) {
      // The hot path of the client: prepared without classifyRequest (the interaction is known) and returned
      // without another async layer. A malformed call still rejects, it never throws synchronously.
      let call: PreparedCall;
      try {
        const type = checkType(resourceType);
        const checkedId = checkId(id, 'id');
        const resolved = resolveTarget(target);
        checkContext(context);
        call = finishPrepare(resolved, context, 'GET', `${resolved.basePath}/${type}/${checkedId}`, readInfo(type), undefined, NO_HEADERS, options);
      } catch (err) {
        return Promise.reject(err as Error);
      }
      return executeRead(call) as Promise<EhrResponse<T>>;
    },

    async vread<T extends FhirResource = FhirResource>(
      target: EhrTarget,
      context: string,
      resourceType: string,
      id: string,
      versionId: string,
      options: CallOptions = {},
    ) {
      const path = `${checkType(resourceType)}/${checkId(id, 'id')}/_history/${checkId(versionId, 'versionId')}`;
      return (await executeRead(prepare(target, context, 'GET', path, undefined, undefined, NO_HEADERS, options))) as EhrResponse<T>;
    },

    async search(target, context, resourceType, params, options = {}) {
      const type = checkType(resourceType);
      const query = toSearchParams(params);
      const call =
        options.method === 'POST'
          ? prepare(target, context, 'POST', `${type}/_search`, undefined, { form: query }, NO_HEADERS, options)
          : prepare(target, context, 'GET', type, query, undefined, NO_HEADERS, options);
      const answer = await executeRead(call);
      if (answer.body.resourceType !== 'Bundle') {
        throw failureError(call, 'EHR_RESPONSE_INVALID', answer.attempts, { status: answer.status, reason: 'not-a-bundle' });
      }
      return answer as EhrResponse<FhirBundle>;
    },

    async *searchPages(target, context, resourceType, params, options = {}) {
      const maxPages = options.maxPages ?? s.maxPages;
      if (!Number.isInteger(maxPages) || maxPages < 1) throw invalid('maxPages must be a positive integer.');
      let page = (await client.search(target, context, resourceType, params, options)).body;
      const resolved = resolveTarget(target);
      const info: InteractionInfo = {
        interaction: 'search-type',
        resourceType,
        isWrite: false,
        scopeChecks: [{ resourceType, interaction: 'search-type' }],
      };
      const seen = new Set<string>();
      for (let count = 1; ; count++) {
        yield page;
        const next = page.link?.find((l) => l.relation === 'next')?.url;
        if (typeof next !== 'string' || next === '') return;
        if (count >= maxPages) {
          throw new TetherError('EHR_RESPONSE_INVALID', `The search has more than ${maxPages} pages; stopped.`, {
            details: { tenant: resolved.tenantId, resourceType, reason: 'max-pages', maxPages },
          });
        }
        if (seen.has(next)) {
          throw new TetherError('EHR_RESPONSE_INVALID', 'The search pages link back to an earlier page; stopped.', {
            details: { tenant: resolved.tenantId, resourceType, reason: 'pagination-loop' },
          });
        }
        seen.add(next);
        const path = nextPath(next, resolved, target.baseUrl);
        const { method: _method, ...callOptions } = options;
        const call = finishPrepare(resolved, context, 'GET', path, info, undefined, NO_HEADERS, callOptions);
        const answer = await executeRead(call);
        if (answer.body.resourceType !== 'Bundle') {
          throw new TetherError('EHR_RESPONSE_INVALID', 'A search page is not a Bundle.', { details: { tenant: resolved.tenantId, resourceType } });
        }
        page = answer.body as FhirBundle;
      }
    },

    async create(target, context, resource, options = {}) {
      const type = checkResource(resource).resourceType;
      const given = options.ifNoneExist;
      const ifNoneExist = given === undefined || typeof given === 'string' ? given : toSearchParams(given).toString();
      const headers = { 'if-none-exist': ifNoneExist, prefer: options.prefer };
      const call = prepare(target, context, 'POST', type, undefined, { json: resource }, headers, options);
      return executeWrite(call);
    },

    async update(target, context, resource, options = {}) {
      const type = checkResource(resource).resourceType;
      const id = checkId(resource.id, 'resource.id');
      const ifMatch = options.ifMatch === undefined ? undefined : ifMatchValue(options.ifMatch);
      const call = prepare(target, context, 'PUT', `${type}/${id}`, undefined, { json: resource }, { 'if-match': ifMatch, prefer: options.prefer }, options);
      return executeWrite(call);
    },

    async delete(target, context, resourceType, id, options = {}) {
      const call = prepare(target, context, 'DELETE', `${checkType(resourceType)}/${checkId(id, 'id')}`, undefined, undefined, NO_HEADERS, options);
      return executeWrite(call);
    },

    async transaction(target, context, bundle, options = {}) {
      checkResource(bundle);
      const call = prepare(target, context, 'POST', '', undefined, { json: bundle }, { prefer: options.prefer }, options);
      return executeWrite(call);
    },

    async request(target: EhrTarget, context: string, spec: EhrRequestSpec, options: CallOptions = {}): Promise<EhrResponse & WriteResult> {
      if (typeof spec !== 'object' || spec === null) throw invalid('spec must be an object.');
      if (!['GET', 'POST', 'PUT', 'DELETE', 'PATCH'].includes(spec.method)) throw invalid('spec.method is not supported.');
      if (typeof spec.path !== 'string' || spec.path.startsWith('/') || spec.path.includes('?') || spec.path.includes('#')) {
        throw invalid('spec.path must be relative to the FHIR base, without query (use spec.query).');
      }
      if (spec.method === 'GET' && spec.body !== undefined) throw invalid('A GET has no body.');
      const query = spec.query === undefined ? undefined : toSearchParams(spec.query);
      const headers = {
        'if-match': spec.ifMatch === undefined ? undefined : ifMatchValue(spec.ifMatch),
        'if-none-exist': spec.ifNoneExist,
        prefer: spec.prefer,
      };
      const call = prepare(target, context, spec.method, spec.path, query, spec.body === undefined ? undefined : { json: spec.body }, headers, options);
      // The overloads give each caller the precise type; at runtime the method decides which one it gets.
      return (await (call.info.isWrite ? executeWrite(call) : executeRead(call))) as EhrResponse & WriteResult;
    },

    on(event, listener) {
      return events.on(event, listener);
    },

    circuitState(tenantId, baseUrl) {
      const origin = new URL(baseUrl).origin;
      return origins.get(`${tenantId}\u0000${origin}`)?.circuit.state ?? 'closed';
    },

    async close() {
      closed = true;
      const all = [...pools.values()];
      pools.clear();
      await Promise.all(all.map((p) => p.close()));
    },
  };
  return client;
}

export type { EhrClientEventMap };
