import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { canonicalContent, canonicalContentHash, stableStringify } from './canonical.js';

const sha256 = (s: string): string => createHash('sha256').update(s).digest('hex');

describe('stableStringify', () => {
  it('sorts object keys at every level, keeps array order, drops undefined members like JSON.stringify', () => {
    expect(stableStringify({ b: 1, a: { d: [3, 1], c: undefined, b: null } })).toBe('{"a":{"b":null,"d":[3,1]},"b":1}');
    expect(stableStringify([undefined, 'x'])).toBe('[null,"x"]');
    expect(stableStringify(undefined)).toBe('null');
    expect(stableStringify('é"')).toBe(JSON.stringify('é"'));
  });

  it('agrees with @tether/core on varied values (differential test of two independent implementations)', async () => {
    // The checker must not import core at run time; its tests may use it as an oracle.
    const core = (await import('@tether/core')) as { stableStringify: (v: unknown) => string };
    const samples: unknown[] = [
      { resourceType: 'Observation', z: [1, { y: 2, x: [null, true] }], a: 'ü\u2028', n: -0.5e-7 },
      [[], {}, '', 0, false],
      { '': 1, ' ': 2, A: 3, a: 4, _: 5, '10': 6, '9': 7 },
    ];
    for (const s of samples) expect(stableStringify(s)).toBe(core.stableStringify(s));
  });
});

describe('canonicalContentHash', () => {
  it('is the SHA-256 of the stable JSON without top-level id, meta and text', () => {
    expect(canonicalContentHash({ resourceType: 'Basic', id: 'x', meta: { versionId: '3' }, text: { div: '<div/>' } })).toBe(
      sha256('{"resourceType":"Basic"}'),
    );
  });

  it('gives the intent and the stored copy the same hash', () => {
    const intent = { resourceType: 'Observation', status: 'final', identifier: [{ system: 's', value: 'v' }] };
    const stored = { id: 'r7', meta: { versionId: '2', lastUpdated: '2026-01-01T00:00:00Z', tag: [{ code: 't' }] }, identifier: [{ value: 'v', system: 's' }], status: 'final', resourceType: 'Observation' };
    expect(canonicalContentHash(stored)).toBe(canonicalContentHash(intent));
  });

  it('keeps nested ids and array order, which are content', () => {
    const base = { resourceType: 'Observation', component: [{ id: 'c1', v: 1 }, { id: 'c2', v: 2 }] };
    expect(canonicalContentHash({ ...base, component: [{ id: 'cX', v: 1 }, { id: 'c2', v: 2 }] })).not.toBe(canonicalContentHash(base));
    expect(canonicalContentHash({ ...base, component: [...base.component].reverse() })).not.toBe(canonicalContentHash(base));
  });

  it('does not modify its input', () => {
    const r = { resourceType: 'Basic', id: 'x', meta: {} };
    canonicalContent(r);
    expect(r).toEqual({ resourceType: 'Basic', id: 'x', meta: {} });
  });
});
