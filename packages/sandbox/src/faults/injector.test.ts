import { isTetherError } from '@tether/core';
import { describe, expect, it } from 'vitest';

import { Interaction, WRITE_INTERACTIONS } from '../interactions.js';
import { createFaultInjector, DEFAULT_FAULT_SEED } from './injector.js';
import type { SeededFaultInjector } from './injector.js';
import { createRng } from './rng.js';
import type { FaultPlan, FaultRequestInfo } from './types.js';

/** Sandbox start used by most tests (epoch ms). */
const T0 = Date.parse('2025-06-01T12:00:00Z');

const request = (overrides: Partial<FaultRequestInfo> = {}): FaultRequestInfo => ({
  method: 'POST',
  resourceType: 'Observation',
  interaction: Interaction.Create,
  now: T0,
  ...overrides,
});

const injector = (faults: unknown[], seed = 1): SeededFaultInjector =>
  createFaultInjector({ profile: { faults }, seed, startedAt: T0 });

/** Runs `n` identical requests and counts the plans `predicate` accepts. */
function countPlans(inj: SeededFaultInjector, n: number, predicate: (p: FaultPlan) => boolean, info = request()): number {
  let hits = 0;
  for (let i = 0; i < n; i++) if (predicate(inj.plan(info))) hits += 1;
  return hits;
}

const ALL_INTERACTIONS = Object.values(Interaction);
const READ_INTERACTIONS = ALL_INTERACTIONS.filter((i) => !WRITE_INTERACTIONS.has(i));

/**
 * A reproducible stream of varied requests (its own seeded generator, independent of the injector's), with the
 * clock moving 0-9 ms per request so that windows open and close during the run.
 */
function syntheticRequests(n: number, seed = 2024): FaultRequestInfo[] {
  const rng = createRng(seed, 'synthetic-requests');
  const shapes: readonly Omit<FaultRequestInfo, 'now'>[] = [
    { method: 'POST', resourceType: 'Observation', interaction: 'create' },
    { method: 'PUT', resourceType: 'Patient', interaction: 'update' },
    { method: 'DELETE', resourceType: 'Observation', interaction: 'delete' },
    { method: 'POST', resourceType: undefined, interaction: 'transaction' },
    { method: 'GET', resourceType: 'Patient', interaction: 'read' },
    { method: 'GET', resourceType: 'Observation', interaction: 'search-type' },
    { method: 'GET', resourceType: undefined, interaction: 'capabilities' },
  ];
  let now = T0;
  return Array.from({ length: n }, () => {
    now += Math.floor(rng.next() * 10);
    const shape = shapes[Math.floor(rng.next() * shapes.length)];
    if (shape === undefined) throw new Error('unreachable');
    return { ...shape, now };
  });
}

const CHAOS = {
  faults: [
    { id: 'storm', kind: 'storm', startMs: 30_000, durationMs: 20_000, retryAfterSeconds: { min: 1, max: 5 } },
    { id: 'reset', kind: 'reset', probability: 0.05 },
    { id: 'unavailable', kind: 'error-before', status: 503, probability: 0.02 },
    { id: 'early-401', kind: 'early-401', probability: 0.01 },
    { id: 'slow', kind: 'timeout', delayMs: 12_000, probability: 0.02 },
    { id: 'jitter', kind: 'latency', fixedMs: 5, jitterMs: 20, probability: 0.3 },
    { id: 'revoke', kind: 'revoke-token', probability: 0.01 },
    { id: 'drop', kind: 'commit-then-drop', probability: 0.05 },
    { id: 'after-500', kind: 'error-after', status: 500, probability: 0.01 },
    { id: 'lag', kind: 'visibility-lag', lagMs: 500 },
  ],
};

function expectCode(fn: () => unknown, code: string, fragment: string): void {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(isTetherError(caught) && caught.code).toBe(code);
  expect(isTetherError(caught) && caught.message).toContain(fragment);
}

