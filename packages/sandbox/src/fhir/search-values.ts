import type { TypedValue } from '@medplum/core';
import { TetherError } from '@tether/core';
import type { CompiledSearchParam } from './definitions.js';

/** A token as indexed: `system` is undefined when the element has none. */
export interface IndexedToken {
  readonly system: string | undefined;
  readonly code: string;
}

/** A closed range of epoch milliseconds, as FHIR date search compares them. */
export interface DateRange {
  readonly start: number;
  readonly end: number;
}

/** Everything the sandbox indexes about one resource version, computed once at write time. */
export interface IndexRecord {
  readonly tokens: ReadonlyMap<string, readonly IndexedToken[]>;
  readonly references: ReadonlyMap<string, readonly string[]>;
  readonly dates: ReadonlyMap<string, readonly DateRange[]>;
}

const DATE_RE =
  /^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$/;

/**
 * Parses a FHIR date, dateTime or instant into the range it denotes at its precision:
 * `2024` is the whole year, `2024-03-05` the whole day, `2024-03-05T10:00:00Z` that second.
 * Returns undefined when the text is not a FHIR date.
 */
export function parseDateRange(text: string): DateRange | undefined {
  const m = DATE_RE.exec(text);
  if (!m) return undefined;
  const [, y, mo, d, h, mi, s, frac, tz] = m;
  const year = Number(y);
  const offsetMs = tzOffsetMs(tz);
  if (mo === undefined) return { start: Date.UTC(year, 0, 1), end: Date.UTC(year + 1, 0, 1) - 1 };
  const month = Number(mo) - 1;
  if (month > 11) return undefined;
  if (d === undefined) return { start: Date.UTC(year, month, 1), end: Date.UTC(year, month + 1, 1) - 1 };
  const day = Number(d);
  if (day < 1 || day > 31) return undefined;
  if (h === undefined) return { start: Date.UTC(year, month, day), end: Date.UTC(year, month, day + 1) - 1 };
  const base = Date.UTC(year, month, day, Number(h), Number(mi)) - offsetMs;
  if (s === undefined) return { start: base, end: base + 60_000 - 1 };
  const secStart = base + Number(s) * 1000;
  if (frac === undefined) return { start: secStart, end: secStart + 999 };
  const ms = Number(frac.slice(0, 3).padEnd(3, '0'));
  return { start: secStart + ms, end: secStart + ms };
}

function tzOffsetMs(tz: string | undefined): number {
  if (!tz || tz === 'Z') return 0;
  const sign = tz.startsWith('-') ? -1 : 1;
  const [hh, mm] = tz.slice(1).split(':');
  return sign * (Number(hh) * 60 + Number(mm)) * 60_000;
}

/** Normalises a reference to `Type/id` (drops a base URL and `_history/n`). */
export function normaliseReference(ref: string): string {
  const parts = ref.split('?')[0]?.split('/') ?? [];
  const hist = parts.indexOf('_history');
  const core = hist >= 0 ? parts.slice(0, hist) : parts;
  return core.slice(-2).join('/');
}

function tokensOf(v: TypedValue): IndexedToken[] {
  const value = v.value as unknown;
  if (value === null || value === undefined) return [];
  if (typeof value === 'string' || typeof value === 'boolean' || typeof value === 'number') {
    return [{ system: undefined, code: String(value) }];
  }
  const obj = value as Record<string, unknown>;
  if (Array.isArray(obj['coding'])) {
    return (obj['coding'] as Record<string, unknown>[]).flatMap((c) =>
      typeof c['code'] === 'string' ? [{ system: c['system'] as string | undefined, code: c['code'] }] : [],
    );
  }
  if (typeof obj['value'] === 'string') return [{ system: obj['system'] as string | undefined, code: obj['value'] }];
  if (typeof obj['code'] === 'string') return [{ system: obj['system'] as string | undefined, code: obj['code'] }];
  return [];
}

function datesOf(v: TypedValue): DateRange[] {
  const value = v.value as unknown;
  if (typeof value === 'string') {
    const r = parseDateRange(value);
    return r ? [r] : [];
  }
  if (value && typeof value === 'object') {
    const p = value as { start?: string; end?: string };
    const start = p.start ? parseDateRange(p.start)?.start : Number.NEGATIVE_INFINITY;
    const end = p.end ? parseDateRange(p.end)?.end : Number.POSITIVE_INFINITY;
    if (start !== undefined && end !== undefined && (p.start || p.end)) return [{ start, end }];
  }
  return [];
}

/** Computes the index record of a resource for the given compiled parameters. */
export function buildIndexRecord(
  resource: Record<string, unknown>,
  params: ReadonlyMap<string, CompiledSearchParam>,
): IndexRecord {
  const tokens = new Map<string, IndexedToken[]>();
  const references = new Map<string, string[]>();
  const dates = new Map<string, DateRange[]>();
  for (const p of params.values()) {
    if (p.code === '_id') {
      tokens.set('_id', [{ system: undefined, code: String(resource['id']) }]);
      continue;
    }
    const values = p.extract(resource);
    if (values.length === 0) continue;
    switch (p.type) {
      case 'token':
        tokens.set(p.code, values.flatMap(tokensOf));
        break;
      case 'reference':
        references.set(
          p.code,
          values.flatMap((v) => {
            const r = (v.value as { reference?: unknown } | undefined)?.reference;
            return typeof r === 'string' ? [normaliseReference(r)] : [];
          }),
        );
        break;
      case 'date':
        dates.set(p.code, values.flatMap(datesOf));
        break;
    }
  }
  return { tokens, references, dates };
}

