import { readdirSync, readFileSync } from 'node:fs';

import { isTetherError } from '@tether/core';
import { describe, expect, it } from 'vitest';

import {
  DEFAULT_ERROR_AFTER_STATUS,
  DEFAULT_ERROR_BEFORE_STATUS,
  DEFAULT_FAULT_PROBABILITY,
  DEFAULT_RETRY_AFTER_SECONDS,
  DEFAULT_STORM_PROBABILITY,
  DEFAULT_STORM_START_MS,
  FaultKind,
  MAX_FAULTS,
  parseFaultProfile,
  STORM_KIND,
} from './profile.js';
import type { FaultProfileProblem } from './profile.js';

const EXAMPLES_DIR = new URL('../../faults/', import.meta.url);
const DOCS = new URL('../../../../docs/faults.md', import.meta.url);

const readExample = (name: string): unknown => JSON.parse(readFileSync(new URL(name, EXAMPLES_DIR), 'utf8'));

/** Parses `profile`, expecting FAULT_PROFILE_INVALID with a problem at `path` whose message contains `fragment`. */
function expectInvalid(profile: unknown, path: string, fragment: string): void {
  let caught: unknown;
  try {
    parseFaultProfile(profile);
  } catch (e) {
    caught = e;
  }
  expect(isTetherError(caught), 'a TetherError is thrown').toBe(true);
  if (!isTetherError(caught)) return;
  expect(caught.code).toBe('FAULT_PROFILE_INVALID');
  expect(caught.message).toContain(`${path}: `);
  const problems = caught.details['problems'] as FaultProfileProblem[];
  expect(problems).toContainEqual({ path, message: expect.stringContaining(fragment) as unknown });
}

describe('parseFaultProfile: normalization', () => {
  it('fills in the defaults of every kind', () => {
    const profile = parseFaultProfile({
      faults: [
        { kind: 'latency', jitterMs: 10 },
        { kind: 'timeout', delayMs: 12_000 },
        { kind: 'reset' },
        { kind: 'error-before' },
        { kind: 'error-after' },
        { kind: 'commit-then-drop' },
        { kind: 'rate-limit' },
        { kind: 'early-401' },
        { kind: 'revoke-token' },
        { kind: 'visibility-lag', lagMs: 500 },
        { kind: 'schema-drift', elements: ['Observation.note'] },
      ],
    });
    expect(profile).toEqual({
      faults: [
        { id: 'latency-0', kind: 'latency', probability: 1, fixedMs: 0, jitterMs: 10 },
        { id: 'timeout-1', kind: 'timeout', probability: 1, delayMs: 12_000 },
        { id: 'reset-2', kind: 'reset', probability: 1 },
        { id: 'error-before-3', kind: 'error-before', probability: 1, status: DEFAULT_ERROR_BEFORE_STATUS },
        { id: 'error-after-4', kind: 'error-after', probability: 1, status: DEFAULT_ERROR_AFTER_STATUS },
        { id: 'commit-then-drop-5', kind: 'commit-then-drop', probability: 1 },
        {
          id: 'rate-limit-6',
          kind: 'rate-limit',
          probability: 1,
          retryAfterSeconds: { min: DEFAULT_RETRY_AFTER_SECONDS, max: DEFAULT_RETRY_AFTER_SECONDS },
        },
        { id: 'early-401-7', kind: 'early-401', probability: 1 },
        { id: 'revoke-token-8', kind: 'revoke-token', probability: 1 },
        { id: 'visibility-lag-9', kind: 'visibility-lag', probability: 1, lagMs: 500 },
        { id: 'schema-drift-10', kind: 'schema-drift', probability: 1, elements: ['Observation.note'] },
      ],
    });
  });

  it('expands the storm shorthand into a rate-limit fault with a window', () => {
    const profile = parseFaultProfile({
      faults: [
        { kind: 'reset', probability: 0.1 },
        { kind: STORM_KIND, startMs: 30_000, durationMs: 20_000, retryAfterSeconds: { min: 1, max: 5 } },
        { id: 'quiet', kind: STORM_KIND, durationMs: 5_000, probability: 0.5, match: { methods: ['get'] } },
      ],
    });
    expect(profile.faults[1]).toEqual({
      id: 'storm-1',
      kind: 'rate-limit',
      probability: DEFAULT_STORM_PROBABILITY,
      window: { startMs: 30_000, endMs: 50_000 },
      retryAfterSeconds: { min: 1, max: 5 },
    });
    expect(profile.faults[2]).toEqual({
      id: 'quiet',
      kind: 'rate-limit',
      probability: 0.5,
      match: { methods: ['GET'] },
      window: { startMs: 0, endMs: 5_000 },
      retryAfterSeconds: { min: 1, max: 1 },
    });
  });

  it('upper-cases methods, keeps explicit ids, descriptions and windows, and de-duplicates drift elements', () => {
    const profile = parseFaultProfile({
      description: 'test',
      faults: [
        {
          id: 'slow-writes',
          description: 'slow',
          kind: 'latency',
          fixedMs: 5,
          match: { methods: ['post', 'Put'], resourceTypes: ['Observation'], interactions: ['create', 'update'] },
          window: { startMs: 10, endMs: 20, from: '2025-01-01T00:00:00Z', until: '2025-01-02T00:00:00+01:00' },
        },
        { kind: 'schema-drift', elements: ['Observation.note', 'Observation.note', 'Patient.extension'] },
      ],
    });
    expect(profile).toEqual({
      description: 'test',
      faults: [
        {
          id: 'slow-writes',
          kind: 'latency',
          description: 'slow',
          probability: 1,
          match: { methods: ['POST', 'PUT'], resourceTypes: ['Observation'], interactions: ['create', 'update'] },
          window: { startMs: 10, endMs: 20, from: '2025-01-01T00:00:00Z', until: '2025-01-02T00:00:00+01:00' },
          fixedMs: 5,
          jitterMs: 0,
        },
        { id: 'schema-drift-1', kind: 'schema-drift', probability: 1, elements: ['Observation.note', 'Patient.extension'] },
      ],
    });
  });

  it('is idempotent: a normalized profile parses to itself (GET /_admin/faults output can be posted back)', () => {
    for (const name of ['chaos.json', 'storm.json']) {
      const once = parseFaultProfile(readExample(name));
      expect(parseFaultProfile(JSON.parse(JSON.stringify(once)))).toEqual(once);
    }
  });

  it('returns a deep-frozen profile', () => {
    const profile = parseFaultProfile({ faults: [{ kind: 'latency', fixedMs: 1, match: { methods: ['GET'] } }] });
    expect(Object.isFrozen(profile)).toBe(true);
    expect(Object.isFrozen(profile.faults)).toBe(true);
    const fault = profile.faults[0];
    expect(fault?.kind === 'latency' && Object.isFrozen(fault.match?.methods)).toBe(true);
  });

  it('accepts probability 0 and 1 and an empty fault list', () => {
    expect(parseFaultProfile({ faults: [] })).toEqual({ faults: [] });
    expect(parseFaultProfile({ faults: [{ kind: 'reset', probability: 0 }] }).faults[0]?.probability).toBe(0);
    expect(parseFaultProfile({ faults: [{ kind: 'visibility-lag', lagMs: 1, probability: 1 }] }).faults).toHaveLength(1);
  });
});

