import { canonicalContentHash, stableStringify } from './canonical.js';
import { redactCanaries, scanCanaries } from './canaries.js';
import { CheckerInputError } from './errors.js';
import {
  DETAIL_LIMIT,
  type CheckDetails,
  type CheckInputs,
  type CheckReport,
  type Claim,
  type LedgerEntry,
  type Resource,
  type ViolationClass,
  type ViolationExample,
  type WriteLogEntry,
} from './types.js';
import { splitBusinessKey, toClaim, toLedgerEntry, toReceipt, toResource, toWriteLogEntry } from './validate.js';

/*
 * The checker is Jepsen's `total-queue` checker adapted from a queue to EHR state (reliability.md, "Independent
 * checker"). Jepsen compares what was enqueued with what was drained; here the "drain" is the EHR's final state per
 * business key, and the write log adds what the final state alone cannot show (a duplicate that was created and
 * later deleted).
 *
 * Every command gets a disposition from the engine's claim. The claim only decides how an outcome is *accounted
 * for*; whether the clinical object is really there, once, with the right content is decided by the EHR's data.
 */

/** Engine states meaning "the write is in the EHR". */
const ACKNOWLEDGED_STATES: ReadonlySet<string> = new Set(['verified', 'acknowledged']);
/** Final states meaning "not written, on purpose": accounted for only when they carry a reason. */
const ACCOUNTED_NEGATIVE_STATES: ReadonlySet<string> = new Set(['rejected', 'cancelled', 'needs_review']);
/** Final state meaning "a newer version of the same entity was applied instead". */
const SUPERSEDED_STATE = 'superseded';

/**
 * What the claims say about one command.
 * - `acknowledged`: verified / acknowledged.
 * - `quarantined`: rejected / cancelled / needs_review WITH a reason (accounted for, not a violation).
 * - `superseded`: superseded, and a later intent for the key exists (so the claim is plausible).
 * - `silent`: a final negative state without a reason, or `superseded` with nothing to be superseded by.
 * - `unresolved`: claims were supplied but this command has none, or a non-final one (`unknown`, `in_flight`,
 *   `retry_wait`, `conflict`, or any state this checker does not know).
 * - `unclaimed`: no claims were supplied at all; the outcome is simply unknown to the checker.
 * - `forgotten`: the engine acknowledged receiving it (a receipt), yet the claims know nothing of it.
 */
type Disposition = 'acknowledged' | 'quarantined' | 'superseded' | 'silent' | 'unresolved' | 'unclaimed' | 'forgotten';

function dispositionOf(claim: Claim | undefined, claimsSupplied: boolean, laterIntentExists: boolean, receipted: boolean): Disposition {
  if (!claimsSupplied) return 'unclaimed';
  if (!claim) return receipted ? 'forgotten' : 'unresolved';
  if (ACKNOWLEDGED_STATES.has(claim.state)) return 'acknowledged';
  if (ACCOUNTED_NEGATIVE_STATES.has(claim.state)) return (claim.reason ?? '').trim() ? 'quarantined' : 'silent';
  if (claim.state === SUPERSEDED_STATE) return laterIntentExists ? 'superseded' : 'silent';
  return 'unresolved';
}

const isAmbiguous = (d: Disposition): boolean => d === 'unclaimed' || d === 'unresolved' || d === 'forgotten';

/** `Type/id`, the identity of a resource in the EHR. */
const refOf = (r: { resourceType: string; id?: string | undefined }): string => `${r.resourceType}/${r.id ?? ''}`;

/** The `system|value` strings of a resource's identifiers, each once. */
function identifierKeys(resource: Resource): string[] {
  const ids = resource['identifier'];
  if (!Array.isArray(ids)) return [];
  const keys = new Set<string>();
  for (const i of ids as unknown[]) {
    if (i === null || typeof i !== 'object') continue;
    const { system, value } = i as { system?: unknown; value?: unknown };
    if (typeof value === 'string') keys.add(`${typeof system === 'string' ? system : ''}|${value}`);
  }
  return [...keys];
}

/** What the write log shows for one business key. */
interface KeyWrites {
  creates: number;
  /** create + update entries carrying the key. */
  writes: number;
  /** Every resource that ever carried the key. */
  readonly refs: Set<string>;
}

/** Collects examples per class, at most {@link DETAIL_LIMIT} each, while counting all. */
class Tally {
  readonly counts: Record<ViolationClass, number> = { lost: 0, duplicated: 0, unexpected: 0, corrupt: 0, stale: 0, dropped: 0 };
  readonly examples: Record<ViolationClass, ViolationExample[]> = { lost: [], duplicated: [], unexpected: [], corrupt: [], stale: [], dropped: [] };

