/**
 * Retry arithmetic: exponential backoff with full jitter, and `Retry-After` parsing. Pure functions; the client
 * decides *whether* to retry (reads only, transient failures only), these decide *how long* to wait.
 */
import { RETRY_AFTER_SANITY_CAP_MS } from './options.js';

/** What {@link backoffDelay} needs. */
export interface BackoffPolicy {
  /** Base delay in milliseconds: retry n waits up to `baseDelayMs × 2^(n-1)`. */
  readonly baseDelayMs: number;
  /** Cap of one delay in milliseconds. */
  readonly maxDelayMs: number;
}

/**
 * The upper bound of the wait before retry number `retry` (1 = the first retry): `min(max, base × 2^(retry-1))`.
 * The actual wait is drawn uniformly below it ({@link backoffDelay}).
 */
export function backoffCeiling(retry: number, policy: BackoffPolicy): number {
  if (retry < 1) return 0;
  // 2^30 already exceeds any sane cap; stop there so the exponent cannot overflow to Infinity.
  const exp = Math.min(retry - 1, 30);
  return Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** exp);
}

/**
 * "Full jitter" backoff (AWS Architecture Blog, "Exponential Backoff And Jitter"): a uniform draw in
 * `[0, ceiling)`. Full jitter spreads the retries of many clients that failed together (one EHR blip fails every
 * in-flight request at once) better than equal or decorrelated jitter, at the same mean load.
 *
 * @param retry - 1 for the first retry, 2 for the second, ...
 * @param random - uniform in [0, 1).
 * @returns whole milliseconds.
 */
export function backoffDelay(retry: number, policy: BackoffPolicy, random: () => number): number {
  const r = Math.min(Math.max(random(), 0), 1);
  return Math.floor(r * backoffCeiling(retry, policy));
}

/**
 * Parses a `Retry-After` header: delta-seconds (`"120"`) or an HTTP-date (`"Wed, 21 Oct 2015 07:28:00 GMT"`).
 *
 * @param now - epoch ms, to turn a date into a delay.
 * @returns the delay in milliseconds (≥ 0, at most {@link RETRY_AFTER_SANITY_CAP_MS}), or `undefined` when the
 *   header is absent or unparseable (an unparseable header is ignored, not trusted).
 */
export function parseRetryAfter(value: string | readonly string[] | undefined, now: number): number | undefined {
  const raw = Array.isArray(value) ? value[0] : value;
  if (typeof raw !== 'string') return undefined;
  const text = raw.trim();
  if (text === '') return undefined;
  let delay: number;
  if (/^\d+$/.test(text)) {
    delay = Number(text) * 1000;
  } else {
    // RFC 9110 allows only IMF-fixdate (and two obsolete forms); Date.parse accepts all three. Reject anything
    // without a letter so a bare number with a fraction ("1.5") is not taken for a year.
    if (!/[A-Za-z]/.test(text)) return undefined;
    const at = Date.parse(text);
    if (Number.isNaN(at)) return undefined;
    delay = at - now;
  }
  if (!Number.isFinite(delay)) return RETRY_AFTER_SANITY_CAP_MS;
  return Math.min(Math.max(0, Math.ceil(delay)), RETRY_AFTER_SANITY_CAP_MS);
}

/** One row of the retry schedule produced by a configuration (for the docs and the tests that check them). */
export interface ScheduleRow {
  /** The attempt that is about to be made (2 = the first retry). */
  readonly attempt: number;
  /** The wait before it is drawn uniformly from [0, ceilingMs). */
  readonly ceilingMs: number;
  /** Largest total of backoff waits before this attempt, in milliseconds. */
  readonly cumulativeMaxMs: number;
}

/** The retry schedule of a configuration: one row per retry (attempts 2..maxAttempts). */
export function retrySchedule(maxAttempts: number, policy: BackoffPolicy): ScheduleRow[] {
  const rows: ScheduleRow[] = [];
  let total = 0;
  for (let attempt = 2; attempt <= maxAttempts; attempt++) {
    const ceilingMs = backoffCeiling(attempt - 1, policy);
    total += ceilingMs;
    rows.push({ attempt, ceilingMs, cumulativeMaxMs: total });
  }
  return rows;
}
