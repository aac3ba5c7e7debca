import { describe, expect, it } from 'vitest';
import {
  AUDIT_GENESIS_HASH,
  AuditChainVerifier,
  assertAuditJson,
  auditCanonicalBytes,
  chainAuditEntries,
  hashAuditRecord,
  verifyAuditChain,
  type AuditEntry,
  type AuditRecord,
} from './audit-chain.js';

const entry = (i: number, overrides: Partial<AuditEntry> = {}): AuditEntry => ({
  at: 1_700_000_000_000 + i,
  actor: i % 2 === 0 ? 'worker:w1' : 'api:key-1',
  action: 'command.transition',
  tenantId: 'acme',
  subjectType: 'command',
  subjectId: `cmd-${i}`,
  outcome: 'success',
  details: { from: 'queued', to: 'in_flight', eventSeq: i, nested: { b: [1, 2], a: true } },
  ...overrides,
});

/** A chain of `n` valid records. */
const chain = (n: number): AuditRecord[] => chainAuditEntries(undefined, Array.from({ length: n }, (_, i) => entry(i + 1)));
const headOf = (records: readonly AuditRecord[]) => {
  const last = records[records.length - 1];
  return last ? { seq: last.seq, hash: last.hash } : { seq: 0, hash: AUDIT_GENESIS_HASH };
};

describe('canonical bytes and hash', () => {
  it('are stable under key order and cover every field, seq and prevHash included', () => {
    const [r] = chain(1) as [AuditRecord];
    const reordered = { ...r, details: { nested: { a: true, b: [1, 2] }, eventSeq: 1, to: 'in_flight', from: 'queued' } };
    expect(auditCanonicalBytes(reordered)).toBe(auditCanonicalBytes(r));
    expect(hashAuditRecord(r)).toBe(r.hash);
    expect(r.hash).toMatch(/^[0-9a-f]{64}$/);
    const variants: Partial<AuditRecord>[] = [
      { seq: 2 },
      { at: r.at + 1 },
      { actor: 'system' },
      { action: 'command.submitted' },
      { tenantId: null },
      { subjectType: 'tenant' },
      { subjectId: 'cmd-x' },
      { outcome: 'failure' },
      { details: { ...r.details, to: 'verified' } },
      { prevHash: 'f'.repeat(64) },
    ];
    for (const v of variants) expect(hashAuditRecord({ ...r, ...v })).not.toBe(r.hash);
  });

  it('chains from the genesis hash, and after a given head', () => {
    const records = chain(3);
    expect(records.map((r) => r.seq)).toEqual([1, 2, 3]);
    expect(records[0]?.prevHash).toBe(AUDIT_GENESIS_HASH);
    expect(records[1]?.prevHash).toBe(records[0]?.hash);
    const more = chainAuditEntries(headOf(records), [entry(4)]);
    expect(more[0]).toMatchObject({ seq: 4, prevHash: records[2]?.hash });
    expect(verifyAuditChain([...records, ...more]).ok).toBe(true);
  });
});

