/**
 * Outcome classification: pure functions from "what happened on the wire" to error codes, write outcomes, read
 * retry decisions and breaker verdicts. The client's control flow lives in `client.ts`; the rules live here, in one
 * place, with the table in docs/client.md and tests beside.
 */
import type { ErrorCode } from '@tether/core';
import type { CircuitVerdict } from './circuit.js';
import type { FailureReason, WriteOutcome } from './events.js';
import type { TransportResult } from './transport.js';

/** Statuses on which a read is retried (besides network failures): throttling and gateway failures. */
export const RETRYABLE_READ_STATUSES: ReadonlySet<number> = new Set([429, 502, 503, 504]);

/** Failures without a status that are our own doing, not the EHR's: never retried, never counted by the breaker. */
const SELF_INFLICTED: ReadonlySet<FailureReason> = new Set<FailureReason>(['deadline', 'aborted']);

/** Reasons that are timeouts (reported as `EHR_TIMEOUT` for reads and for unsent writes). */
const TIMEOUT_REASONS: ReadonlySet<FailureReason> = new Set<FailureReason>([
  'connect-timeout',
  'headers-timeout',
  'body-timeout',
  'attempt-timeout',
  'deadline',
  'aborted',
]);

/** The error code of an HTTP status that is not a success. */
export function codeForStatus(status: number): ErrorCode {
  switch (status) {
    case 400:
    case 422:
      return 'EHR_VALIDATION';
    case 401:
      return 'EHR_UNAUTHORIZED';
    case 403:
      return 'EHR_FORBIDDEN';
    case 404:
    case 410:
      return 'EHR_NOT_FOUND';
    case 408:
      return 'EHR_TIMEOUT';
    case 409:
      return 'EHR_CONFLICT';
    case 412:
      return 'EHR_PRECONDITION_FAILED';
    case 429:
      return 'EHR_RATE_LIMITED';
  }
  if (status >= 400 && status < 500) return 'EHR_VALIDATION'; // 405, 406, 413, 415...: the request itself is refused
  if (status >= 500 && status < 600) return 'EHR_UNAVAILABLE';
  return 'EHR_RESPONSE_INVALID'; // 1xx as final, 3xx (never followed: credentials stay on the tenant's origin)
}

/** The error code of a failure without a usable status. */
export function codeForReason(reason: FailureReason): ErrorCode {
  if (reason === 'body-too-large') return 'EHR_RESPONSE_INVALID';
  return TIMEOUT_REASONS.has(reason) ? 'EHR_TIMEOUT' : 'EHR_UNAVAILABLE';
}

/** How one attempt of a read ended. */
export interface ReadVerdict {
  readonly ok: boolean;
  /** Whether another attempt may help (transient, and not caused by our own deadline/cancel). */
  readonly retryable: boolean;
  readonly code: ErrorCode | undefined;
  readonly status: number;
  readonly reason: FailureReason | undefined;
}

/**
 * Reads are safe to repeat: a failure is retried when it is transient. That is 429/502/503/504 and every network
 * failure or timeout, whether or not the request was sent. A 500 is not retried (it is more often a bug on the
 * request's path than a blip), nor is any 4xx.
 */
export function classifyReadAttempt(result: TransportResult): ReadVerdict {
  switch (result.kind) {
    case 'response':
      if (result.status >= 200 && result.status < 300) return { ok: true, retryable: false, code: undefined, status: result.status, reason: undefined };
      return {
        ok: false,
        retryable: RETRYABLE_READ_STATUSES.has(result.status),
        code: codeForStatus(result.status),
        status: result.status,
        reason: undefined,
      };
    case 'body-failed': {
      // The body of a success broke off: a network failure like any other. A failed error body: judge by status.
      if (result.status >= 200 && result.status < 300) {
        return {
          ok: false,
          retryable: result.reason !== 'body-too-large' && !SELF_INFLICTED.has(result.reason),
          code: codeForReason(result.reason),
          status: result.status,
          reason: result.reason,
        };
      }
      return {
        ok: false,
        retryable: RETRYABLE_READ_STATUSES.has(result.status),
        code: codeForStatus(result.status),
        status: result.status,
        reason: result.reason,
      };
    }
    case 'failed':
      return {
        ok: false,
        retryable: result.reason !== 'body-too-large' && !SELF_INFLICTED.has(result.reason),
        code: codeForReason(result.reason),
        status: 0,
        reason: result.reason,
      };
  }
}

