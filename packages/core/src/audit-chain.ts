/**
 * The audit log's hash chain (DESIGN §10), as pure functions: the canonical bytes of a record, its hash, and the
 * verification of a chain. The engine stores the records (store/audit.ts) and decides what is recorded
 * (audit/); everything that decides whether a chain is intact lives here, so it can be tested without a database
 * and re-implemented by an outside verifier from this file alone.
 *
 * A record's hash is SHA-256 over the stable JSON of its fields *and the previous record's hash*; the first record
 * links to {@link AUDIT_GENESIS_HASH}. Changing, removing or moving one record therefore breaks either its own
 * hash or the link of the record after it. What a chain alone cannot prove (a rewrite of everything from some
 * record on, by someone who can write the database) needs an external anchor: see docs/audit.md.
 */
import { createHash } from 'node:crypto';
import { stableStringify } from './stable-json.js';

/** The `prevHash` of record 1. */
export const AUDIT_GENESIS_HASH = '0'.repeat(64);

/** Version of the canonical form below; part of every hash, so a future form can never be confused with this one. */
export const AUDIT_CANONICAL_VERSION = 1;

/**
 * How far (in seqs, either way) the verifier looks for the true position of a record whose hash does not match
 * where it stands, to tell a moved record (`reordered`) from an edited one (`modified`).
 */
export const AUDIT_REORDER_WINDOW = 64;

/** At most this many problems are listed; `problemCount` still counts all of them. */
export const AUDIT_MAX_PROBLEMS = 1_000;

/** A JSON value as stored in `details` (numbers finite; no `undefined`). */
export type AuditJson = string | number | boolean | null | readonly AuditJson[] | { readonly [key: string]: AuditJson };

/** What is recorded. Never PHI: ids of commands and tenants, resource types, states, reason and status codes. */
export interface AuditEntry {
  /** Epoch ms (the engine's clock). */
  readonly at: number;
  /** Who: `api:<key-id>`, `operator:<key-id>`, `worker:<id>` or `system`. */
  readonly actor: string;
  /** What, dotted: `command.submitted`, `command.transition`, `command.operator.retry`, `token.refreshed`... */
  readonly action: string;
  readonly tenantId: string | null;
  /** What it is about: `command`, `tenant`, `token`, `api_key`... */
  readonly subjectType: string | null;
  readonly subjectId: string | null;
  /** `success` or `failure` (or another short word the action defines). */
  readonly outcome: string;
  /** Further facts, no PHI. */
  readonly details: { readonly [key: string]: AuditJson };
}

/** A stored record: the entry, its place in the chain and its hash. */
export interface AuditRecord extends AuditEntry {
  /** 1, 2, 3... without gaps. */
  readonly seq: number;
  /** The hash of record `seq - 1` ({@link AUDIT_GENESIS_HASH} for record 1). */
  readonly prevHash: string;
  /** {@link hashAuditRecord} of this record. */
  readonly hash: string;
}

/** The last record of a chain (what the store's head row holds, and what an external anchor records). */
export interface AuditHead {
  readonly seq: number;
  readonly hash: string;
}

/**
 * The canonical bytes of a record: the stable JSON (keys sorted at every level) of the canonical-form version and
 * every field except `hash`. Any change to any of them, including `seq` and `prevHash`, changes these bytes.
 */
export function auditCanonicalBytes(record: Omit<AuditRecord, 'hash'>): string {
  return stableStringify({
    v: AUDIT_CANONICAL_VERSION,
    seq: record.seq,
    at: record.at,
    actor: record.actor,
    action: record.action,
    tenantId: record.tenantId,
    subjectType: record.subjectType,
    subjectId: record.subjectId,
    outcome: record.outcome,
    details: record.details,
    prevHash: record.prevHash,
  });
}

/** SHA-256 (lower-case hex) of {@link auditCanonicalBytes}. */
export function hashAuditRecord(record: Omit<AuditRecord, 'hash'>): string {
  return createHash('sha256').update(auditCanonicalBytes(record), 'utf8').digest('hex');
}

