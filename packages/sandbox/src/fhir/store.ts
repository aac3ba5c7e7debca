import { randomUUID } from 'node:crypto';
import { resourceContentHash, TetherError } from '@tether/core';
import { searchParamsFor } from './definitions.js';
import { buildIndexRecord, matchesAll, type Criterion, type IndexRecord } from './search-values.js';

/** A FHIR resource as plain JSON. */
export type Resource = Record<string, unknown> & { resourceType: string; id?: string };

/** One stored version of a resource. Immutable once written. */
export interface VersionRecord {
  readonly resourceType: string;
  readonly id: string;
  readonly versionId: string;
  /** Global, strictly increasing write sequence number: the stable order of history. */
  readonly seq: number;
  /** Epoch ms. */
  readonly lastUpdated: number;
  /** The stored resource (with id and meta), or undefined for a deletion. */
  readonly resource: Readonly<Resource> | undefined;
  /** Cached JSON of `resource`. */
  readonly json: string | undefined;
  readonly index: IndexRecord | undefined;
  readonly method: 'POST' | 'PUT' | 'DELETE';
}

interface Entry {
  readonly resourceType: string;
  readonly id: string;
  readonly createdSeq: number;
  readonly versions: VersionRecord[];
}

/** One line of the server-side write log, the ground truth the independent checker audits against. */
export interface WriteLogEntry {
  readonly seq: number;
  /** ISO time the write was applied. */
  readonly at: string;
  readonly op: 'create' | 'update' | 'delete';
  readonly resourceType: string;
  readonly id: string;
  readonly versionId: string;
  /** The client's `X-Request-Id` (or the one the server assigned). */
  readonly requestId: string;
  /** The interaction that carried the write (a create can arrive inside a transaction). */
  readonly interaction: string;
  /** {@link resourceContentHash} of the stored resource; undefined for deletions. */
  readonly contentHash: string | undefined;
  /** `system|value` of each identifier of the stored resource (the business keys the checker looks for). */
  readonly identifiers: readonly string[];
}

export interface WriteContext {
  readonly requestId: string;
  readonly interaction: string;
  /** Epoch ms. */
  readonly now: number;
}

/** Which indexed parameters get a hash index (equality lookups); everything else is filtered by scan. */
const HASHED_TOKEN_PARAMS = new Set(['identifier', '_tag']);
const HASHED_REFERENCE_PARAMS = new Set(['patient', 'subject']);

class TypeTable {
  readonly entries = new Map<string, Entry>();
  /** `param\u0000system|code` and `param\u0000\u0001code` (any system) → ids. */
  readonly tokenIndex = new Map<string, Set<string>>();
  /** `param\u0000Type/id` → ids. */
  readonly refIndex = new Map<string, Set<string>>();

  addKeys(id: string, index: IndexRecord | undefined): void {
    if (!index) return;
    for (const key of indexKeys(index)) addTo(key.startsWith('r') ? this.refIndex : this.tokenIndex, key, id);
  }

  removeKeys(id: string, index: IndexRecord | undefined): void {
    if (!index) return;
    for (const key of indexKeys(index)) {
      const map = key.startsWith('r') ? this.refIndex : this.tokenIndex;
      const set = map.get(key);
      set?.delete(id);
      if (set && set.size === 0) map.delete(key);
    }
  }
}

function addTo(map: Map<string, Set<string>>, key: string, id: string): void {
  let set = map.get(key);
  if (!set) {
    set = new Set();
    map.set(key, set);
  }
  set.add(id);
}

function* indexKeys(index: IndexRecord): Generator<string> {
  for (const [param, tokens] of index.tokens) {
    if (!HASHED_TOKEN_PARAMS.has(param)) continue;
    for (const t of tokens) {
      yield `t${param}\u0000${t.system ?? ''}|${t.code}`;
      yield `t${param}\u0000\u0001${t.code}`;
    }
  }
  for (const [param, refs] of index.references) {
    if (!HASHED_REFERENCE_PARAMS.has(param)) continue;
    for (const r of refs) {
      yield `r${param}\u0000${r}`;
      // `patient=123` (no type) looks up by the bare id.
      yield `r${param}\u0000\u0001${r.slice(r.indexOf('/') + 1)}`;
    }
  }
}

export interface SearchOptions {
  /** Epoch ms; with `visibilityLagMs`, versions written after `now - lag` are not visible. */
  readonly now: number;
  readonly visibilityLagMs: number;
  readonly offset: number;
  /** Page size; 0 = count only. */
  readonly count: number;
}