  add(cls: ViolationClass, example: ViolationExample): void {
    this.counts[cls]++;
    if (this.examples[cls].length < DETAIL_LIMIT) this.examples[cls].push(example);
  }
}

/** Counts warnings of one kind and keeps a few examples. */
class Warnings {
  readonly #byKind = new Map<string, { count: number; examples: string[] }>();

  add(kind: string, example: string): void {
    let w = this.#byKind.get(kind);
    if (!w) {
      w = { count: 0, examples: [] };
      this.#byKind.set(kind, w);
    }
    w.count++;
    if (w.examples.length < 3) w.examples.push(example);
  }

  list(): string[] {
    return [...this.#byKind].slice(0, DETAIL_LIMIT).map(([kind, w]) => `${w.count} ${kind} (e.g. ${w.examples.join(', ')})`);
  }
}

/**
 * Audits one run: compares the intent ledger with the EHR's write log and final state, sorts every command and
 * business key into the classes below, and scans logs for planted PHI canaries.
 *
 * Command counts:
 * - `acknowledged`: the engine claims `verified` / `acknowledged`.
 * - `ambiguous`: no claim (or no claims at all), or a non-final claim such as `unknown`.
 * - `recovered`: ambiguous, yet its key ends present exactly once with the expected content, and the command
 *   visibly took effect (its content is the live one, or it is the key's create).
 * - `dropped`: expected to be accepted, but the engine ended it `rejected` / `cancelled` / `needs_review`
 *   without a reason, or (when claims were supplied) left it without a final state; and nothing carrying its
 *   key was ever written.
 * - `quarantined`: `rejected` / `cancelled` / `needs_review` with a reason: accounted for, not a violation.
 *
 * Business-key counts (a key can be in more than one class, e.g. duplicated and corrupt):
 * - `lost`: some command of the key should have taken effect (acknowledged, or expected-accept and neither
 *   quarantined, superseded nor dropped), yet no live resource carries the key.
 * - `duplicated`: more than one live resource carries the key, or the write log shows more than one create for
 *   it, or more than one resource ever carried it (catches "created twice, then one deleted").
 * - `unexpected`: a live resource or a write-log create/update carries a key of `businessKeySystem` that no
 *   intent has; or a key whose every intent expected rejection (and none was acknowledged) was written anyway.
 * - `corrupt`: exactly one live resource, and its canonical content matches neither the expected intent (the
 *   latest that should have taken effect), nor an older intent, nor a later in-doubt intent that was quarantined.
 * - `stale`: exactly one live resource whose content is that of an OLDER intent than the expected one: an old
 *   write was applied last, or the latest one never landed.
 *
 * @throws CheckerInputError when the inputs are malformed or contradict themselves (duplicate command ids, two
 *   intents of one key with the same `seq`, two different copies of one resource in the final read).
 */
export function check(inputs: CheckInputs): CheckReport {
  if (typeof inputs.businessKeySystem !== 'string') {
    throw new CheckerInputError('businessKeySystem must be a string (the identifier system of business keys)');
  }
  const ledger = inputs.ledger.map((e, i) => toLedgerEntry(e, `ledger[${i}]`));
  const claimsSupplied = inputs.claims !== undefined;
  const claimList = (inputs.claims ?? []).map((c, i) => toClaim(c, `claims[${i}]`));
  const receipts = new Set((inputs.receipts ?? []).map((r, i) => toReceipt(r, `receipts[${i}]`)));
  const writeLog = inputs.writeLog.map((e, i) => toWriteLogEntry(e, `writeLog[${i}]`)).sort((a, b) => a.seq - b.seq);
  const finalRead = inputs.finalRead.map((r, i) => toResource(r, `finalRead[${i}]`));
  const warnings = new Warnings();

  // --- The ledger, per business key, in seq order.
  const byKey = new Map<string, LedgerEntry[]>();
  const commandIds = new Set<string>();
  for (const e of ledger) {
    if (commandIds.has(e.commandId)) throw new CheckerInputError(`ledger: command id '${e.commandId}' appears twice`);
    commandIds.add(e.commandId);
    let list = byKey.get(e.businessKey);
    if (!list) byKey.set(e.businessKey, (list = []));
    list.push(e);
  }
  for (const [key, list] of byKey) {
    list.sort((a, b) => a.seq - b.seq);
    for (let i = 1; i < list.length; i++) {
      const [prev, cur] = [list[i - 1] as LedgerEntry, list[i] as LedgerEntry];
      // Without a strict order there is no "latest intent", and so no expected final content.
      if (prev.seq === cur.seq) {
        throw new CheckerInputError(`ledger: commands '${prev.commandId}' and '${cur.commandId}' of business key '${key}' have the same seq ${cur.seq}`);
      }
    }
  }

  // --- Claims: the last line about a command wins (a claims file may be an append-only state history).
  const claims = new Map<string, Claim>();
  for (const c of claimList) {
    claims.set(c.commandId, c);
    if (!commandIds.has(c.commandId)) warnings.add('claims for commands that are not in the ledger', c.commandId);
  }
  for (const r of receipts) if (!commandIds.has(r)) warnings.add('receipts for commands that are not in the ledger', r);
  if (receipts.size > 0 && !claimsSupplied) warnings.add('receipts without claims (receipts are judged against the claims)', 'receipts');

  // --- The final read: live resources by Type/id and by identifier key.
  const liveByRef = new Map<string, { resource: Resource; index: number }>();
  for (const [index, resource] of finalRead.entries()) {
    const ref = refOf(resource);
    const seen = liveByRef.get(ref);
    if (seen) {
      // The same resource found by two searches is fine; two different copies mean the read is not one state.
      if (stableStringify(seen.resource) !== stableStringify(resource)) {
        throw new CheckerInputError(`finalRead: ${ref} appears twice with different content (entries ${seen.index + 1} and ${index + 1})`);
      }
      continue;
    }
    liveByRef.set(ref, { resource, index });
  }
  const liveByKey = new Map<string, Resource[]>();
  for (const { resource } of liveByRef.values()) {
    for (const key of identifierKeys(resource)) {
      let list = liveByKey.get(key);
      if (!list) liveByKey.set(key, (list = []));
      list.push(resource);
    }
  }

  // --- The write log: per key, creates and the resources that ever carried it; per resource, its last op.
  const writesByKey = new Map<string, KeyWrites>();
  const lastByRef = new Map<string, WriteLogEntry>();
  for (const w of writeLog) {
    lastByRef.set(refOf(w), w);
    if (w.op === 'delete') continue;
    for (const key of new Set(w.identifiers)) {
      let kw = writesByKey.get(key);
      if (!kw) writesByKey.set(key, (kw = { creates: 0, writes: 0, refs: new Set() }));
      kw.writes++;
      if (w.op === 'create') kw.creates++;
      kw.refs.add(refOf(w));
    }
  }
  crossCheck(writeLog, lastByRef, liveByRef, byKey, inputs.businessKeySystem, warnings);

  // --- Classification.
  const tally = new Tally();
  let acknowledged = 0;
  let ambiguous = 0;
  let recovered = 0;
  let quarantined = 0;

  for (const [key, cmds] of byKey) {
    const live = liveByKey.get(key) ?? [];
    const kw = writesByKey.get(key);
    const written = live.length > 0 || (kw?.writes ?? 0) > 0;
    const disp = cmds.map((c, i) => dispositionOf(claims.get(c.commandId), claimsSupplied, i < cmds.length - 1, receipts.has(c.commandId)));

    const expectedApplied: LedgerEntry[] = [];
    let anyExpectation = false;
    for (const [i, c] of cmds.entries()) {
      const d = disp[i] as Disposition;
      if (d === 'acknowledged') acknowledged++;
      if (isAmbiguous(d)) ambiguous++;
      if (d === 'quarantined') quarantined++;
      if (c.expect === 'accept' || d === 'acknowledged') anyExpectation = true;
      // Without claims there is nothing to hold the engine to: absence is judged as `lost` instead.
      if (c.expect === 'accept' && (d === 'silent' || d === 'unresolved') && !written) {
        tally.add('dropped', {
          businessKey: key,
          commandIds: [c.commandId],
          note: d === 'silent' ? `engine ended it '${claims.get(c.commandId)?.state ?? ''}' without a reason; nothing was written` : 'no final state from the engine; nothing was written',
        });
        continue;
      }
      if (d === 'acknowledged' || (c.expect === 'accept' && d !== 'quarantined' && d !== 'superseded')) expectedApplied.push(c);
    }
    const target = expectedApplied.at(-1);

    // Duplicates are judged for every key, whatever else is wrong with it.
    const creates = kw?.creates ?? 0;
    const everRefs = new Set([...(kw?.refs ?? []), ...live.map(refOf)]);
    const duplicated = live.length > 1 || creates > 1 || everRefs.size > 1;
    if (duplicated) {
      tally.add('duplicated', {
        businessKey: key,
        commandIds: cmds.map((c) => c.commandId),
        note: `${live.length} live (${live.map(refOf).join(', ') || 'none'}); ${creates} create(s) in the write log; ${everRefs.size} resource(s) ever carried the key`,
      });
    }

    if (!anyExpectation) {
      // Every intent expected a rejection and the engine acknowledged none: any write is one nobody asked for.
      if (written) {
        tally.add('unexpected', {
          businessKey: key,
          commandIds: cmds.map((c) => c.commandId),
          note: `written although every intent of the key expected a rejection (${live.length} live, ${kw?.writes ?? 0} write(s) in the log)`,
        });
      }
      continue;
    }

    if (live.length === 0) {
      if (target) {
        const deleted = [...(kw?.refs ?? [])].filter((r) => lastByRef.get(r)?.op === 'delete').length;
        const forgotten = cmds.filter((_, i) => disp[i] === 'forgotten').length;
        tally.add('lost', {
          businessKey: key,
          commandIds: expectedApplied.map((c) => c.commandId),
          note: `no live resource carries the key; write log: ${creates} create(s), ${deleted} of the key's resource(s) deleted${forgotten ? `; ${forgotten} receipted command(s) the engine has no record of` : ''}`,
        });
      }
      continue;
    }
    if (live.length > 1) continue; // duplicated; which copy's content is "the" content is undefined.

    const only = live[0] as Resource;
    const hash = canonicalContentHash(only);
    const correct = target !== undefined && hash === target.contentHash;
    if (!correct) {
      const floor = target?.seq ?? -Infinity;
      // A later intent that was quarantined in doubt (e.g. needs_review after an unknown outcome) may well have
      // landed; that is what the review is for, not a violation.
      const landedInDoubt = cmds.some((c, i) => c.seq > floor && c.contentHash === hash && c.expect === 'accept' && disp[i] === 'quarantined');
      const older = target ? cmds.find((c) => c.seq < target.seq && c.contentHash === hash) : undefined;
      if (older && target) {
        tally.add('stale', {
          businessKey: key,
          commandIds: [older.commandId, target.commandId],
          note: `${refOf(only)} holds the content of seq ${older.seq} ('${older.commandId}'); expected seq ${target.seq} ('${target.commandId}')`,
        });
      } else if (!landedInDoubt) {
        const matching = cmds.find((c) => c.contentHash === hash);
        tally.add('corrupt', {
          businessKey: key,
          commandIds: target ? [target.commandId] : cmds.map((c) => c.commandId),
          note: matching
            ? `${refOf(only)} holds the content of seq ${matching.seq} ('${matching.commandId}'), which was not expected to take effect`
            : `${refOf(only)} content hash ${hash.slice(0, 12)}… matches no intent${target ? `; expected ${target.contentHash.slice(0, 12)}… (seq ${target.seq})` : ''}`,
        });
      }
    }

    if (correct && !duplicated) {
      for (const [i, c] of cmds.entries()) {
        if (isAmbiguous(disp[i] as Disposition) && (c.contentHash === hash || c.action === 'create')) recovered++;
      }
    }
    checkEhrIds(cmds, claims, only, warnings);
  }

  // --- Business keys nobody intended.
  const unexpectedKeys = new Set<string>();
  const ofSystem = (key: string): boolean => splitBusinessKey(key)?.system === inputs.businessKeySystem;
  for (const key of liveByKey.keys()) if (ofSystem(key) && !byKey.has(key)) unexpectedKeys.add(key);
  for (const key of writesByKey.keys()) if (ofSystem(key) && !byKey.has(key)) unexpectedKeys.add(key);
  for (const key of [...unexpectedKeys].sort()) {
    const live = liveByKey.get(key) ?? [];
    tally.add('unexpected', {
      businessKey: key,
      commandIds: [],
      note: `no intent has this key; ${live.length} live (${live.map(refOf).join(', ') || 'none'}), ${writesByKey.get(key)?.writes ?? 0} write(s) in the log`,
    });
  }

  // --- PHI canaries.
  const canaries = new Set(ledger.flatMap((e) => e.canaries ?? []));
  const scan = scanCanaries(canaries, inputs.logs ?? []);

  const redactExample = (x: ViolationExample): ViolationExample => ({
    businessKey: redactCanaries(x.businessKey, canaries),
    commandIds: x.commandIds.map((id) => redactCanaries(id, canaries)),
    note: redactCanaries(x.note, canaries),
  });
  const details: CheckDetails = {
    lost: tally.examples.lost.map(redactExample),
    duplicated: tally.examples.duplicated.map(redactExample),
    unexpected: tally.examples.unexpected.map(redactExample),
    corrupt: tally.examples.corrupt.map(redactExample),
    stale: tally.examples.stale.map(redactExample),
    dropped: tally.examples.dropped.map(redactExample),
    canaryHits: scan.perLog.slice(0, DETAIL_LIMIT).map((h) => ({ ...h, file: redactCanaries(h.file, canaries) })),
    warnings: warnings.list().map((w) => redactCanaries(w, canaries)),
  };

  return {
    seed: inputs.seed ?? seedOf(inputs.faults),
    commands: ledger.length,
    acknowledged,
    ambiguous,
    recovered,
    lost: tally.counts.lost,
    duplicated: tally.counts.duplicated,
    unexpected: tally.counts.unexpected,
    corrupt: tally.counts.corrupt,
    stale: tally.counts.stale,
    dropped: tally.counts.dropped,
    quarantined,
    canaryHits: scan.hits,
    faults: inputs.faults ?? {},
    details,
  };
}

/**
 * Consistency checks between the write log and the final read. They change no count (the final read is the truth
 * about the end state) but point at a harness that collected its inputs wrongly, e.g. a final read taken by search
 * inside the EHR's visibility lag, or a write log fetched with `?since=`.
 */
function crossCheck(
  writeLog: readonly WriteLogEntry[],
  lastByRef: ReadonlyMap<string, WriteLogEntry>,
  liveByRef: ReadonlyMap<string, { resource: Resource }>,
  byKey: ReadonlyMap<string, readonly LedgerEntry[]>,
  businessKeySystem: string,
  warnings: Warnings,
): void {
  if (writeLog.length === 0) return; // No write log to compare with (e.g. a real vendor sandbox).
  for (const [ref, last] of lastByRef) {
    if (last.op !== 'delete' && !liveByRef.has(ref) && last.identifiers.some((k) => byKey.has(k))) {
      warnings.add('resources live per the write log but missing from the final read', ref);
    }
  }
  for (const [ref, { resource }] of liveByRef) {
    if (lastByRef.has(ref)) {
      if (lastByRef.get(ref)?.op === 'delete') warnings.add('resources in the final read that the write log says were deleted', ref);
      continue;
    }
    if (identifierKeys(resource).some((k) => byKey.has(k) || splitBusinessKey(k)?.system === businessKeySystem)) {
      warnings.add('resources with a business key in the final read but never in the write log', ref);
    }
  }
}

/** Warns when an acknowledged claim names an EHR id other than the resource that carries the key. */
function checkEhrIds(cmds: readonly LedgerEntry[], claims: ReadonlyMap<string, Claim>, live: Resource, warnings: Warnings): void {
  for (const c of cmds) {
    const claim = claims.get(c.commandId);
    if (!claim?.ehrId || !ACKNOWLEDGED_STATES.has(claim.state)) continue;
    if (claim.ehrId !== live.id && claim.ehrId !== refOf(live)) {
      warnings.add('acknowledged claims whose ehrId is not the resource carrying the key', c.commandId);
    }
  }
}

/** The sandbox's fault stats carry the seed in use; a run's report should name it even if the caller did not. */
function seedOf(faults: unknown): number | string | null {
  const seed = faults !== null && typeof faults === 'object' ? (faults as { seed?: unknown }).seed : undefined;
  return typeof seed === 'number' || typeof seed === 'string' ? seed : null;
}

/** Options of {@link isViolation}. */
export interface ViolationOptions {
  /** Do not count `stale` as a violation (it is still reported). Default: false. */
  readonly allowStale?: boolean;
}

/**
 * True when the report breaks a promise: any lost, duplicated, unexpected, corrupt or dropped, any canary hit, and
 * any stale unless `allowStale`. Ambiguous, recovered and quarantined are outcomes, not violations.
 */
export function isViolation(report: CheckReport, options: ViolationOptions = {}): boolean {
  return (
    report.lost > 0 ||
    report.duplicated > 0 ||
    report.unexpected > 0 ||
    report.corrupt > 0 ||
    report.dropped > 0 ||
    report.canaryHits > 0 ||
    (!options.allowStale && report.stale > 0)
  );
}
