/**
 * One line of the intent ledger, written by the load generator BEFORE it submits the command, so that a command
 * the engine never admits to still has a record.
 */
export interface LedgerEntry {
  /** The generator's id of the command (also the id the engine's claims refer to). */
  readonly commandId: string;
  /** `system|value` of the business-key identifier stamped into the resource. */
  readonly businessKey: string;
  readonly resourceType: string;
  readonly action: 'create' | 'update';
  /** Whether the generator expects the EHR to accept the write. */
  readonly expect: 'accept' | 'reject';
  /** {@link canonicalContentHash} of the resource as submitted. */
  readonly contentHash: string;
  /** Order of the intents of one business key: a higher `seq` supersedes a lower one. */
  readonly seq: number;
  /** PHI canary strings planted in this command's payload; none may appear in any scanned log. */
  readonly canaries?: readonly string[];
}

/**
 * What the engine says became of a command. Only a claim: the checker believes the EHR, and uses claims to sort
 * outcomes into acknowledged / ambiguous / quarantined / dropped.
 */
export interface Claim {
  readonly commandId: string;
  /** The engine's command state (`verified`, `acknowledged`, `rejected`, `needs_review`, `unknown`, ...). */
  readonly state: string;
  /** Why the command ended where it did; required for a rejection or review to count as accounted for. */
  readonly reason?: string;
  /** The id the EHR assigned, if the engine knows it. */
  readonly ehrId?: string;
}

/** One line of the EHR's server-side write log (the sandbox's `GET /_admin/write-log`). */
export interface WriteLogEntry {
  readonly seq: number;
  /** ISO time the write was applied. */
  readonly at: string;
  readonly op: 'create' | 'update' | 'delete';
  readonly resourceType: string;
  readonly id: string;
  readonly versionId: string;
  readonly requestId: string;
  readonly interaction: string;
  /**
   * The EHR's own hash of the stored resource. NOT comparable with {@link LedgerEntry.contentHash} (it keeps `id`
   * and most of `meta`), so the checker ignores it and hashes the final read instead.
   */
  readonly contentHash?: string | null;
  /** `system|value` of each identifier of the stored resource; empty for a deletion. */
  readonly identifiers: readonly string[];
}

/** A FHIR resource as parsed JSON. */
export type Resource = Readonly<Record<string, unknown>> & { readonly resourceType: string; readonly id?: string };

/** A log file (or other text sink) to scan for PHI canaries. */
export interface LogText {
  /** Shown in the report instead of the canary: a file name or sink name. */
  readonly name: string;
  readonly text: string;
}

/** Everything {@link check} audits. All of it can come from files, so the audit can run after the fact. */
export interface CheckInputs {
  readonly ledger: readonly LedgerEntry[];
  /**
   * The engine's claims. When omitted, every command counts as ambiguous and `dropped` cannot be judged (no
   * claim is not the same as a missing claim). When given, a command without a claim is unresolved.
   */
  readonly claims?: readonly Claim[];
  /**
   * Receipts: the command ids whose acceptance the engine acknowledged to the submitter (for example an HTTP
   * 202 from `POST /v1/commands`), as the load generator recorded them. A receipted command the claims know
   * nothing about was forgotten after it was acknowledged: the engine owes it, so an absent key is `lost` (not
   * `dropped`). Only meaningful together with `claims`.
   */
  readonly receipts?: readonly string[];
  readonly writeLog: readonly WriteLogEntry[];
  /** Every live resource the EHR holds at the end (at least every one carrying a business key). */
  readonly finalRead: readonly Resource[];
  readonly logs?: readonly LogText[];
  /** Copied into {@link CheckReport.faults} as is (the sandbox's `/_admin/faults/stats`). */
  readonly faults?: unknown;
  /** The run's seed; default: the `seed` field of {@link CheckInputs.faults}, else null. */
  readonly seed?: number | string;
  /**
   * The identifier system of business keys. An identifier of this system that no intent has is `unexpected`.
   * Identifiers of other systems are ignored (for example the MRN of a Patient the Observations refer to).
   */
  readonly businessKeySystem: string;
}

/** The violation classes, in report order. */
export const VIOLATION_CLASSES = ['lost', 'duplicated', 'unexpected', 'corrupt', 'stale', 'dropped'] as const;
export type ViolationClass = (typeof VIOLATION_CLASSES)[number];

/** One example of a violation. Only business keys, command ids, resource ids and hashes: never payload text. */
export interface ViolationExample {
  readonly businessKey: string;
  /** The commands concerned (for `dropped`: the command that was dropped). */
  readonly commandIds: readonly string[];
  /** What the checker saw, in its own words. */
  readonly note: string;
}

/** Canary hits in one log: counts only, never the canary text. */
export interface CanaryHitExample {
  readonly file: string;
  /** Distinct canaries found in this file (each counts once towards {@link CheckReport.canaryHits}). */
  readonly canaries: number;
  /** Total occurrences of those canaries in the file. */
  readonly occurrences: number;
}

/** Examples behind the counts (at most {@link DETAIL_LIMIT} per class) and notes about the inputs. */
export interface CheckDetails {
  readonly lost: readonly ViolationExample[];
  readonly duplicated: readonly ViolationExample[];
  readonly unexpected: readonly ViolationExample[];
  readonly corrupt: readonly ViolationExample[];
  readonly stale: readonly ViolationExample[];
  readonly dropped: readonly ViolationExample[];
  readonly canaryHits: readonly CanaryHitExample[];
  /**
   * Inconsistencies between the inputs that do not change a count but may mean the harness collected them
   * wrongly (a final read that misses a resource the write log says is live, claims for unknown commands...).
   */
  readonly warnings: readonly string[];
}

/** How many examples each class of {@link CheckDetails} holds at most. */
export const DETAIL_LIMIT = 20;

/**
 * The audit result, in the per-run JSON shape of reliability.md. Command counts: `commands`, `acknowledged`,
 * `ambiguous`, `recovered`, `dropped`, `quarantined`. Business-key counts: `lost`, `duplicated`, `unexpected`,
 * `corrupt`, `stale`. `canaryHits` counts (canary, log) pairs.
 */
export interface CheckReport {
  readonly seed: number | string | null;
  readonly commands: number;
  readonly acknowledged: number;
  readonly ambiguous: number;
  readonly recovered: number;
  readonly lost: number;
  readonly duplicated: number;
  readonly unexpected: number;
  readonly corrupt: number;
  readonly stale: number;
  readonly dropped: number;
  readonly quarantined: number;
  readonly canaryHits: number;
  readonly faults: unknown;
  readonly details: CheckDetails;
}
