import { describe, expect, it } from 'vitest';
import { redactCanaries, scanCanaries } from './canaries.js';

/** The obvious implementation, as an oracle: indexOf per canary form, non-overlapping. */
function naive(canaries: readonly string[], text: string): number[] {
  const lower = text.toLowerCase();
  return canaries.map((c) => {
    const json = JSON.stringify(c).slice(1, -1).toLowerCase();
    const ascii = json.replace(/[^\x20-\x7e]/g, (ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`);
    let total = 0;
    for (const f of new Set([c.toLowerCase(), json, ascii])) {
      for (let at = lower.indexOf(f); at >= 0; at = lower.indexOf(f, at + f.length)) total++;
    }
    return total;
  });
}

/** A small deterministic PRNG (mulberry32), so a failure replays. */
function rng(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('scanCanaries', () => {
  it('agrees with a naive indexOf scan on random logs (shared prefixes, short canaries, escapes, overlaps)', () => {
    const canaries = ['999-12-3456', '999-12-3457', '999-13-0001', 'Zoë Quill', 'a"b\\c', 'MRN7', 'aa', 'abababab', 'Ünïcødé Pérson'];
    for (let seed = 1; seed <= 40; seed++) {
      const random = rng(seed);
      const pieces = ['x', ' ', '999-1', '2-34', 'ZOË QUILL', 'zo\\u00eb quill', 'a\\"b\\\\c', 'mrn7', 'a', 'b', 'ab', '\n', ...canaries];
      let text = '';
      for (let i = 0; i < 400; i++) text += pieces[Math.floor(random() * pieces.length)];
      const expected = naive(canaries, text);
      const scan = scanCanaries(canaries, [{ name: 'log', text }]);
      const found = expected.filter((n) => n > 0).length;
      expect(scan.hits, `seed ${seed}`).toBe(found);
      expect(scan.perLog, `seed ${seed}`).toEqual(found ? [{ file: 'log', canaries: found, occurrences: expected.reduce((a, b) => a + b, 0) }] : []);
    }
  });

  it('counts each canary once per log, and logs separately', () => {
    const logs = [
      { name: 'a', text: 'Jane Canary and JANE CANARY' },
      { name: 'b', text: 'nothing here' },
      { name: 'c', text: 'jane canary, 999-00-1111' },
    ];
    expect(scanCanaries(['Jane Canary', '999-00-1111', 'Jane Canary'], logs)).toEqual({
      hits: 3,
      perLog: [
        { file: 'a', canaries: 1, occurrences: 2 },
        { file: 'c', canaries: 2, occurrences: 2 },
      ],
    });
  });

  it('scans many canaries over a large log in one pass', () => {
    const canaries = Array.from({ length: 20_000 }, (_, i) => `Canary-${i.toString(36)}-Person`);
    const text = `${'{"msg":"ok","n":12345}\n'.repeat(200_000)}leaked ${canaries[777]}\n`;
    const t0 = performance.now();
    expect(scanCanaries(canaries, [{ name: 'big.log', text }]).hits).toBe(1);
    // ~4.6 MB against 20,000 canaries; a per-canary indexOf takes minutes here. Generous bound for slow CI.
    expect(performance.now() - t0).toBeLessThan(10_000);
  });
});

describe('redactCanaries', () => {
  it('replaces every case variant, and treats regex characters literally', () => {
    expect(redactCanaries('x JANE (canary) y jane (Canary)', ['Jane (Canary)'])).toBe('x [canary] y [canary]');
    expect(redactCanaries('a.b axb', ['a.b'])).toBe('[canary] axb');
  });
});
