import type { CancelSignal } from './cancel.js';
/**
 * Per-tenant concurrency limit with two priorities.
 *
 * Policy (what happens when a slot frees):
 * 1. Only one class waits: its oldest waiter gets the slot (FIFO within a class).
 * 2. Both classes wait: the oldest **interactive** waiter gets it, except that after `batchEvery - 1`
 *    consecutive interactive grants made while batch work was waiting, the next slot goes to the oldest **batch**
 *    waiter. So a clinician's click never queues behind a backfill, and a backfill still gets at least
 *    1/`batchEvery` of the slots however busy the tenant is (no starvation).
 * 3. A new arrival never overtakes a waiter: while anyone waits, arrivals queue too.
 *
 * A waiter whose signal aborts (deadline, caller cancel) leaves the queue; a slot is then never handed to it.
 */

export type Priority = 'interactive' | 'batch';

interface Waiter {
  readonly priority: Priority;
  readonly enqueuedAt: number;
  readonly grant: (release: () => void) => void;
  readonly cleanup: () => void;
}

/** Releases a slot; idempotent. */
export type Release = () => void;

export class PriorityLimiter {
  #max: number;
  readonly #batchEvery: number;
  #inFlight = 0;
  /** Consecutive interactive grants made while a batch waiter was waiting. */
  #interactiveStreak = 0;
  readonly #queues: Record<Priority, Waiter[]> = { interactive: [], batch: [] };

  /**
   * @param max - slots (requests in flight), ≥ 1.
   * @param batchEvery - anti-starvation period, ≥ 2: every `batchEvery`-th contended slot goes to batch.
   */
  constructor(max: number, batchEvery: number) {
    this.#max = max;
    this.#batchEvery = batchEvery;
  }

  get inFlight(): number {
    return this.#inFlight;
  }

  get waiting(): number {
    return this.#queues.interactive.length + this.#queues.batch.length;
  }

  /** Changes the number of slots (a tenant's limit was edited); takes effect as slots free or are granted. */
  setMax(max: number): void {
    if (max === this.#max) return;
    this.#max = max;
    this.#drain();
  }

  /**
   * Takes a free slot at once, without a Promise, when nobody waits (rule 3: never ahead of a waiter).
   * `undefined`: the caller must {@link acquire} and wait.
   */
  tryAcquire(): Release | undefined {
    if (this.#inFlight >= this.#max || this.waiting !== 0) return undefined;
    this.#inFlight++;
    return this.#releaser();
  }

  /**
   * Waits for a slot.
   *
   * @param now - epoch ms, recorded for the `queue:waited` event.
   * @returns the release function; call it exactly when the request is done (further calls are ignored).
   * @throws `signal.reason` when the signal aborts before a slot is granted.
   */
  acquire(priority: Priority, signal: CancelSignal, now: number): Promise<{ release: Release; waited: boolean; enqueuedAt: number }> {
    if (signal.aborted) return Promise.reject(signal.reason);
    const release = this.tryAcquire();
    if (release) return Promise.resolve({ release, waited: false, enqueuedAt: now });
    return new Promise((resolve, reject) => {
      const onAbort = (): void => {
        const queue = this.#queues[priority];
        const i = queue.indexOf(waiter);
        if (i !== -1) queue.splice(i, 1);
        reject(signal.reason);
      };
      const waiter: Waiter = {
        priority,
        enqueuedAt: now,
        grant: (release) => resolve({ release, waited: true, enqueuedAt: now }),
        cleanup: () => signal.removeEventListener('abort', onAbort),
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.#queues[priority].push(waiter);
    });
  }

  #releaser(): Release {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#inFlight--;
      this.#drain();
    };
  }

  #drain(): void {
    while (this.#inFlight < this.#max) {
      const waiter = this.#next();
      if (!waiter) return;
      waiter.cleanup();
      this.#inFlight++;
      waiter.grant(this.#releaser());
    }
  }

  #next(): Waiter | undefined {
    const { interactive, batch } = this.#queues;
    if (batch.length === 0) {
      this.#interactiveStreak = 0;
      return interactive.shift();
    }
    if (interactive.length === 0 || this.#interactiveStreak >= this.#batchEvery - 1) {
      this.#interactiveStreak = 0;
      return batch.shift();
    }
    this.#interactiveStreak++;
    return interactive.shift();
  }
}
