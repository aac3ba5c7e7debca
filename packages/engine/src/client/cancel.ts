/**
 * A minimal cancellation signal for the client's internals. Every read used to create two or three
 * `AbortController`s (the call's deadline scope, the coalescer's shared request) and Node's EventTarget-based
 * controllers showed up as ~7% of client CPU in the benchmark profile. This class has the same shape as the
 * subset of `AbortSignal` the client uses (`aborted`, `reason`, `addEventListener('abort')`,
 * `removeEventListener`), so a caller's real `AbortSignal` is accepted wherever a {@link CancelSignal} is.
 * A real `AbortSignal` is made only at a public seam that needs one ({@link toAbortSignal}: the `sleep` option).
 */
export interface CancelSignal {
  readonly aborted: boolean;
  readonly reason: unknown;
  addEventListener(type: 'abort', listener: () => void, options?: { once?: boolean }): void;
  removeEventListener(type: 'abort', listener: () => void): void;
}

/** The source of a {@link CancelSignal}: `abort(reason)` notifies each listener once. */
export class CancelSource implements CancelSignal {
  aborted = false;
  reason: unknown = undefined;
  /** The first listener in its own slot: the hot path (one attempt listening) allocates no array. */
  #first: (() => void) | undefined;
  #more: (() => void)[] | undefined;

  get signal(): CancelSignal {
    return this;
  }

  addEventListener(_type: 'abort', listener: () => void): void {
    if (this.#first === undefined && this.#more === undefined) this.#first = listener;
    else (this.#more ??= []).push(listener);
  }

  removeEventListener(_type: 'abort', listener: () => void): void {
    if (this.#first === listener) {
      this.#first = undefined;
      return;
    }
    const list = this.#more;
    if (!list) return;
    const i = list.indexOf(listener);
    if (i >= 0) list.splice(i, 1);
  }

  abort(reason: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    const first = this.#first;
    const more = this.#more;
    this.#first = undefined;
    this.#more = undefined;
    // Listeners are one-shot, as with `{ once: true }` on an AbortSignal; called in the order they were added.
    first?.();
    if (more) for (const listener of more) listener();
  }
}

/** A real AbortSignal that follows `signal` (for public seams typed with AbortSignal). */
export function toAbortSignal(signal: CancelSignal): AbortSignal {
  if (signal instanceof AbortSignal) return signal;
  const controller = new AbortController();
  if (signal.aborted) controller.abort(signal.reason);
  else signal.addEventListener('abort', () => controller.abort(signal.reason), { once: true });
  return controller.signal;
}