describe('createFaultInjector options', () => {
  it('defaults: fixed seed, no faults, startedAt from the clock', () => {
    const inj = createFaultInjector({ clock: () => 1234 });
    expect(inj.seed).toBe(DEFAULT_FAULT_SEED);
    expect(inj.startedAt).toBe(1234);
    expect(inj.profile()).toEqual({ faults: [] });
    expect(inj.plan(request())).toEqual({ delayMs: 0, fired: [] });
    expect(createFaultInjector().startedAt).toBeGreaterThan(0);
  });

  it('rejects bad options with CONFIG_INVALID', () => {
    expectCode(() => createFaultInjector({ seed: -1 }), 'CONFIG_INVALID', 'seed');
    expectCode(() => createFaultInjector({ seed: 1.5 }), 'CONFIG_INVALID', 'seed');
    expectCode(() => createFaultInjector({ seed: 2 ** 32 }), 'CONFIG_INVALID', 'seed');
    expectCode(() => createFaultInjector({ clock: 5 as unknown as () => number }), 'CONFIG_INVALID', 'clock');
    expectCode(() => createFaultInjector({ clock: () => Number.NaN }), 'CONFIG_INVALID', 'clock');
    expectCode(() => createFaultInjector({ startedAt: Number.POSITIVE_INFINITY }), 'CONFIG_INVALID', 'startedAt');
    expectCode(() => createFaultInjector({ sede: 1 } as never), 'CONFIG_INVALID', 'sede');
  });

  it('rejects a bad profile with FAULT_PROFILE_INVALID', () => {
    expectCode(() => injector([{ kind: 'reset', probability: 2 }]), 'FAULT_PROFILE_INVALID', 'faults[0].probability');
  });
});

describe('plan(): probabilities', () => {
  it('fires a p=0.05 fault on 5% of 10,000 requests, within a tight binomial bound, for several seeds', () => {
    // n = 10,000, p = 0.05: mean 500, standard deviation 21.8. ±4 sd = [413, 587]. Seeded, so deterministic.
    for (const seed of [1, 2, 3, 42, 0xdeadbeef]) {
      const hits = countPlans(injector([{ kind: 'reset', probability: 0.05 }], seed), 10_000, (p) => p.before !== undefined);
      expect(hits, `seed ${seed}`).toBeGreaterThanOrEqual(413);
      expect(hits, `seed ${seed}`).toBeLessThanOrEqual(587);
    }
  });

  it('fires a p=0.5 fault on about half the requests', () => {
    const hits = countPlans(injector([{ kind: 'early-401', probability: 0.5 }]), 10_000, (p) => p.before !== undefined);
    expect(Math.abs(hits - 5_000)).toBeLessThanOrEqual(200); // sd 50
  });

  it('never fires at p=0 and always fires at p=1', () => {
    expect(countPlans(injector([{ kind: 'reset', probability: 0 }]), 5_000, (p) => p.fired.length > 0)).toBe(0);
    expect(countPlans(injector([{ kind: 'reset', probability: 1 }]), 5_000, (p) => p.fired.length > 0)).toBe(5_000);
  });
});

