/**
 * Per-tenant rate limits: token buckets keyed by tenant.
 *
 * The client only depends on {@link RateLimiter}. In embedded mode it uses {@link inProcessRateLimiter}; in
 * distributed mode (several engine processes sharing one EHR quota) {@link storeRateLimiter} puts the buckets in
 * the store (PostgreSQL: one row per key, updated atomically), so the limit holds across processes.
 */
import type { RateLimit } from './options.js';

/** The answer of {@link RateLimiter.take}. Same shape as the store's `RateLimitDecision`. */
export interface RateLimitDecision {
  readonly allowed: boolean;
  /** When not allowed: milliseconds until enough tokens will be available. 0 when allowed. */
  readonly waitMs: number;
}

/** Token buckets shared by whoever holds the same limiter. */
export interface RateLimiter {
  /**
   * Takes `cost` tokens from bucket `key` if it holds that many (after refilling it up to `now`).
   *
   * @param key - bucket name; the client uses `ehr:<tenantId>`.
   * @param limit - bucket size and refill rate; a change of limit applies from the next call.
   * @param now - epoch ms (the client's injected clock).
   * @param cost - tokens to take; default 1.
   */
  take(key: string, limit: RateLimit, now: number, cost?: number): Promise<RateLimitDecision>;
  /**
   * The same decision without a Promise, for limiters that decide in memory ({@link inProcessRateLimiter}). The
   * client prefers it when present: it is asked before every request, and an await per request is measurable.
   * A limiter that must do I/O (the store's) leaves it out.
   */
  takeSync?(key: string, limit: RateLimit, now: number, cost?: number): RateLimitDecision;
}

/**
 * The shape of the store's `RateLimitRepo` (`packages/engine/src/store/types.ts`) the adapter needs; declared here
 * structurally so the client does not reach into the store's internals.
 */
export interface RateLimitStore {
  take(key: string, capacity: number, refillPerSecond: number, now: number, cost?: number): Promise<RateLimitDecision>;
}

interface Bucket {
  tokens: number;
  updatedAt: number;
}

const ALLOWED: RateLimitDecision = Object.freeze({ allowed: true, waitMs: 0 });

/** How long an idle bucket is kept before it is forgotten (it would be full again by then anyway). */
const IDLE_BUCKET_MS = 10 * 60_000;

/**
 * Token buckets in this process's memory. Exact and lock-free (Node runs `take` to completion on one thread).
 * A bucket starts full; it refills continuously at `refillPerSecond`, up to `capacity`.
 */
export function inProcessRateLimiter(): RateLimiter {
  const buckets = new Map<string, Bucket>();
  let lastSweep = 0;
  function takeSync(key: string, limit: RateLimit, now: number, cost = 1): RateLimitDecision {
    if (now - lastSweep > IDLE_BUCKET_MS) {
      lastSweep = now;
      for (const [k, b] of buckets) if (now - b.updatedAt > IDLE_BUCKET_MS) buckets.delete(k);
    }
    let bucket = buckets.get(key);
    if (!bucket) {
      bucket = { tokens: limit.capacity, updatedAt: now };
      buckets.set(key, bucket);
    }
    const elapsed = Math.max(0, now - bucket.updatedAt);
    bucket.tokens = Math.min(limit.capacity, bucket.tokens + (elapsed * limit.refillPerSecond) / 1000);
    bucket.updatedAt = Math.max(bucket.updatedAt, now);
    // A cost above the capacity could never be paid; treat it as "the whole bucket".
    const needed = Math.min(cost, limit.capacity);
    if (bucket.tokens >= needed) {
      bucket.tokens -= needed;
      return ALLOWED;
    }
    const waitMs = Math.ceil(((needed - bucket.tokens) * 1000) / limit.refillPerSecond);
    return { allowed: false, waitMs: Math.max(1, waitMs) };
  }
  return {
    takeSync,
    take: (key, limit, now, cost) => Promise.resolve(takeSync(key, limit, now, cost)),
  };
}

/**
 * Adapts the store's shared token buckets (`Store.rateLimits`) to {@link RateLimiter}, for distributed mode.
 * The store does the atomic read-refill-take; this only forwards the arguments.
 */
export function storeRateLimiter(repo: RateLimitStore): RateLimiter {
  return {
    async take(key, limit, now, cost = 1) {
      const decision = await repo.take(key, limit.capacity, limit.refillPerSecond, now, cost);
      return { allowed: decision.allowed, waitMs: decision.allowed ? 0 : Math.max(1, Math.ceil(decision.waitMs)) };
    },
  };
}
