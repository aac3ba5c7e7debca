/**
 * Correlation ids and W3C Trace Context (`traceparent`) for EHR requests.
 *
 * Every request carries `X-Request-Id` and `X-Correlation-Id` (the same value for every attempt of one call, so an
 * EHR's logs and the sandbox write log can be joined with ours) and a `traceparent` whose trace id is the same for
 * every attempt and whose span id is new per attempt (each attempt is its own client span).
 *
 * @see https://www.w3.org/TR/trace-context/#traceparent-header
 */
import { context as otelContext, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace as otelTrace, type Context, type Span, type Tracer } from '@opentelemetry/api';
import { TetherError } from '@tether/core';
import type { IdSource } from './options.js';

/** The trace a call belongs to. */
export interface TraceContext {
  /** 32 lower-case hex digits, not all zero. */
  readonly traceId: string;
  /** The caller's span (the parent of every attempt's span), when the caller gave one. */
  readonly parentSpanId: string | undefined;
  /** 2 hex digits; `01` = sampled. */
  readonly flags: string;
}

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/;
const ALL_ZERO = /^0+$/;
/** All zeros (invalid as a trace or span id). The first-character test spares the regex on almost every id. */
const isAllZero = (id: string): boolean => id.charCodeAt(0) === 48 && ALL_ZERO.test(id);
/** Correlation ids go into headers and logs: a conservative token alphabet keeps header injection out. */
const CORRELATION_ID = /^[A-Za-z0-9._:@-]{1,128}$/;

/**
 * Parses a `traceparent` header value. Returns `undefined` for anything invalid (an invalid parent is dropped and
 * a new trace started, as the spec asks, rather than failing the EHR call).
 */
export function parseTraceparent(value: string | undefined): TraceContext | undefined {
  if (value === undefined) return undefined;
  const m = TRACEPARENT.exec(value.trim());
  if (!m) return undefined;
  const [, version, traceId, spanId, flags, rest] = m;
  if (version === undefined || traceId === undefined || spanId === undefined || flags === undefined) return undefined;
  // Version ff is forbidden; version 00 must have nothing after the flags. Future versions may append fields.
  if (version === 'ff' || (version === '00' && rest !== undefined)) return undefined;
  if (ALL_ZERO.test(traceId) || ALL_ZERO.test(spanId)) return undefined;
  return { traceId, parentSpanId: spanId, flags };
}

/** Starts the trace of a call: the caller's trace when a valid `traceparent` is given, a new one otherwise. */
export function startTrace(parent: string | undefined, ids: IdSource): TraceContext {
  const parsed = parseTraceparent(parent);
  if (parsed) return parsed;
  let traceId = ids.traceId();
  // A (vanishingly unlikely, or injected) all-zero id is invalid; replace it rather than send it.
  if (isAllZero(traceId)) traceId = `${traceId.slice(0, 31)}1`;
  // Not sampled: this client records no spans itself; a caller with a tracer passes its own traceparent.
  return { traceId, parentSpanId: undefined, flags: '00' };
}

/** The span id of one attempt: fresh, never all zero. */
export function attemptSpanId(ids: IdSource): string {
  const spanId = ids.spanId();
  return isAllZero(spanId) ? `${spanId.slice(0, 15)}1` : spanId;
}

/** The `traceparent` of one attempt: the call's trace id, a fresh span id. */
export function attemptTraceparent(trace: TraceContext, ids: IdSource): { header: string; spanId: string } {
  const spanId = attemptSpanId(ids);
  return { header: `00-${trace.traceId}-${spanId}-${trace.flags}`, spanId };
}

/**
 * The correlation id of a call: the caller's (validated, because it is sent as a header and logged) or a new one.
 * Callers must not put PHI in it.
 */
export function correlationIdFor(given: string | undefined, ids: IdSource): string {
  if (given === undefined) return ids.correlationId();
  if (!CORRELATION_ID.test(given)) {
    throw new TetherError('EHR_REQUEST_INVALID', 'correlationId must be 1-128 characters of A-Z a-z 0-9 . _ : @ -', {
      details: { field: 'correlationId' },
    });
  }
  return given;
}

/**
 * OpenTelemetry (through `@opentelemetry/api`; the host registers an SDK, or nothing is recorded): one CLIENT span
 * per attempt, `tether.ehr <METHOD>`, whose span id is the one the attempt's `traceparent` carries, so the EHR's
 * trace joins ours. Parent: the caller's `traceparent` when given (the write-back worker passes its attempt span's),
 * else the span active in the host's context, else none (a root span). Attributes name the tenant, the resource type
 * and interaction, the correlation id, the status, the outcome and the error code: never ids, URLs or payloads.
 */
export class AttemptTracing {
  readonly #tracer: Tracer;

  constructor(tracer: Tracer = otelTrace.getTracer('tether')) {
    this.#tracer = tracer;
  }

  /** Starts an attempt's span; `undefined` when no SDK records it (the attempt then uses its own ids). */
  start(call: TraceContext, name: string, attributes: Record<string, string | number>): Span | undefined {
    let parent: Context;
    if (call.parentSpanId !== undefined) {
      parent = otelTrace.setSpanContext(ROOT_CONTEXT, { traceId: call.traceId, spanId: call.parentSpanId, traceFlags: call.flags === '01' ? 1 : 0, isRemote: true });
    } else {
      parent = otelContext.active();
    }
    const span = this.#tracer.startSpan(name, { kind: SpanKind.CLIENT, attributes }, parent);
    return span.isRecording() ? span : undefined;
  }

  /** Ends an attempt's span with what came back. */
  end(span: Span, status: number, outcome: string | undefined, code: string | undefined): void {
    if (status > 0) span.setAttribute('http.response.status_code', status);
    if (outcome !== undefined) span.setAttribute('tether.outcome', outcome);
    if (code !== undefined) {
      span.setAttribute('error.type', code);
      span.setStatus({ code: SpanStatusCode.ERROR, message: code });
    }
    span.end();
  }
}
