import { describe, expect, it } from 'vitest';
import { resourceContentHash, stableHash, stableStringify } from './stable-json.js';

describe('stableStringify', () => {
  it('sorts keys at every level and keeps array order', () => {
    expect(stableStringify({ b: 1, a: { d: [3, 1], c: null } })).toBe('{"a":{"c":null,"d":[3,1]},"b":1}');
    expect(stableStringify({ a: undefined, b: [undefined] })).toBe('{"b":[null]}');
    expect(stableStringify('x')).toBe('"x"');
  });

  it('hashes equal values equally and different values differently', () => {
    expect(stableHash({ a: 1, b: 2 })).toBe(stableHash({ b: 2, a: 1 }));
    expect(stableHash([1, 2])).not.toBe(stableHash([2, 1]));
  });

  it('ignores server-assigned meta in the content hash', () => {
    const intent = { resourceType: 'Observation', status: 'final', meta: { tag: [{ code: 't' }] } };
    const stored = { ...intent, id: 'x', meta: { versionId: '2', lastUpdated: '2026-01-01T00:00:00Z', tag: [{ code: 't' }] } };
    const { id: _id, ...storedNoId } = stored;
    expect(resourceContentHash(storedNoId)).toBe(resourceContentHash(intent));
    expect(resourceContentHash({ resourceType: 'Observation', meta: { versionId: '1' } })).toBe(
      resourceContentHash({ resourceType: 'Observation' }),
    );
    expect(resourceContentHash({ ...intent, status: 'amended' })).not.toBe(resourceContentHash(intent));
  });
});
