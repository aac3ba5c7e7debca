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
});
