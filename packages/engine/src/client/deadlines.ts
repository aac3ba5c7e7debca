/**
 * The client's timeouts (each call's deadline, each attempt's budget) on one Node timer.
 *
 * Every read sets two timeouts (the caller's deadline and the attempt's budget) and almost always clears both a
 * millisecond later. Node's `setTimeout` + `clearTimeout` cost ~0.3-0.4 µs per pair (a `Timeout` object, async
 * hooks bookkeeping, a read of libuv's clock) and showed up as ~10% of the client's own CPU in the benchmark
 * profile. Here a timeout is a small entry in a binary min-heap on `performance.now()`, and one Node timer is
 * armed for the earliest entry. Clearing removes the entry from the heap (so the heap holds only live timeouts,
 * a few per request in flight); the Node timer is re-armed only when an earlier entry arrives or when it fires.
 *
 * Precision is the same as Node's (a timeout never fires early; it fires within a millisecond or so of its due
 * time, plus event-loop delay). The Node timer is cleared whenever the heap empties, so an idle client keeps no
 * timer (and a pending call keeps the process alive exactly as a plain `setTimeout` would).
 *
 * Only used with the default timers: injected `timers` (fake timers, the simulator) are used as given, because a
 * heap on `performance.now()` would not follow their notion of time.
 */
import type { TransportTimers } from './transport.js';

interface Entry {
  due: number;
  /** Position in the heap; -1 once fired or cleared. */
  index: number;
  readonly fn: () => void;
}

export class DeadlineTimers implements TransportTimers {
  readonly #heap: Entry[] = [];
  /** The Node timer and the time it is armed for. */
  #timer: ReturnType<typeof setTimeout> | undefined;
  #armedFor = Infinity;
  readonly #now: () => number;

  /** @param now - monotonic milliseconds; `performance.now` by default (tests may pass another). */
  constructor(now: () => number = () => performance.now()) {
    this.#now = now;
  }

  /** Number of pending timeouts (for tests). */
  get size(): number {
    return this.#heap.length;
  }

  setTimeout(fn: () => void, ms: number): unknown {
    const entry: Entry = { due: this.#now() + Math.max(0, ms), index: this.#heap.length, fn };
    this.#heap.push(entry);
    this.#siftUp(entry.index);
    if (entry.due < this.#armedFor) this.#arm(entry.due);
    return entry;
  }

  clearTimeout(handle: unknown): void {
    const entry = handle as Entry | undefined;
    if (entry === undefined || entry.index < 0) return;
    this.#remove(entry);
    if (this.#heap.length === 0) this.#disarm();
  }

  #arm(due: number): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#armedFor = due;
    this.#timer = setTimeout(this.#fire, Math.max(1, Math.ceil(due - this.#now())));
  }

  #disarm(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#armedFor = Infinity;
  }

  readonly #fire = (): void => {
    this.#timer = undefined;
    this.#armedFor = Infinity;
    const now = this.#now();
    const heap = this.#heap;
    try {
      for (let top = heap[0]; top !== undefined && top.due <= now; top = heap[0]) {
        this.#remove(top);
        top.fn();
      }
    } finally {
      // Also after a callback threw: the other timeouts still fire.
      const next = heap[0];
      if (next !== undefined && this.#timer === undefined) this.#arm(next.due);
    }
  };

  #remove(entry: Entry): void {
    const heap = this.#heap;
    const i = entry.index;
    const last = heap.pop() as Entry;
    entry.index = -1;
    if (last === entry) return;
    heap[i] = last;
    last.index = i;
    this.#siftDown(i);
    this.#siftUp(last.index);
  }

  #siftUp(i: number): void {
    const heap = this.#heap;
    const entry = heap[i] as Entry;
    while (i > 0) {
      const parentIndex = (i - 1) >> 1;
      const parent = heap[parentIndex] as Entry;
      if (parent.due <= entry.due) break;
      heap[i] = parent;
      parent.index = i;
      i = parentIndex;
    }
    heap[i] = entry;
    entry.index = i;
  }

  #siftDown(i: number): void {
    const heap = this.#heap;
    const n = heap.length;
    const entry = heap[i] as Entry;
    for (;;) {
      const left = 2 * i + 1;
      if (left >= n) break;
      const right = left + 1;
      const child = right < n && (heap[right] as Entry).due < (heap[left] as Entry).due ? right : left;
      const c = heap[child] as Entry;
      if (c.due >= entry.due) break;
      heap[i] = c;
      c.index = i;
      i = child;
    }
    heap[i] = entry;
    entry.index = i;
  }
}