describe('plan(): match filters', () => {
  it('matches methods case-insensitively', () => {
    const inj = injector([{ kind: 'reset', match: { methods: ['post'] } }]);
    expect(inj.plan(request({ method: 'POST' })).before).toEqual({ kind: 'reset' });
    expect(inj.plan(request({ method: 'post' })).before).toEqual({ kind: 'reset' });
    expect(inj.plan(request({ method: 'PUT', interaction: 'update' })).before).toBeUndefined();
  });

  it('matches resource types; a request without one never matches a resourceTypes list', () => {
    const inj = injector([{ kind: 'reset', match: { resourceTypes: ['Observation'] } }]);
    expect(inj.plan(request({ resourceType: 'Observation' })).before).toBeDefined();
    expect(inj.plan(request({ resourceType: 'Patient' })).before).toBeUndefined();
    expect(inj.plan(request({ resourceType: undefined, interaction: 'transaction' })).before).toBeUndefined();
    // Without a resourceTypes list, system-level requests match.
    expect(injector([{ kind: 'reset' }]).plan(request({ resourceType: undefined })).before).toBeDefined();
  });

  it('matches interactions', () => {
    const inj = injector([{ kind: 'reset', match: { interactions: ['search-type', 'read'] } }]);
    const fired = ALL_INTERACTIONS.filter((interaction) => inj.plan(request({ interaction })).before !== undefined);
    expect(fired.sort()).toEqual(['read', 'search-type']);
  });

  it('requires every given list to match', () => {
    const inj = injector([
      { kind: 'reset', match: { methods: ['GET'], resourceTypes: ['Patient'], interactions: ['read'] } },
    ]);
    expect(inj.plan(request({ method: 'GET', resourceType: 'Patient', interaction: 'read' })).before).toBeDefined();
    expect(inj.plan(request({ method: 'GET', resourceType: 'Patient', interaction: 'search-type' })).before).toBeUndefined();
    expect(inj.plan(request({ method: 'GET', resourceType: 'Observation', interaction: 'read' })).before).toBeUndefined();
    expect(inj.plan(request({ method: 'HEAD', resourceType: 'Patient', interaction: 'read' })).before).toBeUndefined();
  });
});

describe('plan(): windows', () => {
  it('applies startMs (inclusive) and endMs (exclusive) relative to startedAt', () => {
    const inj = injector([{ kind: 'reset', window: { startMs: 1_000, endMs: 2_000 } }]);
    const at = (offset: number) => inj.plan(request({ now: T0 + offset })).before !== undefined;
    expect([at(0), at(999), at(1_000), at(1_999), at(2_000), at(5_000)]).toEqual([false, false, true, true, false, false]);
  });

  it('takes startedAt from the injected clock when not given', () => {
    let clock = T0 + 60_000;
    const inj = createFaultInjector({
      profile: { faults: [{ kind: 'reset', window: { startMs: 1_000 } }] },
      clock: () => clock,
    });
    clock = 0; // later readings are not used: windows are relative to the start
    expect(inj.plan(request({ now: T0 + 60_500 })).before).toBeUndefined();
    expect(inj.plan(request({ now: T0 + 61_000 })).before).toBeDefined();
  });

  it('applies ISO from (inclusive) and until (exclusive), intersected with startMs/endMs', () => {
    // until is 12:00:12Z written with an offset; endMs would allow until 12:00:15Z: the earlier bound wins.
    const inj = injector([
      { kind: 'reset', window: { from: '2025-06-01T12:00:10Z', until: '2025-06-01T13:00:12+01:00', endMs: 15_000 } },
    ]);
    const at = (offset: number) => inj.plan(request({ now: T0 + offset })).before !== undefined;
    expect([at(9_999), at(10_000), at(11_999), at(12_000), at(14_999)]).toEqual([false, true, true, false, false]);

    const open = injector([{ kind: 'reset', window: { from: '2025-06-01T12:00:10Z', endMs: 15_000 } }]);
    const at2 = (offset: number) => open.plan(request({ now: T0 + offset })).before !== undefined;
    expect([at2(9_999), at2(10_000), at2(14_999), at2(15_000)]).toEqual([false, true, true, false]);
  });
});