/** A parsed search criterion; several values of one parameter are ORed, several parameters ANDed. */
export type Criterion =
  | { readonly kind: 'token'; readonly code: string; readonly values: readonly TokenQuery[]; readonly not: boolean }
  | { readonly kind: 'reference'; readonly code: string; readonly values: readonly string[] }
  | { readonly kind: 'date'; readonly code: string; readonly values: readonly DateQuery[] };

export interface TokenQuery {
  /** undefined: any system; '': no system; otherwise that system. */
  readonly system: string | undefined;
  /** undefined: any code in the system (`system|`). */
  readonly code: string | undefined;
}

export type DatePrefix = 'eq' | 'ne' | 'gt' | 'lt' | 'ge' | 'le' | 'sa' | 'eb';
export interface DateQuery {
  readonly prefix: DatePrefix;
  readonly range: DateRange;
}

const PREFIXES = new Set<DatePrefix>(['eq', 'ne', 'gt', 'lt', 'ge', 'le', 'sa', 'eb']);

function invalid(msg: string): TetherError {
  return new TetherError('FHIR_INVALID_SEARCH', msg);
}

/** Parses one value list (`a,b`) of a token parameter. */
export function parseTokenValues(raw: string): TokenQuery[] {
  return splitValues(raw).map((v) => {
    const bar = v.indexOf('|');
    if (bar < 0) return { system: undefined, code: v };
    const system = v.slice(0, bar);
    const code = v.slice(bar + 1);
    return { system, code: code === '' ? undefined : code };
  });
}

/** Parses one value list of a date parameter (`ge2024-01-01`). Throws FHIR_INVALID_SEARCH on a bad value. */
export function parseDateValues(code: string, raw: string): DateQuery[] {
  return splitValues(raw).map((v) => {
    const maybe = v.slice(0, 2) as DatePrefix;
    const prefix = PREFIXES.has(maybe) ? maybe : 'eq';
    const text = PREFIXES.has(maybe) ? v.slice(2) : v;
    const range = parseDateRange(text);
    if (!range) throw invalid(`Parameter '${code}' needs a FHIR date, optionally prefixed with eq|ne|gt|lt|ge|le|sa|eb.`);
    return { prefix, range };
  });
}

function splitValues(raw: string): string[] {
  // A comma escaped as "\," belongs to the value.
  const out: string[] = [];
  let cur = '';
  for (let i = 0; i < raw.length; i++) {
    const ch = raw[i];
    if (ch === '\\' && raw[i + 1] === ',') {
      cur += ',';
      i++;
    } else if (ch === ',') {
      out.push(cur);
      cur = '';
    } else {
      cur += ch;
    }
  }
  out.push(cur);
  return out.filter((v) => v !== '');
}

function tokenMatches(q: TokenQuery, t: IndexedToken): boolean {
  if (q.system === undefined) return q.code === t.code;
  if (q.system === '') return t.system === undefined && q.code === t.code;
  if (q.system !== t.system) return false;
  return q.code === undefined || q.code === t.code;
}

/** FHIR date comparison semantics (R4 §3.1.1.4.2.1): compare the ranges implied by the precisions. */
export function dateMatches(q: DateQuery, t: DateRange): boolean {
  const s = q.range;
  switch (q.prefix) {
    case 'eq':
      return t.start >= s.start && t.end <= s.end;
    case 'ne':
      return !(t.start >= s.start && t.end <= s.end);
    case 'gt':
      return t.end > s.end;
    case 'lt':
      return t.start < s.start;
    case 'ge':
      return t.end > s.end || (t.start >= s.start && t.end <= s.end);
    case 'le':
      return t.start < s.start || (t.start >= s.start && t.end <= s.end);
    case 'sa':
      return t.start > s.end;
    case 'eb':
      return t.end < s.start;
  }
}

/** True when an index record satisfies every criterion. */
export function matchesAll(record: IndexRecord, criteria: readonly Criterion[]): boolean {
  for (const c of criteria) {
    switch (c.kind) {
      case 'token': {
        const ts = record.tokens.get(c.code) ?? [];
        const hit = c.values.some((q) => ts.some((t) => tokenMatches(q, t)));
        if (hit === c.not) return false;
        break;
      }
      case 'reference': {
        const rs = record.references.get(c.code) ?? [];
        if (!c.values.some((q) => rs.some((r) => (q.includes('/') ? r === q : r.endsWith(`/${q}`))))) return false;
        break;
      }
      case 'date': {
        const ds = record.dates.get(c.code) ?? [];
        // Several values of one date parameter are ORed; each must hold for some indexed range.
        if (!c.values.some((q) => ds.some((d) => dateMatches(q, d)))) return false;
        break;
      }
    }
  }
  return true;
}
