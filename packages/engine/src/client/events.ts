/**
 * Typed lifecycle events of the EHR client. Metrics, audit and the console subscribe to these instead of the
 * client knowing about them.
 *
 * **No PHI in any payload**: tenant ids, resource types, interactions, statuses, timings, error codes and
 * correlation ids only. Never a URL (search values are patient data), an id of a patient context, a header value
 * or a body.
 */
import { TypedEmitter, type ErrorCategory, type ErrorCode } from '@tether/core';
import type { ClientLogger } from './options.js';
import type { EhrInteraction } from './interaction.js';

/** The five outcomes of a write (see docs/client.md for the classification table). */
export type WriteOutcome = 'applied' | 'not_sent' | 'rejected' | 'rate_limited' | 'unknown';

/**
 * The outcome of one attempt as reported in `http:response`. Writes use the five {@link WriteOutcome}s. Reads
 * use `ok` (2xx), `rejected` (4xx), `rate_limited` (429), `failed` (5xx, network error or timeout after the
 * request was sent) and `not_sent`.
 */
export type AttemptOutcome = WriteOutcome | 'ok' | 'failed';

/** Why an attempt failed without an HTTP status (or why it was retried). */
export type FailureReason =
  | 'connect-refused'
  | 'connect-timeout'
  | 'dns'
  | 'connect-error'
  | 'reset'
  | 'headers-timeout'
  | 'body-timeout'
  | 'attempt-timeout'
  | 'deadline'
  | 'aborted'
  | 'body-too-large'
  | 'network';

/** Facts shared by the per-request events. */
export interface RequestFacts {
  readonly tenant: string;
  readonly method: string;
  /** `undefined` for system-level calls (transaction, batch, metadata). */
  readonly resourceType: string | undefined;
  readonly interaction: EhrInteraction;
  readonly correlationId: string;
}

export type EhrClientEventMap = {
  /** One per attempt that reached the transport (sent, or failed to connect). */
  'http:response': RequestFacts & {
    /** HTTP status; 0 when there was none (network error, timeout). */
    readonly status: number;
    readonly outcome: AttemptOutcome;
    /** The error category when the attempt failed. */
    readonly category: ErrorCategory | undefined;
    /** The error code when the attempt failed. */
    readonly code: ErrorCode | undefined;
    /** Network failure reason when there was no status. */
    readonly reason: FailureReason | undefined;
    /** Duration of the attempt, in milliseconds. */
    readonly ms: number;
    /** 1 for the first attempt. */
    readonly attempt: number;
  };
  /** A read is about to be retried. */
  'http:retry': RequestFacts & {
    /** The attempt that failed. */
    readonly attempt: number;
    /** The wait before the next attempt, in milliseconds. */
    readonly delayMs: number;
    /** HTTP status of the failed attempt; 0 when none. */
    readonly status: number;
    readonly reason: FailureReason | 'status';
    /** Whether `delayMs` comes from the EHR's Retry-After. */
    readonly retryAfter: boolean;
  };
  /**
   * A request had to wait, or was refused, because of a rate limit: the tenant's own token bucket (`local`) or a
   * 429 / pause ordered by the EHR (`server`).
   */
  'http:rate-limited': RequestFacts & {
    readonly source: 'local' | 'server';
    /** How long the request waits (or would have had to wait), in milliseconds. */
    readonly waitMs: number;
    /** `false` when the wait did not fit the deadline or the Retry-After cap, and the call gave up. */
    readonly waited: boolean;
  };
  /** The EHR answered 401; the token provider is asked for a fresh token and the request resent once. */
  'auth:refresh-after-401': RequestFacts & { readonly attempt: number };
  /** Identical concurrent GETs share one request. Emitted for each caller that joined an in-flight request. */
  'http:coalesced': RequestFacts;
  /** A call waited for a concurrency slot of its tenant. */
  'queue:waited': { readonly tenant: string; readonly priority: 'interactive' | 'batch'; readonly waitedMs: number };
  /** A tenant's circuit opened: calls fail fast with EHR_CIRCUIT_OPEN until `halfOpenAfterMs` has passed. */
  'breaker:open': {
    readonly tenant: string;
    /** Scheme, host and port of the EHR (never a path). */
    readonly origin: string;
    /** Whether it reopened after a failed trial request. */
    readonly afterTrial: boolean;
    readonly halfOpenAfterMs: number;
  };
  /** One trial request is let through an open circuit. */
  'breaker:half-open': { readonly tenant: string; readonly origin: string };
  /** The trial request succeeded: the circuit closed. */
  'breaker:close': { readonly tenant: string; readonly origin: string };
};

export type EhrClientEventName = keyof EhrClientEventMap;

/** Any event, as one discriminated union (what the `onEvent` sink receives). */
export type EhrClientEvent = { [K in EhrClientEventName]: { readonly name: K; readonly payload: EhrClientEventMap[K] } }[EhrClientEventName];

export type EhrClientListener<K extends EhrClientEventName> = (payload: EhrClientEventMap[K]) => void;

/**
 * The client's emitter: core's {@link TypedEmitter} (listeners isolated: a broken metrics listener must never
 * turn a successful EHR call into a failure or, worse, make a write look unsent) plus the optional `onEvent` sink.
 * Payloads are frozen so one listener cannot change what the next one sees.
 */
export class ClientEvents {
  readonly #emitter: TypedEmitter<EhrClientEventMap>;
  readonly #sink: ((event: EhrClientEvent) => void) | undefined;
  readonly #logger: ClientLogger;
  /** Listeners per event (mirroring the emitter's sets), so that an event nobody hears costs nothing. */
  readonly #subscribed = new Map<EhrClientEventName, Set<unknown>>();

  constructor(sink: ((event: EhrClientEvent) => void) | undefined, logger: ClientLogger) {
    this.#sink = sink;
    this.#logger = logger;
    this.#emitter = new TypedEmitter<EhrClientEventMap>({ onListenerError: (err, event) => this.#listenerFailed(event, err) });
  }

  /** Subscribes; returns the function that unsubscribes. */
  on<K extends EhrClientEventName>(name: K, fn: EhrClientListener<K>): () => void {
    const off = this.#emitter.on(name, fn);
    let set = this.#subscribed.get(name);
    if (!set) {
      set = new Set();
      this.#subscribed.set(name, set);
    }
    set.add(fn);
    const mirror = set;
    return () => {
      off();
      mirror.delete(fn);
    };
  }

  /**
   * Whether anyone receives `name` (the `onEvent` sink or a listener). Hot paths check this before they build a
   * payload: the client emits one `http:response` per attempt, and most deployments listen to few events.
   */
  wants(name: EhrClientEventName): boolean {
    return this.#sink !== undefined || (this.#subscribed.get(name)?.size ?? 0) > 0;
  }

  emit<K extends EhrClientEventName>(name: K, payload: EhrClientEventMap[K]): void {
    if (!this.wants(name)) return;
    const frozen = Object.freeze({ ...payload }) as EhrClientEventMap[K];
    if (this.#sink) {
      try {
        this.#sink({ name, payload: frozen } as EhrClientEvent);
      } catch (err) {
        this.#listenerFailed(name, err);
      }
    }
    this.#emitter.emit(name, frozen);
  }

  #listenerFailed(event: string, err: unknown): void {
    // The error's name only: a listener's message could echo anything it was handed.
    this.#logger.error({ event, error: err instanceof Error ? err.name : typeof err }, 'ehr_client.listener_failed');
  }
}