describe('plan(): kinds and precedence', () => {
  it('maps every per-request kind to its plan', () => {
    const one = (fault: object, info = request()) => {
      const { fired: _fired, ...plan } = injector([fault]).plan(info);
      return plan;
    };
    expect(one({ kind: 'latency', fixedMs: 40 })).toEqual({ delayMs: 40 });
    expect(one({ kind: 'timeout', delayMs: 12_000 })).toEqual({ delayMs: 12_000 });
    expect(one({ kind: 'reset' })).toEqual({ delayMs: 0, before: { kind: 'reset' } });
    expect(one({ kind: 'error-before', status: 502 })).toEqual({ delayMs: 0, before: { kind: 'status', status: 502 } });
    expect(one({ kind: 'error-after', status: 504 })).toEqual({ delayMs: 0, after: { kind: 'status', status: 504 } });
    expect(one({ kind: 'commit-then-drop' })).toEqual({ delayMs: 0, after: { kind: 'drop' } });
    expect(one({ kind: 'rate-limit', retryAfterSeconds: 7 })).toEqual({
      delayMs: 0,
      before: { kind: 'rate-limit', retryAfterSeconds: 7 },
    });
    expect(one({ kind: 'early-401' })).toEqual({ delayMs: 0, before: { kind: 'unauthorized' } });
    expect(one({ kind: 'revoke-token' })).toEqual({ delayMs: 0, revokeToken: true });
  });

  it('adds up every latency and timeout that fires, next to a before fault', () => {
    const plan = injector([
      { id: 'a', kind: 'latency', fixedMs: 100 },
      { id: 'b', kind: 'reset' },
      { id: 'c', kind: 'latency', fixedMs: 250 },
      { id: 'd', kind: 'timeout', delayMs: 5_000 },
    ]).plan(request());
    expect(plan).toEqual({ delayMs: 5_350, before: { kind: 'reset' }, fired: ['a', 'b', 'c', 'd'] });
  });

  it('lets the first before fault in profile order win, and a before fault pre-empt after faults', () => {
    const inj = injector([
      { id: 'drop', kind: 'commit-then-drop' },
      { id: '401', kind: 'early-401' },
      { id: '503', kind: 'error-before' },
      { id: 'after-500', kind: 'error-after' },
    ]);
    expect(inj.plan(request())).toEqual({ delayMs: 0, before: { kind: 'unauthorized' }, fired: ['401'] });
    // Only the fault that shaped the plan is counted; the others drew their numbers but did not fire.
    expect(inj.stats().byFault).toEqual({
      drop: { kind: 'commit-then-drop', count: 0 },
      '401': { kind: 'early-401', count: 1 },
      '503': { kind: 'error-before', count: 0 },
      'after-500': { kind: 'error-after', count: 0 },
    });
    expect(inj.stats().total).toBe(1);
  });

  it('lets the first after fault in profile order win when no before fault fires', () => {
    const plan = injector([
      { id: 'after-502', kind: 'error-after', status: 502 },
      { id: 'drop', kind: 'commit-then-drop' },
      { id: 'never', kind: 'reset', probability: 0 },
    ]).plan(request());
    expect(plan).toEqual({ delayMs: 0, after: { kind: 'status', status: 502 }, fired: ['after-502'] });
  });

  it('drops a revocation under a before fault, and an after fault under a revocation', () => {
    expect(injector([{ id: 'r', kind: 'revoke-token' }, { id: 'x', kind: 'reset' }]).plan(request())).toEqual({
      delayMs: 0,
      before: { kind: 'reset' },
      fired: ['x'],
    });
    expect(injector([{ id: 'd', kind: 'commit-then-drop' }, { id: 'r', kind: 'revoke-token' }]).plan(request())).toEqual({
      delayMs: 0,
      revokeToken: true,
      fired: ['r'],
    });
  });

  it('never fires writes-only kinds on reads, and fires them on every write', () => {
    const inj = injector([
      { id: 'drop', kind: 'commit-then-drop' },
      { id: 'after', kind: 'error-after' },
    ]);
    for (const interaction of READ_INTERACTIONS) {
      for (let i = 0; i < 50; i++) {
        expect(inj.plan(request({ method: 'GET', interaction })), interaction).toEqual({ delayMs: 0, fired: [] });
      }
    }
    for (const interaction of WRITE_INTERACTIONS) {
      expect(inj.plan(request({ interaction })).after, interaction).toEqual({ kind: 'drop' });
    }
    expect(inj.stats().byFault['drop']?.count).toBe(WRITE_INTERACTIONS.size);
  });
});

