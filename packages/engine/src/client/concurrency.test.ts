import { describe, expect, it } from 'vitest';
import { PriorityLimiter, type Priority } from './concurrency.js';

const never = (): AbortSignal => new AbortController().signal;

/** Queues `labels` (priority by prefix) behind one held slot and returns the order in which they get it. */
async function grantOrder(limiter: PriorityLimiter, labels: string[]): Promise<string[]> {
  const first = await limiter.acquire('interactive', never(), 0);
  const order: string[] = [];
  const done = labels.map(async (label) => {
    const priority: Priority = label.startsWith('i') ? 'interactive' : 'batch';
    const { release } = await limiter.acquire(priority, never(), 0);
    order.push(label);
    // Hold the slot until the next microtask so grants happen one at a time.
    await Promise.resolve();
    release();
  });
  first.release();
  await Promise.all(done);
  return order;
}

describe('per-tenant concurrency with priorities', () => {
  it('tryAcquire takes a free slot without a Promise, and never one a waiter is queued for', async () => {
    const limiter = new PriorityLimiter(1, 5);
    const release = limiter.tryAcquire();
    expect(release).toBeTypeOf('function');
    expect(limiter.tryAcquire()).toBeUndefined();
    const waiter = limiter.acquire('batch', never(), 0);
    release?.();
    // The freed slot went to the waiter: a newcomer does not overtake it.
    expect(limiter.tryAcquire()).toBeUndefined();
    const granted = await waiter;
    expect(granted.waited).toBe(true);
    granted.release();
    expect(limiter.tryAcquire()).toBeTypeOf('function');
  });

  it('grants free slots at once, then queues', async () => {
    const limiter = new PriorityLimiter(2, 5);
    const a = await limiter.acquire('batch', never(), 0);
    const b = await limiter.acquire('batch', never(), 0);
    expect(a.waited).toBe(false);
    expect(limiter.inFlight).toBe(2);
    let granted = false;
    const c = limiter.acquire('interactive', never(), 0).then((r) => {
      granted = true;
      return r;
    });
    await Promise.resolve();
    expect(granted).toBe(false);
    expect(limiter.waiting).toBe(1);
    a.release();
    a.release(); // idempotent: must not free a second slot
    const got = await c;
    expect(got.waited).toBe(true);
    expect(limiter.inFlight).toBe(2);
    b.release();
    got.release();
    expect(limiter.inFlight).toBe(0);
  });

  it('the oldest interactive waiter goes before any batch waiter', async () => {
    expect(await grantOrder(new PriorityLimiter(1, 5), ['b1', 'b2', 'i1', 'i2', 'b3'])).toEqual(['i1', 'i2', 'b1', 'b2', 'b3']);
  });

  it('batch is not starved: every Nth contended slot goes to the oldest batch waiter', async () => {
    const interactive = Array.from({ length: 9 }, (_, i) => `i${i + 1}`);
    const order = await grantOrder(new PriorityLimiter(1, 3), ['b1', 'b2', ...interactive]);
    expect(order).toEqual(['i1', 'i2', 'b1', 'i3', 'i4', 'b2', 'i5', 'i6', 'i7', 'i8', 'i9']);
  });

  it('a new arrival never overtakes a waiter', async () => {
    const limiter = new PriorityLimiter(1, 5);
    const held = await limiter.acquire('batch', never(), 0);
    const order: string[] = [];
    const waiter = limiter.acquire('batch', never(), 0).then((r) => (order.push('waiter'), r));
    held.release(); // the slot is handed to the waiter, not left free for the next arrival
    const late = limiter.acquire('interactive', never(), 0).then((r) => (order.push('late'), r));
    (await waiter).release();
    (await late).release();
    expect(order).toEqual(['waiter', 'late']);
  });

  it('an aborted waiter leaves the queue and never gets a slot', async () => {
    const limiter = new PriorityLimiter(1, 5);
    const held = await limiter.acquire('interactive', never(), 0);
    const controller = new AbortController();
    const waiting = limiter.acquire('interactive', controller.signal, 0);
    controller.abort(new Error('deadline'));
    await expect(waiting).rejects.toThrow('deadline');
    expect(limiter.waiting).toBe(0);
    held.release();
    expect(limiter.inFlight).toBe(0);
  });

  it('a larger limit frees waiters at once', async () => {
    const limiter = new PriorityLimiter(1, 5);
    await limiter.acquire('interactive', never(), 0);
    const second = limiter.acquire('interactive', never(), 0);
    limiter.setMax(2);
    await expect(second).resolves.toMatchObject({ waited: true });
  });
});