/** Turns entries into the records that follow `head` (undefined: an empty chain). */
export function chainAuditEntries(head: AuditHead | undefined, entries: readonly AuditEntry[]): AuditRecord[] {
  let seq = head?.seq ?? 0;
  let prevHash = head?.hash ?? AUDIT_GENESIS_HASH;
  return entries.map((entry) => {
    const unhashed = {
      seq: ++seq,
      at: entry.at,
      actor: entry.actor,
      action: entry.action,
      tenantId: entry.tenantId,
      subjectType: entry.subjectType,
      subjectId: entry.subjectId,
      outcome: entry.outcome,
      details: entry.details,
      prevHash,
    };
    const record: AuditRecord = { ...unhashed, hash: hashAuditRecord(unhashed) };
    prevHash = record.hash;
    return record;
  });
}

/**
 * What is wrong, at which seq:
 * - `modified`: the record's contents no longer match its hash.
 * - `reordered`: the record is intact but stands at another seq than the one it was written at.
 * - `deleted`: records are missing (`count` of them from `seq`): a gap, the start, or the end (per the head).
 * - `broken_link`: the record is intact but does not link to the record before it: that one was rewritten with a
 *   recomputed hash, or a record was inserted.
 * - `head_mismatch`: the head (last seq and hash, kept apart from the records) disagrees with the last record:
 *   records were appended outside the engine, or the head was edited.
 * - `anchor_mismatch`: an external anchor (a seq and hash exported earlier) disagrees with the record at that seq.
 */
export type AuditProblemKind = 'modified' | 'reordered' | 'deleted' | 'broken_link' | 'head_mismatch' | 'anchor_mismatch';

export interface AuditProblem {
  readonly seq: number;
  readonly kind: AuditProblemKind;
  /** For `deleted`: how many records are missing from `seq` on. */
  readonly count?: number;
}

export interface AuditVerification {
  readonly ok: boolean;
  /** Records examined. */
  readonly checked: number;
  /** The last record examined (as stored), if any. */
  readonly last: AuditHead | undefined;
  /** The first {@link AUDIT_MAX_PROBLEMS} problems, in seq order. Never holds record contents. */
  readonly problems: readonly AuditProblem[];
  readonly problemCount: number;
}

export interface AuditVerifyOptions {
  /**
   * The store's head row. `null`: the store has none (so any record is unexpected); omitted: not checked (the
   * end of the chain cannot be proven, only its inside).
   */
  readonly head?: AuditHead | null;
  /** Hashes exported earlier (see docs/audit.md): each must match the record at its seq. */
  readonly anchors?: readonly AuditHead[];
  /**
   * Verify a suffix: the records given start after this (trusted) record. Default: from the genesis, seq 1.
   */
  readonly after?: AuditHead;
}

/**
 * Incremental verifier, for chains too long to hold in memory: `push` the records in seq order (as the store
 * returns them), then `finish`. {@link verifyAuditChain} wraps it for an array.
 *
 * Checks, per record: its seq follows the previous one (else `deleted`), its hash matches its contents (else
 * `reordered` when it matches at a nearby seq, otherwise `modified`), and its `prevHash` is the previous record's
 * hash (else `broken_link`, reported only when the previous record itself was intact, so one tampering is one
 * problem). Then the head and the anchors.
 */
export class AuditChainVerifier {
  readonly #anchors: Map<number, string>;
  readonly #head: AuditHead | null | undefined;
  readonly #problems: AuditProblem[] = [];
  #problemCount = 0;
  #checked = 0;
  #expectedSeq: number;
  #prevHash: string;
  /** Whether the previous record was intact where it stands (so a bad link is the next record's problem). */
  #prevIntact = true;
  #last: AuditHead | undefined;

  constructor(options: AuditVerifyOptions = {}) {
    this.#head = options.head;
    this.#anchors = new Map((options.anchors ?? []).map((a) => [a.seq, a.hash]));
    this.#expectedSeq = (options.after?.seq ?? 0) + 1;
    this.#prevHash = options.after?.hash ?? AUDIT_GENESIS_HASH;
    this.#last = options.after;
  }