describe('verifyAuditChain', () => {
  it('accepts an intact chain, an empty one, and a suffix after a trusted record', () => {
    const records = chain(10);
    expect(verifyAuditChain(records, { head: headOf(records) })).toMatchObject({ ok: true, checked: 10, problems: [], last: headOf(records) });
    expect(verifyAuditChain([], { head: { seq: 0, hash: AUDIT_GENESIS_HASH } })).toMatchObject({ ok: true, checked: 0 });
    const after = records[4] as AuditRecord;
    expect(verifyAuditChain(records.slice(5), { after: { seq: after.seq, hash: after.hash }, head: headOf(records) }).ok).toBe(true);
  });

  it('finds a modified record (hash not recomputed)', () => {
    const records = chain(6);
    records[2] = { ...(records[2] as AuditRecord), actor: 'operator:mallory' };
    expect(verifyAuditChain(records, { head: headOf(records) }).problems).toEqual([{ seq: 3, kind: 'modified' }]);
  });

  it('finds a modified record whose hash was recomputed, at the next link', () => {
    const records = chain(6);
    const forged = { ...(records[2] as AuditRecord), outcome: 'failure' };
    records[2] = { ...forged, hash: hashAuditRecord(forged) };
    expect(verifyAuditChain(records).problems).toEqual([{ seq: 4, kind: 'broken_link' }]);
  });

  it('finds a deleted record in the middle, at the start and at the end (through the head)', () => {
    const records = chain(6);
    const head = headOf(records);
    expect(verifyAuditChain([...records.slice(0, 2), ...records.slice(3)], { head }).problems).toEqual([{ seq: 3, kind: 'deleted', count: 1 }]);
    expect(verifyAuditChain(records.slice(2), { head }).problems).toEqual([{ seq: 1, kind: 'deleted', count: 2 }]);
    expect(verifyAuditChain(records.slice(0, 4), { head }).problems).toEqual([{ seq: 5, kind: 'deleted', count: 2 }]);
    // Without the head, a truncated end cannot be seen: that is what the head row (and anchors) are for.
    expect(verifyAuditChain(records.slice(0, 4)).ok).toBe(true);
  });

  it('finds two swapped records (seqs exchanged) as reordered', () => {
    const records = chain(8);
    const [a, b] = [records[2] as AuditRecord, records[3] as AuditRecord];
    records[2] = { ...b, seq: 3 };
    records[3] = { ...a, seq: 4 };
    expect(verifyAuditChain(records, { head: headOf(records) }).problems).toEqual([
      { seq: 3, kind: 'reordered' },
      { seq: 4, kind: 'reordered' },
    ]);
  });

  it('finds records given out of order', () => {
    const records = chain(5);
    const swapped = [records[0], records[2], records[1], records[3], records[4]] as AuditRecord[];
    const kinds = verifyAuditChain(swapped).problems.map((p) => p.kind);
    expect(kinds).toContain('reordered');
  });

  it('finds an inserted record (renumbered after it) as a broken link', () => {
    const records = chain(5);
    const [inserted] = chainAuditEntries(headOf(records.slice(0, 2)), [entry(99, { actor: 'operator:mallory' })]) as [AuditRecord];
    const shifted = records.slice(2).map((r) => ({ ...r, seq: r.seq + 1 }));
    const problems = verifyAuditChain([...records.slice(0, 2), inserted, ...shifted]).problems;
    expect(problems[0]).toEqual({ seq: 4, kind: 'reordered' });
  });

  it('finds records appended after the head, and an edited head', () => {
    const records = chain(5);
    const head = headOf(records.slice(0, 4));
    expect(verifyAuditChain(records, { head }).problems).toEqual([{ seq: 5, kind: 'head_mismatch' }]);
    expect(verifyAuditChain(records, { head: { seq: 5, hash: 'a'.repeat(64) } }).problems).toEqual([{ seq: 5, kind: 'head_mismatch' }]);
    expect(verifyAuditChain(records, { head: null }).problems).toEqual([{ seq: 5, kind: 'head_mismatch' }]);
  });

  it('catches a rewrite of the whole chain from a point on only with an external anchor', () => {
    const records = chain(6);
    const anchor = { seq: 4, hash: (records[3] as AuditRecord).hash };
    // The attacker rewrites records 3..6 and recomputes every hash and the head.
    const rewritten = [...records.slice(0, 2), ...chainAuditEntries(headOf(records.slice(0, 2)), [3, 4, 5, 6].map((i) => entry(i, { outcome: 'failure' })))];
    expect(verifyAuditChain(rewritten, { head: headOf(rewritten) }).ok).toBe(true);
    expect(verifyAuditChain(rewritten, { head: headOf(rewritten), anchors: [anchor] }).problems).toEqual([{ seq: 4, kind: 'anchor_mismatch' }]);
    // An anchor past the end means the chain was cut back.
    expect(verifyAuditChain(records.slice(0, 3), { anchors: [anchor] }).problems).toEqual([{ seq: 4, kind: 'anchor_mismatch' }]);
  });

  it('verifies incrementally with the same result as the array form', () => {
    const records = chain(20);
    records[7] = { ...(records[7] as AuditRecord), at: 1 };
    const v = new AuditChainVerifier({ head: headOf(records) });
    for (const r of records) v.push(r);
    expect(v.finish()).toEqual(verifyAuditChain(records, { head: headOf(records) }));
  });
});

describe('assertAuditJson', () => {
  it('accepts plain JSON and names the path of anything else', () => {
    expect(() => assertAuditJson({ a: [1, 'x', null, true, { b: 2.5 }] })).not.toThrow();
    expect(() => assertAuditJson({ a: Number.NaN })).toThrow(/details\.a/);
    expect(() => assertAuditJson({ a: [new Date()] })).toThrow(/details\.a\[0\]/);
    expect(() => assertAuditJson({ a: undefined })).toThrow(/details\.a/);
  });
});
