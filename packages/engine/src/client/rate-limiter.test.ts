import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, expectTypeOf, it } from 'vitest';
import { createStore, type RateLimitRepo } from '../store/index.js';
import { inProcessRateLimiter, storeRateLimiter, type RateLimitStore } from './rate-limiter.js';

describe('in-process token bucket', () => {
  it('starts full, empties, refills at the configured rate, and never exceeds capacity', async () => {
    const limiter = inProcessRateLimiter();
    const limit = { capacity: 3, refillPerSecond: 2 };
    const t = 1_000_000;
    for (let i = 0; i < 3; i++) expect(await limiter.take('ehr:a', limit, t)).toEqual({ allowed: true, waitMs: 0 });
    expect(await limiter.take('ehr:a', limit, t)).toEqual({ allowed: false, waitMs: 500 });
    expect(await limiter.take('ehr:a', limit, t + 499)).toMatchObject({ allowed: false });
    expect(await limiter.take('ehr:a', limit, t + 500)).toEqual({ allowed: true, waitMs: 0 });
    // A long pause refills to capacity only.
    const later = t + 60_000;
    for (let i = 0; i < 3; i++) expect((await limiter.take('ehr:a', limit, later)).allowed).toBe(true);
    expect((await limiter.take('ehr:a', limit, later)).allowed).toBe(false);
  });

  it('keeps tenants apart and charges the cost', async () => {
    const limiter = inProcessRateLimiter();
    const limit = { capacity: 4, refillPerSecond: 1 };
    expect((await limiter.take('ehr:a', limit, 0, 4)).allowed).toBe(true);
    expect((await limiter.take('ehr:b', limit, 0)).allowed).toBe(true);
    expect(await limiter.take('ehr:a', limit, 0, 2)).toEqual({ allowed: false, waitMs: 2000 });
  });

  it('takeSync decides exactly as take, without a Promise, on the same buckets', async () => {
    const limiter = inProcessRateLimiter();
    const limit = { capacity: 2, refillPerSecond: 1 };
    expect(limiter.takeSync?.('ehr:a', limit, 0)).toEqual({ allowed: true, waitMs: 0 });
    expect(await limiter.take('ehr:a', limit, 0)).toEqual({ allowed: true, waitMs: 0 });
    expect(limiter.takeSync?.('ehr:a', limit, 0)).toEqual({ allowed: false, waitMs: 1000 });
    expect(await limiter.take('ehr:a', limit, 0)).toEqual({ allowed: false, waitMs: 1000 });
    expect(limiter.takeSync?.('ehr:a', limit, 1000)).toEqual({ allowed: true, waitMs: 0 });
  });
});

describe('storeRateLimiter', () => {
  it('forwards to the store repository (same bucket for every process) and normalises waits', async () => {
    const calls: unknown[][] = [];
    const repo: RateLimitStore = {
      take(...args) {
        calls.push(args);
        return Promise.resolve(calls.length === 1 ? { allowed: true, waitMs: 0 } : { allowed: false, waitMs: 12.2 });
      },
    };
    const limiter = storeRateLimiter(repo);
    expect(await limiter.take('ehr:t', { capacity: 10, refillPerSecond: 5 }, 123)).toEqual({ allowed: true, waitMs: 0 });
    expect(await limiter.take('ehr:t', { capacity: 10, refillPerSecond: 5 }, 124, 2)).toEqual({ allowed: false, waitMs: 13 });
    expect(calls).toEqual([
      ['ehr:t', 10, 5, 123, 1],
      ['ehr:t', 10, 5, 124, 2],
    ]);
  });

  it('accepts the store RateLimitRepo as is', () => {
    expectTypeOf<RateLimitRepo>().toExtend<RateLimitStore>();
  });
});

describe('storeRateLimiter on the real embedded store', () => {
  it('shares one bucket through SQLite: a second limiter on the same store sees the tokens the first took', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tether-client-rl-'));
    const store = createStore({ kind: 'sqlite', path: join(dir, 'tether.db') });
    try {
      await store.migrate();
      const a = storeRateLimiter(store.rateLimits);
      const b = storeRateLimiter(store.rateLimits);
      const limit = { capacity: 2, refillPerSecond: 1 };
      const t = 1_700_000_000_000;
      expect((await a.take('ehr:shared', limit, t)).allowed).toBe(true);
      expect((await b.take('ehr:shared', limit, t)).allowed).toBe(true);
      const refused = await a.take('ehr:shared', limit, t);
      expect(refused.allowed).toBe(false);
      expect(refused.waitMs).toBeGreaterThanOrEqual(900);
      expect(refused.waitMs).toBeLessThanOrEqual(1000);
      expect((await b.take('ehr:shared', limit, t + 1000)).allowed).toBe(true);
    } finally {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