/** The classified outcome of a write attempt. */
export interface WriteVerdict {
  readonly outcome: WriteOutcome;
  /** Set for every outcome but a clean `applied`. */
  readonly code: ErrorCode | undefined;
  readonly status: number;
  readonly reason: FailureReason | undefined;
}

/**
 * The write classification. The question behind every row is "could the EHR have applied it?":
 *
 * - **2xx → applied.** Also when the body then broke off or is not JSON: the status line is the EHR's word that it
 *   applied the write (Oracle Health answers creates with an empty 201 anyway); the error is attached, and the
 *   caller reads the resource back through `Location`.
 * - **4xx → rejected** (409, 412, 400/422, 404/410, 403, and 401 after the one refresh): the EHR refused it; HTTP
 *   semantics say a 4xx request was not applied. **429 → rate_limited** (not applied; wait Retry-After).
 *   408 is the exception: a proxy's "request timeout" may come after the origin got the request → unknown.
 * - **5xx → unknown**, unless the vendor profile lists that status as "never applied" → not_sent. A 503 *is* a
 *   response: behind a gateway, the application may have committed before the gateway gave up.
 * - **1xx/3xx as the final answer → unknown** (a 303 after a POST means "processed, look there"; we never follow
 *   redirects with credentials).
 * - **No response, request not written** (connect refused / timed out, DNS, our deadline while queued or
 *   connecting) → not_sent: the EHR cannot have seen it.
 * - **No response, request (possibly) written** (reset, socket closed, headers/body/attempt timeout, deadline or
 *   cancel while in flight) → unknown: the EHR may have applied it (commit-then-drop).
 */
export function classifyWriteAttempt(result: TransportResult, notAppliedStatuses: ReadonlySet<number>): WriteVerdict {
  const byStatus = (status: number, reason: FailureReason | undefined): WriteVerdict => {
    if (status >= 200 && status < 300) {
      return { outcome: 'applied', code: reason === undefined ? undefined : 'EHR_RESPONSE_INVALID', status, reason };
    }
    if (status === 429) return { outcome: 'rate_limited', code: 'EHR_RATE_LIMITED', status, reason };
    if (status === 408) return { outcome: 'unknown', code: 'EHR_OUTCOME_UNKNOWN', status, reason };
    if (status >= 400 && status < 500) return { outcome: 'rejected', code: codeForStatus(status), status, reason };
    if (status >= 500 && status < 600 && notAppliedStatuses.has(status)) {
      return { outcome: 'not_sent', code: 'EHR_UNAVAILABLE', status, reason };
    }
    return { outcome: 'unknown', code: 'EHR_OUTCOME_UNKNOWN', status, reason };
  };
  switch (result.kind) {
    case 'response':
      return byStatus(result.status, undefined);
    case 'body-failed':
      return byStatus(result.status, result.reason);
    case 'failed':
      if (!result.sent) return { outcome: 'not_sent', code: codeForReason(result.reason), status: 0, reason: result.reason };
      return { outcome: 'unknown', code: 'EHR_OUTCOME_UNKNOWN', status: 0, reason: result.reason };
  }
}

/**
 * What an attempt tells the circuit breaker. Only transient failures of the EHR count: connect errors, resets,
 * timeouts and 5xx. A 4xx or 429 is a healthy server saying no; our own deadline or cancel says nothing.
 */
export function circuitVerdict(result: TransportResult): CircuitVerdict {
  switch (result.kind) {
    case 'response':
      return result.status >= 500 ? 'failure' : 'success';
    case 'body-failed':
      if (result.status >= 500) return 'failure';
      if (result.reason === 'body-too-large' || SELF_INFLICTED.has(result.reason)) return 'ignore';
      return 'failure';
    case 'failed':
      if (SELF_INFLICTED.has(result.reason)) return 'ignore';
      return 'failure';
  }
}