describe('parseFaultProfile: invalid profiles give FAULT_PROFILE_INVALID naming the path', () => {
  it('rejects unknown keys, at the top level and in a fault, naming the key and the kind', () => {
    expectInvalid({ faults: [], extra: 1 }, 'extra', 'unknown key');
    expectInvalid({ faults: [{ kind: 'reset', probabilty: 0.5 }] }, 'faults[0].probabilty', 'unknown key for kind "reset"');
    // A field of another kind is the usual mistake.
    expectInvalid({ faults: [{ kind: 'reset', status: 503 }] }, 'faults[0].status', 'for kind "reset"');
    expectInvalid({ faults: [{ kind: 'latency', fixedMs: 1, match: { method: ['GET'] } }] }, 'faults[0].match.method', 'unknown key');
    expectInvalid({ faults: [{ kind: 'latency', fixedMs: 1, window: { start: 1 } }] }, 'faults[0].window.start', 'unknown key');
  });

  it('rejects a probability outside [0, 1]', () => {
    expectInvalid({ faults: [{ kind: 'reset', probability: 2 }] }, 'faults[0].probability', '<=1');
    expectInvalid({ faults: [{ kind: 'reset', probability: -0.1 }] }, 'faults[0].probability', '>=0');
    expectInvalid({ faults: [{ kind: 'reset', probability: '0.5' }] }, 'faults[0].probability', 'expected number');
  });

  it('rejects duplicate ids, explicit or derived', () => {
    expectInvalid(
      { faults: [{ id: 'x', kind: 'reset' }, { id: 'x', kind: 'early-401' }] },
      'faults[1].id',
      'duplicate fault id "x"; already used by faults[0]',
    );
    expectInvalid(
      { faults: [{ kind: 'reset' }, { id: 'reset-0', kind: 'reset' }] },
      'faults[1].id',
      'duplicate fault id "reset-0"',
    );
    expectInvalid(
      { faults: [{ id: 'reset-1', kind: 'reset' }, { kind: 'reset' }] },
      'faults[1].id',
      'derived from kind and index',
    );
  });

  it('rejects an unknown or missing kind, listing the valid ones', () => {
    expectInvalid({ faults: [{ kind: 'explode' }] }, 'faults[0].kind', 'unknown fault kind "explode"; expected one of: latency');
    expectInvalid({ faults: [{ probability: 1 }] }, 'faults[0].kind', 'missing fault kind');
  });

  it('rejects writes-only kinds restricted to reads', () => {
    expectInvalid(
      { faults: [{ kind: 'error-after', match: { interactions: ['create', 'read'] } }] },
      'faults[0].match.interactions[1]',
      'error-after only fires on writes',
    );
    expectInvalid(
      { faults: [{ kind: 'commit-then-drop', match: { interactions: ['search-type'] } }] },
      'faults[0].match.interactions[0]',
      'commit-then-drop only fires on writes',
    );
  });

  it('rejects a probability other than 1 on server-wide kinds, and match fields they cannot use', () => {
    expectInvalid({ faults: [{ kind: 'visibility-lag', lagMs: 5, probability: 0.5 }] }, 'faults[0].probability', 'not decided per request');
    expectInvalid({ faults: [{ kind: 'schema-drift', elements: ['Patient.name'], probability: 0 }] }, 'faults[0].probability', 'set it to 1');
    expectInvalid(
      { faults: [{ kind: 'visibility-lag', lagMs: 5, match: { methods: ['GET'] } }] },
      'faults[0].match.methods',
      'unknown key',
    );
    expectInvalid({ faults: [{ kind: 'schema-drift', elements: ['Patient.name'], match: {} }] }, 'faults[0].match', 'unknown key');
  });

  it('rejects bad windows', () => {
    expectInvalid({ faults: [{ kind: 'reset', window: { startMs: 10, endMs: 10 } }] }, 'faults[0].window.endMs', 'greater than startMs');
    expectInvalid({ faults: [{ kind: 'reset', window: { from: 'yesterday' } }] }, 'faults[0].window.from', 'ISO 8601');
    expectInvalid({ faults: [{ kind: 'reset', window: { from: '2025-01-01T00:00:00' } }] }, 'faults[0].window.from', 'with a zone');
    expectInvalid(
      { faults: [{ kind: 'reset', window: { from: '2025-01-02T00:00:00Z', until: '2025-01-01T00:00:00Z' } }] },
      'faults[0].window.until',
      'later than from',
    );
    expectInvalid({ faults: [{ kind: 'reset', window: { startMs: -1 } }] }, 'faults[0].window.startMs', '>=0');
  });

  it('rejects bad kind-specific fields', () => {
    expectInvalid({ faults: [{ kind: 'latency' }] }, 'faults[0].fixedMs', 'fixedMs or jitterMs greater than 0');
    expectInvalid({ faults: [{ kind: 'latency', fixedMs: 1.5 }] }, 'faults[0].fixedMs', 'expected int');
    expectInvalid({ faults: [{ kind: 'latency', fixedMs: 3_600_000 }] }, 'faults[0].fixedMs', '<=600000');
    expectInvalid({ faults: [{ kind: 'timeout' }] }, 'faults[0].delayMs', 'expected number');
    expectInvalid({ faults: [{ kind: 'error-before', status: 429 }] }, 'faults[0].status', 'expected one of 500|502|503|504');
    expectInvalid({ faults: [{ kind: 'rate-limit', retryAfterSeconds: { min: 5, max: 1 } }] }, 'faults[0].retryAfterSeconds.max', 'at least min');
    expectInvalid({ faults: [{ kind: 'rate-limit', retryAfterSeconds: 'soon' }] }, 'faults[0].retryAfterSeconds', 'whole seconds');
    expectInvalid({ faults: [{ kind: 'storm', startMs: 0 }] }, 'faults[0].durationMs', 'expected number');
    expectInvalid({ faults: [{ kind: 'storm', durationMs: 1, window: {} }] }, 'faults[0].window', 'unknown key for kind "storm"');
    expectInvalid({ faults: [{ kind: 'schema-drift', elements: ['note'] }] }, 'faults[0].elements[0]', 'element path');
    expectInvalid({ faults: [{ kind: 'schema-drift', elements: [] }] }, 'faults[0].elements', 'at least one');
    expectInvalid({ faults: [{ kind: 'reset', match: { methods: [] } }] }, 'faults[0].match.methods', 'must not be empty');
    expectInvalid({ faults: [{ kind: 'reset', match: { interactions: ['fetch'] } }] }, 'faults[0].match.interactions[0]', 'expected one of "read"');
    expectInvalid({ faults: [{ kind: 'reset', id: 'has space' }] }, 'faults[0].id', 'must be 1-64 characters');
  });

  it('rejects a non-object profile, a missing fault list and too many faults', () => {
    expectInvalid(null, '(profile)', 'expected object');
    expectInvalid('{"faults":[]}', '(profile)', 'expected object');
    expectInvalid({}, 'faults', 'expected array');
    const many = Array.from({ length: MAX_FAULTS + 1 }, () => ({ kind: 'reset' }));
    expectInvalid({ faults: many }, 'faults', `<=${MAX_FAULTS}`);
  });

  it('reports several problems at once', () => {
    try {
      parseFaultProfile({ faults: [{ kind: 'reset', probability: 2 }, { kind: 'nope' }] });
      expect.unreachable();
    } catch (e) {
      expect(isTetherError(e) && e.message).toMatch(/faults\[0\]\.probability: .*; faults\[1\]\.kind: unknown fault kind/);
    }
  });
});