describe('plan(): magnitudes', () => {
  it('draws Retry-After uniformly over an inclusive range', () => {
    const inj = injector([{ kind: 'rate-limit', retryAfterSeconds: { min: 1, max: 5 } }]);
    const seen = new Map<number, number>();
    for (let i = 0; i < 5_000; i++) {
      const before = inj.plan(request()).before;
      if (before?.kind !== 'rate-limit') throw new Error('expected a rate-limit');
      seen.set(before.retryAfterSeconds, (seen.get(before.retryAfterSeconds) ?? 0) + 1);
    }
    expect([...seen.keys()].sort()).toEqual([1, 2, 3, 4, 5]);
    // Each value ~1,000 times (sd 28); both bounds are as likely as the middle.
    for (const [value, n] of seen) expect(Math.abs(n - 1_000), `Retry-After ${value}`).toBeLessThan(150);
  });

  it('uses a fixed Retry-After when min = max', () => {
    const inj = injector([{ kind: 'rate-limit', retryAfterSeconds: { min: 3, max: 3 } }]);
    expect(countPlans(inj, 500, (p) => p.before?.kind === 'rate-limit' && p.before.retryAfterSeconds === 3)).toBe(500);
  });

  it('draws jitter uniformly over 0..jitterMs, both inclusive', () => {
    const inj = injector([{ kind: 'latency', fixedMs: 10, jitterMs: 3 }]);
    const seen = new Set<number>();
    for (let i = 0; i < 2_000; i++) seen.add(inj.plan(request()).delayMs);
    expect([...seen].sort()).toEqual([10, 11, 12, 13]);
  });
});

describe('storm shorthand', () => {
  it('429s about 90% of requests inside its window and none outside, with Retry-After in range', () => {
    const inj = injector([{ kind: 'storm', startMs: 30_000, durationMs: 20_000, retryAfterSeconds: { min: 1, max: 5 } }]);
    const stormy = (offset: number) => {
      const plan = inj.plan(request({ now: T0 + offset }));
      if (plan.before !== undefined) {
        expect(plan.before.kind).toBe('rate-limit');
        if (plan.before.kind === 'rate-limit') expect([1, 2, 3, 4, 5]).toContain(plan.before.retryAfterSeconds);
      }
      return plan.before !== undefined;
    };
    let inside = 0;
    let outside = 0;
    for (let i = 0; i < 2_000; i++) {
      if (stormy(30_000 + i * 10)) inside += 1; // 30.00 s .. 49.99 s
      if (stormy(i % 2 === 0 ? i * 15 : 50_000 + i * 10)) outside += 1; // 0 .. 29.99 s and 50 s ..
    }
    expect(outside).toBe(0);
    expect(Math.abs(inside - 1_800)).toBeLessThanOrEqual(60); // sd 13.4
    expect(inj.stats().byKind).toEqual({ 'rate-limit': inside });
  });
});

