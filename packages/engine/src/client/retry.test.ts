import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { DEFAULT_MAX_ATTEMPTS, DEFAULT_RETRY_BASE_DELAY_MS, DEFAULT_RETRY_MAX_DELAY_MS, RETRY_AFTER_SANITY_CAP_MS } from './options.js';
import { backoffCeiling, backoffDelay, parseRetryAfter, retrySchedule } from './retry.js';

const policy = { baseDelayMs: 200, maxDelayMs: 5_000 };

describe('exponential backoff with full jitter', () => {
  it('doubles the ceiling per retry up to the cap', () => {
    expect([1, 2, 3, 4, 5, 6, 7].map((n) => backoffCeiling(n, policy))).toEqual([200, 400, 800, 1600, 3200, 5000, 5000]);
    expect(backoffCeiling(0, policy)).toBe(0);
    // A huge retry number neither overflows nor exceeds the cap.
    expect(backoffCeiling(10_000, policy)).toBe(5000);
  });

  it('draws uniformly in [0, ceiling): random 0 gives 0, random just below 1 stays below the ceiling', () => {
    expect(backoffDelay(3, policy, () => 0)).toBe(0);
    expect(backoffDelay(3, policy, () => 0.5)).toBe(400);
    expect(backoffDelay(3, policy, () => 0.999_999)).toBe(799);
    // A misbehaving random source is clamped, never producing a negative or oversized wait.
    expect(backoffDelay(3, policy, () => 7)).toBe(800);
    expect(backoffDelay(3, policy, () => -1)).toBe(0);
  });

  it('spreads retries across the whole interval (full jitter, not equal jitter)', () => {
    let seed = 42;
    const random = (): number => {
      seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    const draws = Array.from({ length: 2000 }, () => backoffDelay(2, policy, random));
    expect(Math.min(...draws)).toBeLessThan(40);
    expect(Math.max(...draws)).toBeGreaterThan(360);
    const mean = draws.reduce((a, b) => a + b, 0) / draws.length;
    expect(mean).toBeGreaterThan(180);
    expect(mean).toBeLessThan(220);
  });

  it('the default schedule is the one printed in docs/client.md', () => {
    const rows = retrySchedule(DEFAULT_MAX_ATTEMPTS, { baseDelayMs: DEFAULT_RETRY_BASE_DELAY_MS, maxDelayMs: DEFAULT_RETRY_MAX_DELAY_MS });
    expect(rows).toEqual([
      { attempt: 2, ceilingMs: 200, cumulativeMaxMs: 200 },
      { attempt: 3, ceilingMs: 400, cumulativeMaxMs: 600 },
      { attempt: 4, ceilingMs: 800, cumulativeMaxMs: 1400 },
    ]);
    const docs = readFileSync(new URL('../../../../docs/client.md', import.meta.url), 'utf8');
    const ordinal = ['1st', '2nd', '3rd'];
    for (const row of rows) {
      expect(docs).toContain(`| ${row.attempt} (${ordinal[row.attempt - 2]} retry) | [0, ${row.ceilingMs}) ms | ${row.cumulativeMaxMs} ms |`);
    }
  });
});

describe('Retry-After', () => {
  const now = Date.parse('2026-03-01T10:00:00Z');

  it('accepts delta-seconds', () => {
    expect(parseRetryAfter('0', now)).toBe(0);
    expect(parseRetryAfter('3', now)).toBe(3000);
    expect(parseRetryAfter(' 120 ', now)).toBe(120_000);
    expect(parseRetryAfter(['5', '9'], now)).toBe(5000);
  });

  it('accepts an HTTP-date, relative to the injected clock; a past date means now', () => {
    expect(parseRetryAfter('Sun, 01 Mar 2026 10:00:07 GMT', now)).toBe(7000);
    expect(parseRetryAfter('Sun, 01 Mar 2026 09:59:00 GMT', now)).toBe(0);
  });

  it('ignores what it cannot parse, and caps absurd values', () => {
    for (const bad of [undefined, '', 'soon', '1.5', '-3', '3 s']) expect(parseRetryAfter(bad, now)).toBeUndefined();
    expect(parseRetryAfter('999999999', now)).toBe(RETRY_AFTER_SANITY_CAP_MS);
    expect(parseRetryAfter('Fri, 01 Mar 2030 10:00:00 GMT', now)).toBe(RETRY_AFTER_SANITY_CAP_MS);
  });
});
