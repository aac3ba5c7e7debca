/**
 * A minimal typed event emitter: `EventMap` maps event names (`token:refreshed`, `breaker:open`...) to payload
 * types. Listeners run synchronously in registration order; a listener that throws is isolated (its error goes
 * to `onListenerError`) so that metrics or audit subscribers can never break the code path that emits.
 */
export class TypedEmitter<EventMap extends Record<string, unknown>> {
  readonly #listeners = new Map<keyof EventMap, Set<(payload: never) => void>>();
  readonly #onListenerError: (err: unknown, event: string) => void;

  constructor(options: { onListenerError?: (err: unknown, event: string) => void } = {}) {
    this.#onListenerError = options.onListenerError ?? (() => {});
  }

  /** Subscribes; returns a function that unsubscribes. */
  on<K extends keyof EventMap>(event: K, listener: (payload: EventMap[K]) => void): () => void {
    let set = this.#listeners.get(event);
    if (!set) {
      set = new Set();
      this.#listeners.set(event, set);
    }
    set.add(listener as (payload: never) => void);
    return () => set.delete(listener as (payload: never) => void);
  }

  emit<K extends keyof EventMap>(event: K, payload: EventMap[K]): void {
    const set = this.#listeners.get(event);
    if (!set) return;
    for (const listener of set) {
      try {
        (listener as (p: EventMap[K]) => void)(payload);
      } catch (err) {
        this.#onListenerError(err, String(event));
      }
    }
  }
}