export interface SearchResult {
  readonly total: number;
  readonly matches: readonly VersionRecord[];
  /** How many matches were hidden by the visibility lag (for fault stats). */
  readonly hiddenByLag: number;
}

/** Undo and deferred log entries of an atomic block. */
interface AtomicFrame {
  readonly undo: Array<() => void>;
  readonly log: WriteLogEntry[];
}

/**
 * The sandbox's in-memory FHIR store: versioned resources, hash indexes for identifier / `_tag` / patient /
 * subject lookups, and the write log.
 *
 * Every method is synchronous. Node runs it on one thread, so a check-then-write sequence (conditional create,
 * If-Match) is atomic without locks, and {@link MemoryStore.atomic} gives all-or-nothing transactions with an
 * undo log.
 */
export class MemoryStore {
  readonly #tables = new Map<string, TypeTable>();
  readonly #writeLog: WriteLogEntry[] = [];
  #seq = 0;
  #frame: AtomicFrame | undefined;
  readonly #onWrite: ((e: WriteLogEntry) => void) | undefined;

  constructor(options: { onWrite?: (e: WriteLogEntry) => void } = {}) {
    this.#onWrite = options.onWrite;
  }

  #table(type: string): TypeTable {
    let t = this.#tables.get(type);
    if (!t) {
      t = new TypeTable();
      this.#tables.set(type, t);
    }
    return t;
  }

  /** Number of live (not deleted) resources. */
  get size(): number {
    let n = 0;
    for (const t of this.#tables.values()) for (const e of t.entries.values()) if (e.versions.at(-1)?.resource) n++;
    return n;
  }

  /** The current version of a resource, including a deletion marker; undefined if it never existed. */
  current(type: string, id: string): VersionRecord | undefined {
    return this.#tables.get(type)?.entries.get(id)?.versions.at(-1);
  }

  /** Read: throws FHIR_NOT_FOUND (never existed) or FHIR_GONE (deleted). */
  read(type: string, id: string): VersionRecord {
    const v = this.current(type, id);
    if (!v) throw new TetherError('FHIR_NOT_FOUND', `${type} with that id does not exist.`);
    if (!v.resource) throw new TetherError('FHIR_GONE', `${type} with that id was deleted.`);
    return v;
  }

  vread(type: string, id: string, versionId: string): VersionRecord {
    const entry = this.#tables.get(type)?.entries.get(id);
    const v = entry?.versions.find((x) => x.versionId === versionId);
    if (!v) throw new TetherError('FHIR_NOT_FOUND', `${type} with that id has no such version.`);
    if (!v.resource) throw new TetherError('FHIR_GONE', 'That version is a deletion.');
    return v;
  }

  /** Creates a resource with a new server-assigned id. The input must already be validated. */
  create(resource: Resource, ctx: WriteContext, id: string = randomUUID()): VersionRecord {
    return this.#write(resource.resourceType, id, resource, 'POST', ctx);
  }

  /**
   * Updates (or creates, when `allowCreate`) the resource with this id. `ifMatch` is the expected current
   * version; a different current version throws FHIR_VERSION_CONFLICT.
   */
  update(
    resource: Resource & { id: string },
    ctx: WriteContext & { ifMatch?: string | undefined; allowCreate: boolean },
  ): { version: VersionRecord; created: boolean } {
    const cur = this.current(resource.resourceType, resource.id);
    if (ctx.ifMatch !== undefined && (!cur?.resource || cur.versionId !== ctx.ifMatch)) {
      throw new TetherError('FHIR_VERSION_CONFLICT', 'If-Match does not name the current version.', {
        details: { currentVersion: cur?.resource ? cur.versionId : null },
      });
    }
    if (!cur?.resource && !ctx.allowCreate) {
      throw new TetherError('FHIR_NOT_FOUND', `${resource.resourceType} with that id does not exist.`);
    }
    const version = this.#write(resource.resourceType, resource.id, resource, 'PUT', ctx);
    return { version, created: !cur?.resource };
  }

  /** Deletes; returns undefined when there was nothing live to delete (delete is idempotent in FHIR). */
  delete(type: string, id: string, ctx: WriteContext): VersionRecord | undefined {
    const cur = this.current(type, id);
    if (!cur?.resource) return undefined;
    return this.#write(type, id, undefined, 'DELETE', ctx);
  }

  #write(
    type: string,
    id: string,
    input: Resource | undefined,
    method: VersionRecord['method'],
    ctx: WriteContext,
  ): VersionRecord {
    const table = this.#table(type);
    let entry = table.entries.get(id);
    const created = !entry;
    const seq = ++this.#seq;
    if (!entry) {
      entry = { resourceType: type, id, createdSeq: seq, versions: [] };
      table.entries.set(id, entry);
    }
    const prev = entry.versions.at(-1);
    const versionId = String(entry.versions.length + 1);
    let resource: Resource | undefined;
    let index: IndexRecord | undefined;
    if (input) {
      const meta = { ...((input['meta'] as Record<string, unknown> | undefined) ?? {}) };
      meta['versionId'] = versionId;
      meta['lastUpdated'] = new Date(ctx.now).toISOString();
      resource = { ...input, resourceType: type, id, meta };
      index = buildIndexRecord(resource, searchParamsFor(type));
    }
    const version: VersionRecord = Object.freeze({
      resourceType: type,
      id,
      versionId,
      seq,
      lastUpdated: ctx.now,
      resource: resource ? deepFreeze(resource) : undefined,
      json: resource ? JSON.stringify(resource) : undefined,
      index,
      method,
    });
    table.removeKeys(id, prev?.index);
    entry.versions.push(version);
    table.addKeys(id, index);

    const log: WriteLogEntry = {
      seq,
      at: new Date(ctx.now).toISOString(),
      op: method === 'DELETE' ? 'delete' : prev?.resource ? 'update' : 'create',
      resourceType: type,
      id,
      versionId,
      requestId: ctx.requestId,
      interaction: ctx.interaction,
      contentHash: resource ? resourceContentHash(resource) : undefined,
      identifiers: identifiersOf(resource),
    };
    if (this.#frame) {
      const e = entry;
      this.#frame.undo.push(() => {
        table.removeKeys(id, index);
        e.versions.pop();
        table.addKeys(id, prev?.index);
        if (created) table.entries.delete(id);
      });
      this.#frame.log.push(log);
    } else {
      this.#appendLog(log);
    }
    return version;
  }

  #appendLog(e: WriteLogEntry): void {
    this.#writeLog.push(e);
    this.#onWrite?.(e);
  }

  /**
   * Runs `fn` all-or-nothing: if it throws, every write it made is undone and nothing reaches the write log.
   * `fn` must be synchronous (that is what makes it atomic).
   */
  atomic<T>(fn: () => T): T {
    if (this.#frame) return fn();
    const frame: AtomicFrame = { undo: [], log: [] };
    this.#frame = frame;
    try {
      const out = fn();
      this.#frame = undefined;
      for (const e of frame.log) this.#appendLog(e);
      return out;
    } catch (err) {
      this.#frame = undefined;
      for (let i = frame.undo.length - 1; i >= 0; i--) frame.undo[i]?.();
      throw err;
    }
  }

  /**
   * Searches one resource type. Results are in creation order (stable across pages while nothing is created).
   */
  search(type: string, criteria: readonly Criterion[], opts: SearchOptions): SearchResult {
    const table = this.#tables.get(type);
    if (!table) return { total: 0, matches: [], hiddenByLag: 0 };
    const cutoff = opts.visibilityLagMs > 0 ? opts.now - opts.visibilityLagMs : Number.POSITIVE_INFINITY;
    const matches: VersionRecord[] = [];
    let hiddenByLag = 0;
    for (const entry of this.#candidates(table, criteria)) {
      const cur = entry.versions.at(-1);
      if (!cur) continue;
      let visible: VersionRecord | undefined = cur;
      if (cur.lastUpdated > cutoff) {
        // The newest writes are not visible yet: search sees the last version that is.
        visible = undefined;
        for (let i = entry.versions.length - 2; i >= 0; i--) {
          const v = entry.versions[i];
          if (v && v.lastUpdated <= cutoff) {
            visible = v;
            break;
          }
        }
        if (cur.resource && matchesAll(cur.index as IndexRecord, criteria)) hiddenByLag++;
      }
      if (!visible?.resource || !visible.index) continue;
      if (matchesAll(visible.index, criteria)) matches.push(visible);
    }
    return {
      total: matches.length,
      matches: opts.count === 0 ? [] : matches.slice(opts.offset, opts.offset + opts.count),
      hiddenByLag,
    };
  }

  /** Narrows the scan with the hash indexes: the smallest candidate set of any hashable criterion. */
  #candidates(table: TypeTable, criteria: readonly Criterion[]): Iterable<Entry> {
    let best: Set<string> | undefined;
    for (const c of criteria) {
      let set: Set<string> | undefined;
      if (c.kind === 'token' && !c.not && (HASHED_TOKEN_PARAMS.has(c.code) || c.code === '_id')) {
        if (c.values.some((v) => v.code === undefined)) continue;
        set = new Set();
        for (const v of c.values) {
          if (c.code === '_id') {
            if (table.entries.has(v.code as string)) set.add(v.code as string);
            continue;
          }
          const key =
            v.system === undefined ? `t${c.code}\u0000\u0001${v.code}` : `t${c.code}\u0000${v.system}|${v.code}`;
          for (const id of table.tokenIndex.get(key) ?? []) set.add(id);
        }
      } else if (c.kind === 'reference' && HASHED_REFERENCE_PARAMS.has(c.code)) {
        set = new Set();
        for (const v of c.values) {
          const key = v.includes('/') ? `r${c.code}\u0000${v}` : `r${c.code}\u0000\u0001${v}`;
          for (const id of table.refIndex.get(key) ?? []) set.add(id);
        }
      }
      if (set && (!best || set.size < best.size)) best = set;
    }
    if (!best) return table.entries.values();
    const out: Entry[] = [];
    for (const id of best) {
      const e = table.entries.get(id);
      if (e) out.push(e);
    }
    // Entries whose newest version is hidden by lag may still match through an older version that is no longer
    // in the index; those are rare and only matter for searches racing an update of the searched key itself.
    return out.sort((a, b) => a.createdSeq - b.createdSeq);
  }

  /** Instance or type history, newest first (FHIR order), stable by write sequence. */
  history(type: string, id: string | undefined): VersionRecord[] {
    const table = this.#tables.get(type);
    if (!table) return [];
    if (id !== undefined) {
      const entry = table.entries.get(id);
      if (!entry) throw new TetherError('FHIR_NOT_FOUND', `${type} with that id does not exist.`);
      return [...entry.versions].reverse();
    }
    const all: VersionRecord[] = [];
    for (const e of table.entries.values()) all.push(...e.versions);
    return all.sort((a, b) => b.seq - a.seq);
  }

  /** Write log entries with `seq > since`. */
  writeLog(since = 0): readonly WriteLogEntry[] {
    if (since <= 0) return this.#writeLog;
    // seq values are increasing, so binary search for the first one after `since`.
    let lo = 0;
    let hi = this.#writeLog.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((this.#writeLog[mid] as WriteLogEntry).seq <= since) lo = mid + 1;
      else hi = mid;
    }
    return this.#writeLog.slice(lo);
  }

  /** Every version of every resource, in write order: the snapshot format. */
  *dump(): Generator<VersionRecord> {
    const all: VersionRecord[] = [];
    for (const t of this.#tables.values()) for (const e of t.entries.values()) all.push(...e.versions);
    all.sort((a, b) => a.seq - b.seq);
    yield* all;
  }

  /** Restores versions written by {@link MemoryStore.dump} (into an empty store). */
  restore(versions: Iterable<Pick<VersionRecord, 'resourceType' | 'id' | 'versionId' | 'lastUpdated' | 'method'> & { resource: Resource | undefined }>): void {
    for (const v of versions) {
      const table = this.#table(v.resourceType);
      const seq = ++this.#seq;
      let entry = table.entries.get(v.id);
      if (!entry) {
        entry = { resourceType: v.resourceType, id: v.id, createdSeq: seq, versions: [] };
        table.entries.set(v.id, entry);
      }
      const prev = entry.versions.at(-1);
      const index = v.resource ? buildIndexRecord(v.resource, searchParamsFor(v.resourceType)) : undefined;
      table.removeKeys(v.id, prev?.index);
      entry.versions.push(
        Object.freeze({
          resourceType: v.resourceType,
          id: v.id,
          versionId: v.versionId,
          seq,
          lastUpdated: v.lastUpdated,
          resource: v.resource ? deepFreeze(v.resource) : undefined,
          json: v.resource ? JSON.stringify(v.resource) : undefined,
          index,
          method: v.method,
        }),
      );
      table.addKeys(v.id, index);
    }
  }
}

function identifiersOf(resource: Resource | undefined): string[] {
  const ids = resource?.['identifier'];
  if (!Array.isArray(ids)) return [];
  return ids.flatMap((i: { system?: unknown; value?: unknown }) =>
    typeof i?.value === 'string' ? [`${typeof i.system === 'string' ? i.system : ''}|${i.value}`] : [],
  );
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}
