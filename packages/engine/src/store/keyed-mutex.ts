import { TetherError } from '@tether/core';

/** The error of a caller that waited `timeoutMs` for a lock without getting it: transient, try again later. */
export function lockTimeoutError(timeoutMs: number, cause?: unknown): TetherError {
  return new TetherError('STORE_UNAVAILABLE', `Timed out after ${timeoutMs} ms waiting for a store lock.`, {
    details: { timeoutMs },
    ...(cause === undefined ? {} : { cause }),
  });
}

/** Releases a lock taken with {@link KeyedMutex.acquire}. Idempotent. */
export type Release = () => void;

/**
 * An in-process mutex per string key, FIFO, with a bounded wait.
 *
 * Each key keeps a chain of promises: a caller waits for the tail of the chain, then becomes the tail itself.
 * Keys with nobody holding or waiting are deleted, so the map does not grow with the number of keys ever used.
 *
 * Not reentrant: a holder that acquires its own key again waits for itself and fails after the timeout.
 */
export class KeyedMutex {
  readonly #tails = new Map<string, Promise<void>>();

  /**
   * Waits until `key` is free, then holds it until the returned function is called.
   *
   * @param key - Lock identity.
   * @param timeoutMs - How long to wait (milliseconds). On expiry the caller gets `STORE_UNAVAILABLE` and leaves
   *   the queue without ever holding the lock; callers behind it are not affected.
   */
  async acquire(key: string, timeoutMs: number): Promise<Release> {
    const previous = this.#tails.get(key) ?? Promise.resolve();
    let releaseMine!: () => void;
    const mine = new Promise<void>((resolve) => {
      releaseMine = resolve;
    });
    // The next caller waits for the previous holder *and* for us, so a caller that times out must still pass the
    // baton on once the holder in front of it is done (see the catch below).
    const tail = previous.then(() => mine);
    this.#tails.set(key, tail);

    let released = false;
    const release: Release = () => {
      if (released) return;
      released = true;
      releaseMine();
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    };

    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<'expired'>((resolve) => {
      timer = setTimeout(() => resolve('expired'), timeoutMs);
    });
    try {
      const outcome = await Promise.race([previous.then(() => 'ready' as const), expired]);
      if (outcome === 'expired') {
        // Our slot in the chain is released as soon as the holder in front of us is done.
        void previous.then(release);
        throw lockTimeoutError(timeoutMs);
      }
      return release;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Keys currently held or waited for (for tests and diagnostics). */
  get size(): number {
    return this.#tails.size;
  }
}