describe('replay', () => {
  const run = (seed: number, requests: readonly FaultRequestInfo[]) => {
    const inj = createFaultInjector({ profile: CHAOS, seed, startedAt: T0 });
    return { plans: requests.map((r) => inj.plan(r)), stats: inj.stats() };
  };

  it('gives the same plans for the same seed and request sequence (10,000 requests)', () => {
    const requests = syntheticRequests(10_000);
    const first = run(7, requests);
    const second = run(7, requests);
    expect(second.plans).toEqual(first.plans);
    expect(second.stats).toEqual(first.stats);
    // The run must have exercised the interesting paths, or equality would prove little.
    const kinds = first.stats.byKind;
    for (const kind of ['rate-limit', 'reset', 'error-before', 'early-401', 'timeout', 'latency', 'revoke-token', 'commit-then-drop', 'error-after']) {
      expect(kinds[kind], kind).toBeGreaterThan(0);
    }
    expect(first.stats.requestsSeen).toBe(10_000);
  });

  it('gives different plans for a different seed', () => {
    const requests = syntheticRequests(10_000);
    const a = run(7, requests).plans.map((p) => p.fired.join(','));
    const b = run(8, requests).plans.map((p) => p.fired.join(','));
    const differing = a.filter((fired, i) => fired !== b[i]).length;
    expect(differing).toBeGreaterThan(1_000);
  });

  it("does not move a fault's decisions when other faults are added, removed or reordered", () => {
    const requests = syntheticRequests(3_000);
    const resets = (faults: unknown[]) => {
      const inj = injector(faults, 99);
      return requests.map((r) => inj.plan(r).fired.includes('reset'));
    };
    const alone = resets([{ id: 'reset', kind: 'reset', probability: 0.1 }]);
    // Faults that can never pre-empt a reset (after it in order, or not `before` faults) may come and go freely.
    const crowded = resets([
      { id: 'lag', kind: 'latency', fixedMs: 1, probability: 0.5 },
      { id: 'drop', kind: 'commit-then-drop', probability: 0.5 },
      { id: 'reset', kind: 'reset', probability: 0.1 },
      { id: 'later', kind: 'error-before', probability: 0.5 },
    ]);
    expect(crowded).toEqual(alone);
    expect(alone.filter(Boolean).length).toBeGreaterThan(200);
  });

  it("changing one request's attributes changes no other request's decision", () => {
    // Draws are taken whether or not a fault matches, so turning requests the fault ignores (Patient) into
    // requests it matches (Observation) must leave its decisions on every other position unchanged. With draws
    // taken only on a match, every decision after the first changed request would shift.
    const base = syntheticRequests(3_000);
    const altered = base.map((r) => (r.resourceType === 'Patient' ? { ...r, resourceType: 'Observation' } : r));
    const decisions = (requests: readonly FaultRequestInfo[]) => {
      const inj = injector([{ id: 'obs', kind: 'reset', probability: 0.2, match: { resourceTypes: ['Observation'] } }]);
      return requests.map((r) => inj.plan(r).fired.length);
    };
    const before = decisions(base);
    const after = decisions(altered);
    const unchanged = (_: number, i: number) => base[i]?.resourceType !== 'Patient';
    expect(after.filter(unchanged)).toEqual(before.filter(unchanged));
    // The altered positions now can fire (so the comparison above is not vacuous).
    expect(after.filter((_, i) => base[i]?.resourceType === 'Patient').some((n) => n > 0)).toBe(true);
    expect(before.filter((_, i) => base[i]?.resourceType === 'Patient').every((n) => n === 0)).toBe(true);
  });
});

