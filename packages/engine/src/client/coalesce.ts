/**
 * Single-flight for identical concurrent GETs: the first caller's request is shared by every caller that asks for
 * the same key while it is in flight. Only ever used for GETs (never for writes, never for POST `_search`).
 *
 * The shared request is not tied to any one caller's cancellation: it is aborted only when **every** caller has
 * left (cancelled or hit its own deadline). Each caller still leaves at its own deadline. The shared request runs
 * under the first caller's deadline, priority and correlation id.
 *
 * Each caller's deadline timer lives here (one timer per caller, no separate cancellation scope): a GET pays for
 * one waiter object and one timer on top of its request.
 */
import { CancelSource, type CancelSignal } from './cancel.js';
import { CallAbort, type TransportTimers } from './transport.js';

/** What the coalescer does with a caller's context `C` (one object per client: nothing is allocated per call). */
export interface CoalesceHooks<C, T> {
  /** Starts the shared request; `shared` aborts when every caller has left. */
  start(context: C, shared: CancelSignal): Promise<T>;
  /** This caller joined an existing request rather than starting one. */
  joined(context: C): void;
  /** Maps the reason this caller left (a {@link CallAbort}: deadline or aborted) to the error it rejects with. */
  left(context: C, reason: CallAbort): unknown;
}

/** One shared request: its cancellation (aborted when every caller has left) and its callers. */
class InFlight<T> extends CancelSource {
  /** Callers that came for it (one that left is marked done and skipped); the first one in its own slot. */
  first: WaiterOf<T> | undefined;
  more: WaiterOf<T>[] | undefined;
  refs = 0;
}

interface WaiterOf<T> {
  readonly done: boolean;
  finish(timers: TransportTimers): void;
  resolve(value: T): void;
  reject(err: unknown): void;
}

export class Coalescer<C, T> {
  readonly #inFlight = new Map<string, InFlight<T>>();
  readonly #timers: TransportTimers;
  readonly #hooks: CoalesceHooks<C, T>;

  constructor(timers: TransportTimers, hooks: CoalesceHooks<C, T>) {
    this.#timers = timers;
    this.#hooks = hooks;
  }

  /** Number of distinct requests in flight (for tests and metrics). */
  get size(): number {
    return this.#inFlight.size;
  }

  /**
   * Runs the shared request for `key` unless one is in flight, in which case the caller joins it.
   *
   * @param context - passed to the hooks (the caller's call).
   * @param leaveAfterMs - this caller leaves (reason `deadline`) after this many milliseconds.
   * @param signal - this caller's cancellation; it leaves (reason `aborted`, or the signal's own {@link CallAbort}).
   */
  run(key: string, context: C, leaveAfterMs: number, signal: CancelSignal | undefined): Promise<T> {
    if (signal?.aborted) return Promise.reject(this.#hooks.left(context, abortReasonOf(signal)));
    let entry = this.#inFlight.get(key);
    if (entry) {
      this.#hooks.joined(context);
    } else {
      const created = new InFlight<T>();
      entry = created;
      this.#inFlight.set(key, created);
      this.#hooks.start(context, created).then(
        (value) => this.#settle(key, created, true, value),
        (err: unknown) => this.#settle(key, created, false, err),
      );
    }
    const shared = entry;
    shared.refs++;
    return new Promise<T>((resolve, reject) => {
      const waiter = new Waiter<C, T>(this, key, shared, context, resolve, reject, signal);
      waiter.timer = this.#timers.setTimeout(() => waiter.leave(new CallAbort('deadline')), Math.max(0, leaveAfterMs));
      if (signal) {
        waiter.onAbort = () => waiter.leave(abortReasonOf(signal));
        signal.addEventListener('abort', waiter.onAbort, { once: true });
      }
      if (shared.first === undefined) shared.first = waiter;
      else (shared.more ??= []).push(waiter);
    });
  }

  /** A caller leaves before the shared request ended. */
  leave(key: string, entry: InFlight<T>, waiter: Waiter<C, T>, reason: CallAbort): void {
    waiter.finish(this.#timers);
    entry.refs--;
    if (entry.refs === 0) {
      // Nobody waits for it any more: stop it, and let the next identical GET start a fresh request.
      if (this.#inFlight.get(key) === entry) this.#inFlight.delete(key);
      entry.abort(new CallAbort('aborted'));
    }
    waiter.reject(this.#hooks.left(waiter.context, reason));
  }

  #settle(key: string, entry: InFlight<T>, ok: boolean, value: unknown): void {
    if (this.#inFlight.get(key) === entry) this.#inFlight.delete(key);
    if (entry.first) this.#answer(entry, entry.first, ok, value);
    if (entry.more) for (const waiter of entry.more) this.#answer(entry, waiter, ok, value);
  }

  #answer(entry: InFlight<T>, waiter: WaiterOf<T>, ok: boolean, value: unknown): void {
    if (waiter.done) return;
    waiter.finish(this.#timers);
    entry.refs--;
    if (ok) waiter.resolve(value as T);
    else waiter.reject(value);
  }
}

function abortReasonOf(signal: CancelSignal): CallAbort {
  const reason: unknown = signal.reason;
  return reason instanceof CallAbort ? reason : new CallAbort('aborted');
}

/** One caller waiting for a shared request. */
class Waiter<C, T> {
  readonly #coalescer: Coalescer<C, T>;
  readonly #key: string;
  readonly #entry: InFlight<T>;
  readonly resolve: (value: T) => void;
  readonly reject: (err: unknown) => void;
  readonly #signal: CancelSignal | undefined;
  readonly context: C;
  done = false;
  timer: unknown;
  onAbort: (() => void) | undefined;

  constructor(
    coalescer: Coalescer<C, T>,
    key: string,
    entry: InFlight<T>,
    context: C,
    resolve: (value: T) => void,
    reject: (err: unknown) => void,
    signal: CancelSignal | undefined,
  ) {
    this.#coalescer = coalescer;
    this.#key = key;
    this.#entry = entry;
    this.context = context;
    this.resolve = resolve;
    this.reject = reject;
    this.#signal = signal;
  }

  leave(reason: CallAbort): void {
    if (this.done) return;
    this.#coalescer.leave(this.#key, this.#entry, this, reason);
  }

  /** Stops listening: clears the deadline timer and the signal listener. */
  finish(timers: TransportTimers): void {
    this.done = true;
    timers.clearTimeout(this.timer);
    if (this.onAbort) this.#signal?.removeEventListener('abort', this.onAbort);
  }
}