  push(record: AuditRecord): void {
    this.#checked++;
    let gap = false;
    if (record.seq > this.#expectedSeq) {
      this.#problem({ seq: this.#expectedSeq, kind: 'deleted', count: record.seq - this.#expectedSeq });
      gap = true;
    } else if (record.seq < this.#expectedSeq) {
      // Not in increasing order: the caller's order is wrong, or a seq repeats.
      this.#problem({ seq: record.seq, kind: 'reordered' });
      gap = true;
    }
    const intact = hashAuditRecord(record) === record.hash;
    if (!intact) {
      this.#problem({ seq: record.seq, kind: this.#movedFrom(record) === undefined ? 'modified' : 'reordered' });
    } else if (!gap && this.#prevIntact && record.prevHash !== this.#prevHash) {
      this.#problem({ seq: record.seq, kind: 'broken_link' });
    }
    const anchored = this.#anchors.get(record.seq);
    if (anchored !== undefined && (anchored !== record.hash || !intact)) this.#problem({ seq: record.seq, kind: 'anchor_mismatch' });
    this.#prevIntact = intact;
    this.#prevHash = record.hash;
    this.#expectedSeq = Math.max(this.#expectedSeq, record.seq + 1);
    this.#last = { seq: record.seq, hash: record.hash };
  }

  finish(): AuditVerification {
    const lastSeq = this.#expectedSeq - 1;
    const head = this.#head;
    if (head === null) {
      if (this.#last !== undefined) this.#problem({ seq: this.#last.seq, kind: 'head_mismatch' });
    } else if (head !== undefined) {
      if (head.seq > lastSeq) this.#problem({ seq: lastSeq + 1, kind: 'deleted', count: head.seq - lastSeq });
      else if (head.seq < lastSeq) this.#problem({ seq: head.seq + 1, kind: 'head_mismatch' });
      else if (head.seq > 0 && head.hash !== this.#last?.hash) this.#problem({ seq: head.seq, kind: 'head_mismatch' });
    }
    for (const [seq] of this.#anchors) {
      if (seq > lastSeq) this.#problem({ seq, kind: 'anchor_mismatch' });
    }
    const problems = [...this.#problems].sort((a, b) => a.seq - b.seq);
    return Object.freeze({ ok: this.#problemCount === 0, checked: this.#checked, last: this.#last, problems, problemCount: this.#problemCount });
  }

  /** The seq near `record.seq` at which the record's contents hash to its stored hash, if any. */
  #movedFrom(record: AuditRecord): number | undefined {
    if (this.#problemCount > AUDIT_MAX_PROBLEMS) return undefined; // mass tampering: do not spend time classifying
    for (let d = 1; d <= AUDIT_REORDER_WINDOW; d++) {
      for (const seq of [record.seq - d, record.seq + d]) {
        if (seq >= 1 && hashAuditRecord({ ...record, seq }) === record.hash) return seq;
      }
    }
    return undefined;
  }

  #problem(problem: AuditProblem): void {
    this.#problemCount++;
    if (this.#problems.length < AUDIT_MAX_PROBLEMS) this.#problems.push(Object.freeze(problem));
  }
}

/** Verifies a whole chain given as an array in seq order. See {@link AuditChainVerifier}. */
export function verifyAuditChain(records: readonly AuditRecord[], options: AuditVerifyOptions = {}): AuditVerification {
  const verifier = new AuditChainVerifier(options);
  for (const record of records) verifier.push(record);
  return verifier.finish();
}

/** Throws a TypeError naming the first problem when `details` is not plain JSON (so its hash round-trips). */
export function assertAuditJson(value: unknown, path = 'details'): asserts value is AuditJson {
  if (value === null || typeof value === 'string' || typeof value === 'boolean') return;
  if (typeof value === 'number') {
    if (!Number.isFinite(value) || Object.is(value, -0)) throw new TypeError(`${path} must be a finite number.`);
    return;
  }
  if (Array.isArray(value)) {
    value.forEach((v: unknown, i) => assertAuditJson(v, `${path}[${i}]`));
    return;
  }
  if (typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype) {
    for (const [k, v] of Object.entries(value)) assertAuditJson(v, `${path}.${k}`);
    return;
  }
  throw new TypeError(`${path} must be JSON (string, finite number, boolean, null, array or plain object).`);
}