describe('setProfile, profile() and stats()', () => {
  it('keeps stats and RNG state across setProfile', () => {
    const faults = [{ id: 'r', kind: 'reset', probability: 0.3 }];
    const requests = syntheticRequests(400);
    const straight = injector(faults, 5);
    const expected = requests.map((r) => straight.plan(r));

    const switched = injector(faults, 5);
    const got = requests.slice(0, 200).map((r) => switched.plan(r));
    switched.setProfile({ faults: [...faults, { id: 'new', kind: 'latency', fixedMs: 1, probability: 0 }] });
    got.push(...requests.slice(200).map((r) => switched.plan(r)));
    // Same id, same stream: the switch neither restarted nor skipped the sequence of "r".
    expect(got).toEqual(expected);
    expect(switched.stats()).toEqual({
      ...straight.stats(),
      byFault: { ...straight.stats().byFault, new: { kind: 'latency', count: 0 } },
      byKind: { ...straight.stats().byKind, latency: 0 },
    });
  });

  it('keeps the counts of faults that were removed from the profile', () => {
    const inj = injector([{ id: 'x', kind: 'early-401' }]);
    inj.plan(request());
    inj.plan(request());
    inj.setProfile({ faults: [] });
    inj.plan(request());
    expect(inj.stats()).toEqual({
      seed: 1,
      requestsSeen: 3,
      total: 2,
      byFault: { x: { kind: 'early-401', count: 2 } },
      byKind: { 'early-401': 2 },
    });
  });

  it('rejects an invalid profile and keeps the old one', () => {
    const inj = injector([{ id: 'x', kind: 'reset' }]);
    const before = inj.profile();
    expectCode(() => inj.setProfile({ faults: [{ kind: 'reset', probability: 2 }] }), 'FAULT_PROFILE_INVALID', 'faults[0].probability');
    expect(inj.profile()).toBe(before);
    expect(inj.plan(request()).fired).toEqual(['x']);
  });

  it('returns the normalized profile, which setProfile accepts back', () => {
    const inj = injector([{ kind: 'storm', durationMs: 1_000 }]);
    const profile = inj.profile();
    expect(profile).toEqual({
      faults: [
        { id: 'storm-0', kind: 'rate-limit', probability: 0.9, window: { startMs: 0, endMs: 1_000 }, retryAfterSeconds: { min: 1, max: 1 } },
      ],
    });
    inj.setProfile(JSON.parse(JSON.stringify(profile)));
    expect(inj.profile()).toEqual(profile);
  });

  it('counts requests and fired faults consistently', () => {
    const inj = createFaultInjector({ profile: CHAOS, seed: 3, startedAt: T0 });
    let firedTotal = 0;
    for (const r of syntheticRequests(2_000)) firedTotal += inj.plan(r).fired.length;
    const stats = inj.stats();
    expect(stats.requestsSeen).toBe(2_000);
    expect(stats.total).toBe(firedTotal);
    expect(Object.values(stats.byKind).reduce((a, b) => a + b, 0)).toBe(firedTotal);
    expect(Object.values(stats.byFault).reduce((a, b) => a + b.count, 0)).toBe(firedTotal);
  });

  it('record() counts faults that fire outside plan(), including unknown ids', () => {
    const inj = injector([{ id: 'lag', kind: 'visibility-lag', lagMs: 500 }]);
    inj.record('lag');
    inj.record('lag');
    inj.record('mystery');
    expect(inj.stats()).toMatchObject({
      total: 3,
      byFault: { lag: { kind: 'visibility-lag', count: 2 }, mystery: { kind: 'unknown', count: 1 } },
      byKind: { 'visibility-lag': 2, unknown: 1 },
    });
  });

  it('record() accepts the kind name of a lag or drift fault and counts the first such fault', () => {
    const inj = injector([
      { id: 'lag-a', kind: 'visibility-lag', lagMs: 500 },
      { id: 'lag-b', kind: 'visibility-lag', lagMs: 900 },
      { kind: 'schema-drift', elements: ['Observation.note'] },
    ]);
    inj.record('visibility-lag');
    inj.record('schema-drift');
    inj.record('reset'); // not a lag or drift kind, and no such id: unknown
    expect(inj.stats().byFault).toEqual({
      'lag-a': { kind: 'visibility-lag', count: 1 },
      'lag-b': { kind: 'visibility-lag', count: 0 },
      'schema-drift-2': { kind: 'schema-drift', count: 1 },
      reset: { kind: 'unknown', count: 1 },
    });
    // An explicit id equal to a kind name is just an id.
    const named = injector([
      { id: 'other', kind: 'visibility-lag', lagMs: 1 },
      { id: 'visibility-lag', kind: 'visibility-lag', lagMs: 2 },
    ]);
    named.record('visibility-lag');
    expect(named.stats().byFault['visibility-lag']?.count).toBe(1);
    expect(named.stats().byFault['other']?.count).toBe(0);
  });

  it('returns a snapshot: later plans do not change an earlier stats() result', () => {
    const inj = injector([{ id: 'x', kind: 'reset' }]);
    const snapshot = inj.stats();
    inj.plan(request());
    expect(snapshot.total).toBe(0);
    expect(snapshot.byFault['x']?.count).toBe(0);
  });
});

