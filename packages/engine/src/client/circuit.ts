/**
 * Circuit breaker for one (tenant, EHR origin).
 *
 * The decision *when to open* is cockatiel's: any cockatiel `IBreaker` (`ConsecutiveBreaker` by default,
 * `SamplingBreaker`, `CountBreaker`) is fed every counted result. The state machine around it is ours rather than
 * cockatiel's `CircuitBreakerPolicy`, for four reasons that matter to an EHR client:
 * - the clock is injected (the policy reads `Date.now()`), so half-open timing is testable and simulable;
 * - in half-open, **one** trial request goes through and every other call fails fast with `EHR_CIRCUIT_OPEN`
 *   (the policy makes them wait for the trial, holding a concurrency slot for up to a whole attempt timeout);
 * - a trial that ends without evidence (the caller cancelled, the deadline passed before sending) neither closes
 *   nor re-opens the circuit (the policy counts an unhandled error as a success: "task failed successfully");
 * - the client decides what counts as a failure per attempt (transient only: connect errors, timeouts, 5xx),
 *   which includes HTTP responses that are not exceptions.
 */
import { CircuitState, ConsecutiveBreaker, type IBreaker } from 'cockatiel';

export type CircuitStateName = 'closed' | 'open' | 'half-open';

/** What a finished attempt tells the breaker. */
export type CircuitVerdict = 'success' | 'failure' | 'ignore';

/** Permission to send one request; report its verdict exactly once. */
export interface CircuitPermit {
  /** Whether this is the half-open trial request. */
  readonly trial: boolean;
  report(verdict: CircuitVerdict): void;
}

export interface CircuitListener {
  onOpen(afterTrial: boolean): void;
  onHalfOpen(): void;
  onClose(): void;
}

export class Circuit {
  readonly #breaker: IBreaker;
  readonly #halfOpenAfterMs: number;
  readonly #clock: () => number;
  readonly #listener: CircuitListener;
  #state: CircuitStateName = 'closed';
  #openedAt = 0;
  /** Incremented on every transition, so late reports from an earlier state are recognised and dropped. */
  #generation = 0;

  constructor(options: { breaker?: IBreaker; failureThreshold: number; halfOpenAfterMs: number; clock: () => number; listener: CircuitListener }) {
    this.#breaker = options.breaker ?? new ConsecutiveBreaker(options.failureThreshold);
    this.#halfOpenAfterMs = options.halfOpenAfterMs;
    this.#clock = options.clock;
    this.#listener = options.listener;
  }

  get state(): CircuitStateName {
    return this.#state;
  }

  /** Milliseconds until an open circuit lets a trial through (0 when not open or already due). */
  remainingOpenMs(): number {
    if (this.#state !== 'open') return 0;
    return Math.max(0, this.#openedAt + this.#halfOpenAfterMs - this.#clock());
  }

  /** Asks to send a request. `undefined` = fail fast (open, or half-open with its trial in flight). */
  tryAcquire(): CircuitPermit | undefined {
    switch (this.#state) {
      case 'closed':
        return this.#permit(false);
      case 'half-open':
        return undefined;
      case 'open':
        if (this.#clock() - this.#openedAt < this.#halfOpenAfterMs) return undefined;
        this.#transition('half-open');
        this.#listener.onHalfOpen();
        return this.#permit(true);
    }
  }

  #permit(trial: boolean): CircuitPermit {
    return new Permit(trial, this.#generation, this.#onReport);
  }

  readonly #onReport = (trial: boolean, generation: number, verdict: CircuitVerdict): void => this.#report(trial, generation, verdict);

  #report(trial: boolean, generation: number, verdict: CircuitVerdict): void {
    if (trial) {
      if (generation !== this.#generation || this.#state !== 'half-open') return;
      if (verdict === 'success') {
        this.#breaker.success(CircuitState.HalfOpen);
        this.#transition('closed');
        this.#listener.onClose();
      } else if (verdict === 'failure') {
        this.#breaker.failure(CircuitState.HalfOpen);
        this.#open(true);
      } else {
        // No evidence either way: back to open, due at once, so the next call becomes the trial.
        this.#transition('open');
      }
      return;
    }
    // Results of requests sent while closed. Ones that finish after the circuit opened carry no news: drop them.
    if (this.#state !== 'closed' || generation !== this.#generation || verdict === 'ignore') return;
    if (verdict === 'success') {
      this.#breaker.success(CircuitState.Closed);
    } else if (this.#breaker.failure(CircuitState.Closed)) {
      this.#open(false);
    }
  }

  #open(afterTrial: boolean): void {
    this.#openedAt = this.#clock();
    this.#transition('open');
    this.#listener.onOpen(afterTrial);
  }

  #transition(state: CircuitStateName): void {
    this.#state = state;
    this.#generation++;
  }
}

/** One permit (a small class rather than a closure per request: a permit is made for every send). */
class Permit implements CircuitPermit {
  readonly trial: boolean;
  readonly #generation: number;
  readonly #onReport: (trial: boolean, generation: number, verdict: CircuitVerdict) => void;
  #reported = false;

  constructor(trial: boolean, generation: number, onReport: (trial: boolean, generation: number, verdict: CircuitVerdict) => void) {
    this.trial = trial;
    this.#generation = generation;
    this.#onReport = onReport;
  }

  report(verdict: CircuitVerdict): void {
    if (this.#reported) return;
    this.#reported = true;
    this.#onReport(this.trial, this.#generation, verdict);
  }
}
