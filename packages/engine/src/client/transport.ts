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
  /**
   * Request headers as undici's flat list `[name, value, name, value, ...]` (lower-case names). undici accepts an
   * object too; the list spares it an `Object.keys` per request.
   */
  readonly headers: readonly string[];
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
    const attempt = new Attempt(request, timers, resolve);
    if (request.signal.aborted) {
      attempt.onSignal();
      return;
    }
    request.signal.addEventListener('abort', attempt.onSignal, { once: true });
    try {
      dispatcher.dispatch(
        {
          path: request.path,
          method: request.method,
          headers: request.headers as string[],
          body: request.body ?? null,
          headersTimeout: request.headersTimeoutMs,
          bodyTimeout: request.bodyTimeoutMs,
          // Only reads are idempotent. Irrelevant without pipelining, but says what we mean.
          idempotent: request.method === 'GET',
        },
        attempt,
      );
    } catch (err) {
      // Synchronous refusal (closed pool, invalid argument): nothing was written.
      attempt.fail(err);
    }
  });
}

const EMPTY_BODY = Buffer.alloc(0);

/**
 * The undici handler of one attempt, and its state. A class (methods on the prototype) rather than a closure per
 * callback: one is made for every request.
 */
class Attempt implements Dispatcher.DispatchHandler {
  readonly #request: TransportRequest;
  readonly #timers: TransportTimers;
  readonly #resolve: (result: TransportResult) => void;
  readonly #timer: unknown;
  #settled = false;
  #started = false;
  /** Set when we gave up before `onRequestStart`: the request must then never be written. */
  #cancelled: Error | undefined;
  #controller: Dispatcher.DispatchController | undefined;
  #status = 0;
  #headers: IncomingHttpHeaders = {};
  /** The body: its first chunk, then an array only when there are more (most FHIR reads arrive in one). */
  #first: Buffer | undefined;
  #chunks: Buffer[] | undefined;
  #size = 0;

  constructor(request: TransportRequest, timers: TransportTimers, resolve: (result: TransportResult) => void) {
    this.#request = request;
    this.#timers = timers;
    this.#resolve = resolve;
    this.#timer = timers.setTimeout(() => this.#giveUp(new CallAbort(request.timeoutReason)), Math.max(0, request.timeoutMs));
  }

  /** The signal's abort listener (an arrow property: it is passed around as a function). */
  readonly onSignal = (): void => {
    const reason: unknown = this.#request.signal.reason;
    this.#giveUp(reason instanceof CallAbort ? reason : new CallAbort('aborted'));
  };

  #finish(result: TransportResult): void {
    if (this.#settled) return;
    this.#settled = true;
    this.#timers.clearTimeout(this.#timer);
    this.#request.signal.removeEventListener('abort', this.onSignal);
    this.#resolve(result);
  }

  fail(err: unknown): void {
    const reason = failureReasonOf(err, this.#started);
    if (this.#status >= 200) this.#finish({ kind: 'body-failed', status: this.#status, headers: this.#headers, reason, cause: err });
    else this.#finish({ kind: 'failed', sent: this.#started, reason, cause: err });
  }

  #giveUp(err: CallAbort): void {
    if (this.#settled) return;
    if (!this.#started) {
      // Not on the wire yet (queued in the pool, or still connecting): resolve now, and make sure it never is.
      this.#cancelled = err;
      this.fail(err);
      return;
    }
    // On the wire: abort it; undici reports back through onResponseError, which settles.
    this.#controller?.abort(err);
    // Belt and braces: if undici had already finished, settle anyway.
    this.fail(err);
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.#controller = controller;
    if (this.#cancelled !== undefined || this.#settled) {
      // We already answered "not sent" for this request: abort before undici writes a single byte.
      controller.abort(this.#cancelled ?? new CallAbort('aborted'));
      return;
    }
    this.#started = true;
  }

  onResponseStart(_controller: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders): void {
    // 1xx informational responses precede the final one.
    if (statusCode < 200) return;
    this.#status = statusCode;
    this.#headers = headers;
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    this.#size += chunk.length;
    if (this.#size > this.#request.maxResponseBytes) {
      controller.abort(new CallAbort('body-too-large'));
      return;
    }
    if (this.#first === undefined) this.#first = chunk;
    else (this.#chunks ??= [this.#first]).push(chunk);
  }

  onResponseEnd(): void {
    if (this.#status === 0) {
      this.#finish({ kind: 'failed', sent: true, reason: 'network', cause: new Error('response ended without a status') });
      return;
    }
    const body = this.#chunks ? Buffer.concat(this.#chunks, this.#size) : (this.#first ?? EMPTY_BODY);
    this.#finish({ kind: 'response', status: this.#status, headers: this.#headers, body });
  }

  onResponseError(_controller: Dispatcher.DispatchController, err: Error): void {
    this.fail(err);
  }
}
