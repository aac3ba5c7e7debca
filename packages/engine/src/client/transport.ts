import type { CancelSignal } from './cancel.js';
/**
 * One HTTP attempt over an undici dispatcher, recording the one fact every write classification depends on:
 * **could any byte of the request have left this process?**
 *
 * undici calls a handler's `onRequestStart` (legacy `onConnect`) from `writeH1` on an established socket, right
 * before it writes the request line and headers, and checks `request.aborted` immediately after. So:
 * - an error before `onRequestStart` (DNS failure, `ECONNREFUSED`, `UND_ERR_CONNECT_TIMEOUT`, TLS failure, the
 *   pool being closed, our own timeout while queued or connecting) means **nothing was sent**;
 * - once `onRequestStart` ran without us aborting in it, the request may be on the wire, and anything short of a
 *   complete response (reset, timeout, "other side closed") leaves a write's outcome **unknown**.
 * A call whose deadline passes before `onRequestStart` is resolved at once as not sent; if undici reaches
 * `onRequestStart` for it later, the handler aborts there, and undici writes nothing.
 *
 * The default pool uses `pipelining: 1` so that undici never re-dispatches a request that sat behind a failed one
 * on a socket: each request is written at most once.
 */
import type { Dispatcher } from 'undici';
import type { FailureReason } from './events.js';
import type { HttpMethod } from './interaction.js';

/** Response headers as undici parses them: lower-case names. */
export type IncomingHttpHeaders = Record<string, string | string[] | undefined>;

export interface TransportRequest {
  readonly method: HttpMethod;
  /** Origin-relative path with query, sent verbatim. */
  readonly path: string;
  readonly headers: Readonly<Record<string, string>>;
  readonly body: Buffer | undefined;
  readonly headersTimeoutMs: number;
  readonly bodyTimeoutMs: number;
  readonly maxResponseBytes: number;
  /** Budget of this attempt in milliseconds: min(attempt timeout, time left before the deadline). */
  readonly timeoutMs: number;
  /** What to report when {@link TransportRequest.timeoutMs} runs out. */
  readonly timeoutReason: 'attempt-timeout' | 'deadline';
  /** Aborts the attempt (caller cancelled, or the call's deadline passed). Its reason must be a {@link CallAbort}. */
  readonly signal: CancelSignal;
}

export type TransportResult =
  /** A complete response. */
  | { readonly kind: 'response'; readonly status: number; readonly headers: IncomingHttpHeaders; readonly body: Buffer }
  /** The status and headers arrived, then the body failed (reset, timeout, too large). */
  | { readonly kind: 'body-failed'; readonly status: number; readonly headers: IncomingHttpHeaders; readonly reason: FailureReason; readonly cause: unknown }
  /** No response. `sent` tells whether any byte may have left (see the module comment). */
  | { readonly kind: 'failed'; readonly sent: boolean; readonly reason: FailureReason; readonly cause: unknown };

/** Why a call's signal aborted: the deadline, or the caller's own signal. */
export class CallAbort extends Error {
  readonly reason: 'deadline' | 'aborted' | 'attempt-timeout' | 'body-too-large';
  constructor(reason: 'deadline' | 'aborted' | 'attempt-timeout' | 'body-too-large') {
    super(`EHR call ${reason}`);
    this.name = 'CallAbort';
    this.reason = reason;
  }
}

export interface TransportTimers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const CODE_REASONS: Readonly<Record<string, FailureReason>> = {
  UND_ERR_CONNECT_TIMEOUT: 'connect-timeout',
  ECONNREFUSED: 'connect-refused',
  ENOTFOUND: 'dns',
  EAI_AGAIN: 'dns',
  UND_ERR_HEADERS_TIMEOUT: 'headers-timeout',
  UND_ERR_BODY_TIMEOUT: 'body-timeout',
  ECONNRESET: 'reset',
  EPIPE: 'reset',
  UND_ERR_SOCKET: 'reset',
  ECONNABORTED: 'reset',
};