describe('example profiles (packages/sandbox/faults/*.json)', () => {
  it('all parse', () => {
    const names = readdirSync(EXAMPLES_DIR).filter((n) => n.endsWith('.json'));
    expect(names).toEqual(expect.arrayContaining(['chaos.json', 'storm.json']));
    for (const name of names) expect(() => parseFaultProfile(readExample(name)), name).not.toThrow();
  });

  it('chaos.json is the documented mix', () => {
    const { faults } = parseFaultProfile(readExample('chaos.json'));
    const pick = (kind: string) =>
      faults.filter((f) => f.kind === kind).map(({ id: _id, description: _d, ...rest }) => rest);
    expect(pick('reset')).toEqual([{ kind: 'reset', probability: 0.05 }]);
    expect(pick('commit-then-drop')).toEqual([{ kind: 'commit-then-drop', probability: 0.05 }]);
    expect(pick('timeout')).toEqual([{ kind: 'timeout', probability: 0.02, delayMs: 12_000 }]);
    expect(pick('error-before')).toEqual([{ kind: 'error-before', probability: 0.02, status: 503 }]);
    expect(pick('error-after')).toEqual([{ kind: 'error-after', probability: 0.01, status: 500 }]);
    expect(pick('rate-limit')).toEqual([
      {
        kind: 'rate-limit',
        probability: 0.9,
        window: { startMs: 30_000, endMs: 50_000 },
        retryAfterSeconds: { min: 1, max: 5 },
      },
    ]);
    expect(pick('early-401')).toEqual([{ kind: 'early-401', probability: 0.01 }]);
    expect(pick('visibility-lag')).toEqual([{ kind: 'visibility-lag', probability: 1, lagMs: 500 }]);
    expect(faults).toHaveLength(8);
    // The storm comes first so that inside its window it really hits 90% (an earlier `before` fault would win).
    expect(faults[0]?.kind).toBe('rate-limit');
  });
});

