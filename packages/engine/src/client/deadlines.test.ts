import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { DeadlineTimers } from './deadlines.js';

describe('DeadlineTimers (the client timeouts on one Node timer)', () => {
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance'] });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('fires each timeout at its time, in order, never early', () => {
    const timers = new DeadlineTimers();
    const fired: string[] = [];
    timers.setTimeout(() => fired.push('c30'), 30);
    timers.setTimeout(() => fired.push('a10'), 10);
    timers.setTimeout(() => fired.push('b20'), 20);
    vi.advanceTimersByTime(9);
    expect(fired).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(fired).toEqual(['a10']);
    vi.advanceTimersByTime(15);
    expect(fired).toEqual(['a10', 'b20']);
    vi.advanceTimersByTime(5);
    expect(fired).toEqual(['a10', 'b20', 'c30']);
    expect(timers.size).toBe(0);
  });

  it('a cleared timeout never fires, and an empty heap keeps no Node timer', () => {
    const timers = new DeadlineTimers();
    const fired: string[] = [];
    const a = timers.setTimeout(() => fired.push('a'), 10);
    timers.setTimeout(() => fired.push('b'), 20);
    timers.clearTimeout(a);
    timers.clearTimeout(a); // twice: no effect
    vi.advanceTimersByTime(25);
    expect(fired).toEqual(['b']);
    const c = timers.setTimeout(() => fired.push('c'), 60_000);
    expect(vi.getTimerCount()).toBe(1);
    timers.clearTimeout(c);
    expect(vi.getTimerCount()).toBe(0);
    expect(timers.size).toBe(0);
  });

  it('an earlier timeout re-arms the Node timer; a later one does not', () => {
    const timers = new DeadlineTimers();
    const fired: number[] = [];
    timers.setTimeout(() => fired.push(60_000), 60_000);
    timers.setTimeout(() => fired.push(30_000), 30_000);
    timers.setTimeout(() => fired.push(45_000), 45_000);
    expect(vi.getTimerCount()).toBe(1);
    vi.advanceTimersByTime(30_000);
    expect(fired).toEqual([30_000]);
    vi.advanceTimersByTime(30_000);
    expect(fired).toEqual([30_000, 45_000, 60_000]);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('fires exactly the timeouts not cleared, each at its due time, under random churn', () => {
    const timers = new DeadlineTimers();
    let seed = 42;
    const random = (): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    const firedAt = new Map<number, number>();
    const due = new Map<number, number>();
    const handles = new Map<number, unknown>();
    const cleared = new Set<number>();
    for (let i = 0; i < 500; i++) {
      const ms = Math.floor(random() * 1000);
      due.set(i, performance.now() + ms);
      handles.set(i, timers.setTimeout(() => firedAt.set(i, performance.now()), ms));
      if (random() < 0.5) {
        const victim = Math.floor(random() * (i + 1));
        if (!firedAt.has(victim)) {
          timers.clearTimeout(handles.get(victim));
          cleared.add(victim);
        }
      }
      vi.advanceTimersByTime(Math.floor(random() * 5));
    }
    vi.advanceTimersByTime(2000);
    for (let i = 0; i < 500; i++) {
      if (cleared.has(i)) {
        expect(firedAt.has(i)).toBe(false);
        continue;
      }
      expect(firedAt.get(i)).toBeGreaterThanOrEqual(due.get(i) as number);
      expect(firedAt.get(i)).toBeLessThanOrEqual((due.get(i) as number) + 1);
    }
    expect(cleared.size).toBeGreaterThan(50);
    expect(timers.size).toBe(0);
    expect(vi.getTimerCount()).toBe(0);
  });
});