describe('visibility lag and schema drift', () => {
  it('visibilityLagMs respects resourceTypes and the window, and takes the longest of several lags', () => {
    const inj = injector([
      { id: 'all', kind: 'visibility-lag', lagMs: 500 },
      { id: 'obs', kind: 'visibility-lag', lagMs: 2_000, match: { resourceTypes: ['Observation'] }, window: { startMs: 10_000 } },
    ]);
    expect(inj.visibilityLagMs('Patient', T0)).toBe(500);
    expect(inj.visibilityLagMs('Observation', T0 + 9_999)).toBe(500);
    expect(inj.visibilityLagMs('Observation', T0 + 10_000)).toBe(2_000);
    expect(inj.visibilityLag('Observation', T0 + 10_000)).toEqual({ faultId: 'obs', lagMs: 2_000 });
    expect(injector([]).visibilityLagMs('Patient', T0)).toBe(0);
    expect(injector([]).visibilityLag('Patient', T0)).toBeUndefined();
  });

  it('does not count lag or drift by itself, and plan() ignores them', () => {
    const inj = injector([
      { kind: 'visibility-lag', lagMs: 500 },
      { kind: 'schema-drift', elements: ['Observation.note'] },
    ]);
    expect(inj.plan(request())).toEqual({ delayMs: 0, fired: [] });
    inj.visibilityLagMs('Observation', T0);
    inj.rejectedElements('Observation', T0);
    expect(inj.stats().total).toBe(0);
  });

  it('rejectedElements starts at the window start, only for the named type, without duplicates', () => {
    const inj = injector([
      { id: 'note', kind: 'schema-drift', elements: ['Observation.note', 'Patient.extension'], window: { startMs: 60_000 } },
      { id: 'iso', kind: 'schema-drift', elements: ['Observation.note', 'Observation.value[x]'], window: { from: '2025-06-01T12:05:00Z' } },
    ]);
    expect(inj.rejectedElements('Observation', T0 + 59_999)).toEqual([]);
    expect(inj.rejectedElements('Observation', T0 + 60_000)).toEqual(['Observation.note']);
    expect(inj.rejectedElements('Patient', T0 + 60_000)).toEqual(['Patient.extension']);
    expect(inj.rejectedElements('Encounter', T0 + 60_000)).toEqual([]);
    expect(inj.rejectedElements('Observation', T0 + 300_000)).toEqual(['Observation.note', 'Observation.value[x]']);
    expect(inj.rejectedElementFaults('Observation', T0 + 300_000)).toEqual([
      { faultId: 'note', element: 'Observation.note' },
      { faultId: 'iso', element: 'Observation.value[x]' },
    ]);
  });
});

describe('cost', () => {
  it('is cheap: 200,000 plans with the chaos profile in well under a second', () => {
    const inj = createFaultInjector({ profile: CHAOS, seed: 1, startedAt: T0 });
    const requests = syntheticRequests(1_000);
    const started = performance.now();
    for (let i = 0; i < 200; i++) for (const r of requests) inj.plan(r);
    const elapsed = performance.now() - started;
    // Typically ~50 ms; the sandbox needs < 0.5 ms per request (2,000 creates/s), this bound is 5 µs per plan.
    expect(elapsed).toBeLessThan(1_000);
  });

  it('returns the shared empty plan when the profile has no per-request faults', () => {
    const inj = injector([{ kind: 'visibility-lag', lagMs: 5 }]);
    const first = inj.plan(request());
    expect(inj.plan(request())).toBe(first);
    expect(Object.isFrozen(first)).toBe(true);
    expect(inj.stats().requestsSeen).toBe(2);
  });
});
