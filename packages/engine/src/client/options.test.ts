import { describe, expect, it } from 'vitest';
import {
  DEFAULT_ATTEMPT_TIMEOUT_MS,
  DEFAULT_CONNECT_TIMEOUT_MS,
  DEFAULT_DEADLINE_MS,
  DEFAULT_MAX_ATTEMPTS,
  DEFAULT_RATE_LIMIT_CAPACITY,
  DEFAULT_WRITE_NOT_APPLIED_STATUSES,
  resolveClientOptions,
  type EhrClientOptions,
} from './options.js';
import type { TokenProvider } from './token-provider.js';

const tokenProvider: TokenProvider = {
  getAccessToken: () => Promise.resolve('t'),
  refreshAfterUnauthorized: () => Promise.resolve('t2'),
};

describe('client options', () => {
  it('fills in the named defaults and freezes the result', () => {
    const o = resolveClientOptions({ tokenProvider });
    expect(o.settings).toMatchObject({
      connectTimeoutMs: DEFAULT_CONNECT_TIMEOUT_MS,
      attemptTimeoutMs: DEFAULT_ATTEMPT_TIMEOUT_MS,
      deadlineMs: DEFAULT_DEADLINE_MS,
      maxAttempts: DEFAULT_MAX_ATTEMPTS,
      writeNotAppliedStatuses: DEFAULT_WRITE_NOT_APPLIED_STATUSES,
    });
    expect(o.settings.rateLimit?.capacity).toBe(DEFAULT_RATE_LIMIT_CAPACITY);
    expect(Object.isFrozen(o)).toBe(true);
    expect(Object.isFrozen(o.settings)).toBe(true);
    expect(Object.isFrozen(o.settings.rateLimit)).toBe(true);
    expect(Object.isFrozen(o.settings.writeNotAppliedStatuses)).toBe(true);
    expect(Object.isFrozen(DEFAULT_WRITE_NOT_APPLIED_STATUSES)).toBe(true);
  });

  it('keeps explicit values, including rateLimit: null (no client-side limit)', () => {
    const o = resolveClientOptions({ tokenProvider, deadlineMs: 1234, rateLimit: null, writeNotAppliedStatuses: [503] });
    expect(o.settings.deadlineMs).toBe(1234);
    expect(o.settings.rateLimit).toBeNull();
    expect(o.settings.writeNotAppliedStatuses).toEqual([503]);
  });

  it.each([
    [{ deadlineMs: 0 }, 'deadlineMs'],
    [{ connectTimeoutMs: 1.5 }, 'connectTimeoutMs'],
    [{ maxAttempts: 0 }, 'maxAttempts'],
    [{ retryBaseDelayMs: 10_000, retryMaxDelayMs: 100 }, 'retryBaseDelayMs'],
    [{ rateLimit: { capacity: 0, refillPerSecond: 1 } }, 'rateLimit.capacity'],
    [{ writeNotAppliedStatuses: [404] }, 'writeNotAppliedStatuses.0'],
    [{ userAgent: 'bad\nagent' }, 'userAgent'],
    [{ connectTimeotMs: 5 }, '(options)'],
  ])('refuses %j with CONFIG_INVALID naming %s', (bad, path) => {
    expect(() => resolveClientOptions({ tokenProvider, ...bad } as EhrClientOptions)).toThrow(
      expect.objectContaining({ code: 'CONFIG_INVALID', message: expect.stringContaining(`'${path}'`) }),
    );
  });

  it('checks the seams', () => {
    expect(() => resolveClientOptions({} as EhrClientOptions)).toThrow(expect.objectContaining({ code: 'CONFIG_INVALID' }));
    expect(() => resolveClientOptions({ tokenProvider, clock: 5 } as unknown as EhrClientOptions)).toThrow(/'clock'/);
    expect(() => resolveClientOptions({ tokenProvider, timers: {} } as unknown as EhrClientOptions)).toThrow(/'timers'/);
    expect(() => resolveClientOptions({ tokenProvider, logger: { debug() {} } } as unknown as EhrClientOptions)).toThrow(/'logger.info'/);
  });

  it('makes random ids by default: UUID v4 correlation ids, 32-hex trace ids, 16-hex span ids, all distinct', () => {
    const { ids } = resolveClientOptions({ tokenProvider });
    const seen = new Set<string>();
    const variants = new Set<string>();
    for (let i = 0; i < 5000; i++) {
      const correlationId = ids.correlationId();
      expect(correlationId).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
      expect(ids.traceId()).toMatch(/^[0-9a-f]{32}$/);
      expect(ids.spanId()).toMatch(/^[0-9a-f]{16}$/);
      seen.add(correlationId);
      variants.add(correlationId.charAt(19));
    }
    expect(seen.size).toBe(5000);
    expect(variants).toEqual(new Set(['8', '9', 'a', 'b']));
  });
});
