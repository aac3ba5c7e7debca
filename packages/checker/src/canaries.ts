import type { CanaryHitExample, LogText } from './types.js';

/**
 * PHI canaries: unique strings (names, MRNs, 999-xx SSNs, note text) the load generator plants in payloads. A
 * canary found in a log means PHI reached a log. The scan is deliberately broad, because a miss is a silent PHI
 * leak while a false hit on a unique token is practically impossible:
 *
 * - case-insensitive (HL7 feeds and some log formats upper-case names);
 * - also in JSON-escaped form (`"` → `\"`, control characters) and with non-ASCII characters as `\uXXXX`, which is
 *   how a canary looks inside a JSON log line written by a logger that escapes them.
 *
 * Cost: one pass over each log whatever the number of canaries (a per-canary `indexOf` would cost canaries × log
 * size: minutes for a nightly's ten thousand canaries and tens of megabytes of logs). Candidates are found by their
 * first {@link PREFIX_LENGTH} characters and then compared in full.
 */

/** The lower-cased forms a canary can take in a log. */
function forms(canary: string): string[] {
  const raw = canary.toLowerCase();
  const json = JSON.stringify(canary).slice(1, -1).toLowerCase();
  const ascii = json.replace(/[^\x20-\x7e]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  return [...new Set([raw, json, ascii])];
}

function occurrences(haystack: string, needle: string): number {
  let n = 0;
  for (let at = haystack.indexOf(needle); at >= 0; at = haystack.indexOf(needle, at + needle.length)) n++;
  return n;
}

/** Characters of a canary form used to find candidates; shorter forms are searched with `indexOf`. */
const PREFIX_LENGTH = 6;

/** Three UTF-16 code units at `i` as one number (48 bits: exact in a double), without allocating a string. */
function key3(s: string, i: number): number {
  return s.charCodeAt(i) * 0x1_0000_0000 + s.charCodeAt(i + 1) * 0x1_0000 + s.charCodeAt(i + 2);
}

interface Form {
  /** Index of the form, for the per-form bookkeeping of a scan. */
  readonly id: number;
  /** Index of the canary it belongs to. */
  readonly canary: number;
  readonly text: string;
}

/** All forms of all canaries, indexed by their first six characters (two levels of three). */
class CanaryIndex {
  readonly #byPrefix = new Map<number, Map<number, Form[]>>();
  readonly #short: Form[] = [];
  readonly formCount: number;
  readonly canaryCount: number;

  constructor(canaries: readonly string[]) {
    let id = 0;
    for (const [canary, c] of canaries.entries()) {
      for (const text of forms(c)) {
        const form: Form = { id: id++, canary, text };
        if (text.length < PREFIX_LENGTH) {
          this.#short.push(form);
          continue;
        }
        const k1 = key3(text, 0);
        let inner = this.#byPrefix.get(k1);
        if (!inner) this.#byPrefix.set(k1, (inner = new Map()));
        const k2 = key3(text, 3);
        const list = inner.get(k2);
        if (list) list.push(form);
        else inner.set(k2, [form]);
      }
    }
    this.formCount = id;
    this.canaryCount = canaries.length;
  }

  /** Occurrences per canary in `text` (already lower-cased); overlapping matches of one form count once. */
  count(text: string): Float64Array {
    const counts = new Float64Array(this.canaryCount);
    // Where the last counted match of each form ended, so that "aaa" holds "aa" once, as indexOf counting does.
    const lastEnd = new Float64Array(this.formCount);
    const last = text.length - PREFIX_LENGTH;
    for (let i = 0; i <= last; i++) {
      const inner = this.#byPrefix.get(key3(text, i));
      if (!inner) continue;
      const candidates = inner.get(key3(text, i + 3));
      if (!candidates) continue;
      for (const f of candidates) {
        if (i >= (lastEnd[f.id] as number) && text.startsWith(f.text, i)) {
          counts[f.canary] = (counts[f.canary] as number) + 1;
          lastEnd[f.id] = i + f.text.length;
        }
      }
    }
    for (const f of this.#short) counts[f.canary] = (counts[f.canary] as number) + occurrences(text, f.text);
    return counts;
  }
}

/** Result of {@link scanCanaries}. */
export interface CanaryScan {
  /** Number of (canary, log) pairs with at least one occurrence. */
  readonly hits: number;
  /** Logs with at least one hit, in input order: counts only, never the canary. */
  readonly perLog: readonly CanaryHitExample[];
}

/**
 * Scans each log for each canary.
 *
 * @param canaries - the planted canaries (duplicates are counted once)
 * @param logs - the texts to scan, by name
 */
export function scanCanaries(canaries: Iterable<string>, logs: readonly LogText[]): CanaryScan {
  const index = new CanaryIndex([...new Set(canaries)].filter((c) => c.length > 0));
  let hits = 0;
  const perLog: CanaryHitExample[] = [];
  for (const log of logs) {
    let found = 0;
    let total = 0;
    for (const n of index.count(log.text.toLowerCase())) {
      if (n > 0) {
        found++;
        total += n;
      }
    }
    if (found > 0) {
      hits += found;
      perLog.push({ file: log.name, canaries: found, occurrences: total });
    }
  }
  return { hits, perLog };
}

/**
 * Replaces every occurrence of a canary (case-insensitively) with `[canary]`. The checker runs its own report
 * through this before printing it, so that even a business key or file name that happens to contain a canary
 * cannot leak it.
 */
export function redactCanaries(text: string, canaries: Iterable<string>): string {
  let out = text;
  for (const c of new Set(canaries)) {
    if (c.length === 0) continue;
    out = out.replace(new RegExp(c.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'), 'giu'), '[canary]');
  }
  return out;
}
