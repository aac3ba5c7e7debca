/**
 * Correlation ids and W3C Trace Context (`traceparent`) for EHR requests.
 *
 * Every request carries `X-Request-Id` and `X-Correlation-Id` (the same value for every attempt of one call, so an
 * EHR's logs and the sandbox write log can be joined with ours) and a `traceparent` whose trace id is the same for
 * every attempt and whose span id is new per attempt (each attempt is its own client span).
 *
 * @see https://www.w3.org/TR/trace-context/#traceparent-header
 */
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