describe('docs/faults.md', () => {
  const docs = (): string => readFileSync(DOCS, 'utf8');

  it('documents every kind and the storm shorthand', () => {
    for (const kind of [...Object.values(FaultKind), STORM_KIND]) expect(docs(), kind).toContain(`### \`${kind}\``);
  });

  it('mentions every example profile', () => {
    for (const name of readdirSync(EXAMPLES_DIR).filter((n) => n.endsWith('.json'))) {
      expect(docs(), name).toContain(`packages/sandbox/faults/${name}`);
    }
  });

  it('documents the defaults with their actual values', () => {
    /** The text of the `### \`kind\`` section. */
    const section = (kind: string): string => {
      const text = docs();
      const start = text.indexOf(`### \`${kind}\``);
      const end = text.indexOf('\n#', start + 1);
      return text.slice(start, end === -1 ? undefined : end);
    };
    expect(section('error-before')).toContain(`| \`${DEFAULT_ERROR_BEFORE_STATUS}\` |`);
    expect(section('error-after')).toContain(`| \`${DEFAULT_ERROR_AFTER_STATUS}\` |`);
    expect(section('rate-limit')).toContain(`| \`${DEFAULT_RETRY_AFTER_SECONDS}\` |`);
    expect(section('storm')).toContain(`| number in [0, 1] | \`${DEFAULT_STORM_PROBABILITY}\` |`);
    expect(section('storm')).toContain(`| \`${DEFAULT_STORM_START_MS}\` |`);
    expect(docs()).toContain(`| \`probability\` | number in [0, 1] | \`${DEFAULT_FAULT_PROBABILITY}\` |`);
  });
});