/** Maps an error from undici (or our own abort) to a reason; looks through `cause` chains. */
export function failureReasonOf(err: unknown, sent: boolean): FailureReason {
  let current: unknown = err;
  for (let depth = 0; depth < 5 && current !== undefined && current !== null; depth++) {
    if (current instanceof CallAbort) return current.reason;
    const code = (current as { code?: unknown }).code;
    if (typeof code === 'string' && CODE_REASONS[code] !== undefined) return CODE_REASONS[code];
    current = (current as { cause?: unknown }).cause;
  }
  return sent ? 'network' : 'connect-error';
}

/**
 * Sends one request and resolves with what happened. Never rejects: every failure is a {@link TransportResult}.
 */
export function sendOnce(dispatcher: Dispatcher, request: TransportRequest, timers: TransportTimers): Promise<TransportResult> {
  return new Promise<TransportResult>((resolve) => {
    let settled = false;
    let started = false;
    /** Set when we gave up before `onRequestStart`: the request must then never be written. */
    let cancelled: Error | undefined;
    let controller: Dispatcher.DispatchController | undefined;
    let status = 0;
    let headers: IncomingHttpHeaders = {};
    const chunks: Buffer[] = [];
    let size = 0;

    const finish = (result: TransportResult): void => {
      if (settled) return;
      settled = true;
      timers.clearTimeout(timer);
      request.signal.removeEventListener('abort', onSignal);
      resolve(result);
    };

    const fail = (err: unknown): void => {
      const reason = failureReasonOf(err, started);
      if (status >= 200) finish({ kind: 'body-failed', status, headers, reason, cause: err });
      else finish({ kind: 'failed', sent: started, reason, cause: err });
    };

    const giveUp = (err: CallAbort): void => {
      if (settled) return;
      if (!started) {
        // Not on the wire yet (queued in the pool, or still connecting): resolve now, and make sure it never is.
        cancelled = err;
        fail(err);
        return;
      }
      // On the wire: abort it; undici reports back through onResponseError, which settles.
      controller?.abort(err);
      // Belt and braces: if undici had already finished, settle anyway.
      fail(err);
    };

    const onSignal = (): void => {
      const reason: unknown = request.signal.reason;
      giveUp(reason instanceof CallAbort ? reason : new CallAbort('aborted'));
    };

    const timer = timers.setTimeout(() => giveUp(new CallAbort(request.timeoutReason)), Math.max(0, request.timeoutMs));
    if (request.signal.aborted) {
      onSignal();
      return;
    }
    request.signal.addEventListener('abort', onSignal, { once: true });

    const handler: Dispatcher.DispatchHandler = {
      onRequestStart(ctrl) {
        controller = ctrl;
        if (cancelled !== undefined || settled) {
          // We already answered "not sent" for this request: abort before undici writes a single byte.
          ctrl.abort(cancelled ?? new CallAbort('aborted'));
          return;
        }
        started = true;
      },
      onResponseStart(_ctrl, statusCode, responseHeaders) {
        // 1xx informational responses precede the final one.
        if (statusCode < 200) return;
        status = statusCode;
        headers = responseHeaders;
      },
      onResponseData(ctrl, chunk) {
        size += chunk.length;
        if (size > request.maxResponseBytes) {
          ctrl.abort(new CallAbort('body-too-large'));
          return;
        }
        chunks.push(chunk);
      },
      onResponseEnd() {
        if (status === 0) {
          finish({ kind: 'failed', sent: true, reason: 'network', cause: new Error('response ended without a status') });
          return;
        }
        finish({ kind: 'response', status, headers, body: Buffer.concat(chunks, size) });
      },
      onResponseError(_ctrl, err) {
        fail(err);
      },
    };

    try {
      dispatcher.dispatch(
        {
          path: request.path,
          method: request.method,
          headers: request.headers,
          body: request.body ?? null,
          headersTimeout: request.headersTimeoutMs,
          bodyTimeout: request.bodyTimeoutMs,
          // Only reads are idempotent. Irrelevant without pipelining, but says what we mean.
          idempotent: request.method === 'GET',
        },
        handler,
      );
    } catch (err) {
      // Synchronous refusal (closed pool, invalid argument): nothing was written.
      fail(err);
    }
  });
}
