/**
 * Single-flight for identical concurrent GETs: the first caller's request is shared by every caller that asks for
 * the same key while it is in flight. Only ever used for GETs (never for writes, never for POST `_search`).
 *
 * The shared request is not tied to any one caller's cancellation: it is aborted only when **every** caller has
 * left (cancelled or hit its own deadline). Each caller still leaves at its own deadline. The shared request runs
 * under the first caller's deadline, priority and correlation id.
 */
import { CancelSource, type CancelSignal } from './cancel.js';
import { CallAbort } from './transport.js';

interface InFlight<T> {
  readonly promise: Promise<T>;
  readonly controller: CancelSource;
  refs: number;
}

export class Coalescer<T> {
  readonly #inFlight = new Map<string, InFlight<T>>();

  /** Number of distinct requests in flight (for tests and metrics). */
  get size(): number {
    return this.#inFlight.size;
  }

  /**
   * Runs `start` for `key` unless a run is in flight, in which case the caller joins it.
   *
   * @param signal - this caller's own cancellation (deadline or caller signal): it leaves the shared request.
   * @param start - starts the shared request; gets the signal that aborts it when every caller has left.
   * @param onJoin - called when this caller joined an existing request rather than starting one.
   * @param onLeave - maps this caller's abort reason to the error it rejects with.
   */
  run(key: string, signal: CancelSignal, start: (shared: CancelSignal) => Promise<T>, onJoin: () => void, onLeave: (reason: unknown) => unknown): Promise<T> {
    let entry = this.#inFlight.get(key);
    if (entry) {
      onJoin();
    } else {
      const controller = new CancelSource();
      const promise = start(controller.signal);
      const created: InFlight<T> = { promise, controller, refs: 0 };
      entry = created;
      this.#inFlight.set(key, created);
      const forget = (): void => {
        if (this.#inFlight.get(key) === created) this.#inFlight.delete(key);
      };
      promise.then(forget, forget);
    }
    const shared = entry;
    shared.refs++;
    return new Promise<T>((resolve, reject) => {
      let done = false;
      const leave = (): void => {
        if (done) return;
        done = true;
        signal.removeEventListener('abort', leave);
        shared.refs--;
        if (shared.refs === 0) {
          // Nobody waits for it any more: stop it, and let the next identical GET start a fresh request.
          if (this.#inFlight.get(key) === shared) this.#inFlight.delete(key);
          shared.controller.abort(new CallAbort('aborted'));
        }
        reject(onLeave(signal.reason));
      };
      if (signal.aborted) {
        leave();
        return;
      }
      signal.addEventListener('abort', leave, { once: true });
      shared.promise.then(
        (value) => {
          if (done) return;
          done = true;
          signal.removeEventListener('abort', leave);
          shared.refs--;
          resolve(value);
        },
        (err: unknown) => {
          if (done) return;
          done = true;
          signal.removeEventListener('abort', leave);
          shared.refs--;
          reject(err);
        },
      );
    });
  }
}
