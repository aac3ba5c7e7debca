/**
 * `@tether/checker`: the independent auditor of Tether runs. It compares the load generator's intent ledger with
 * the EHR's write log and final state and reports lost, duplicated, unexpected, corrupt, stale and dropped writes
 * and PHI canary hits (see README.md).
 *
 * It imports nothing from the other Tether packages, on purpose: a shared helper with a bug would hide that bug
 * from the audit. A test in this package enforces it.
 */
export { check, isViolation } from './check.js';
export type { ViolationOptions } from './check.js';
export { canonicalContent, canonicalContentHash, stableStringify, NON_CONTENT_ELEMENTS } from './canonical.js';
export { redactCanaries, scanCanaries } from './canaries.js';
export type { CanaryScan } from './canaries.js';
export { CheckerInputError, isCheckerInputError } from './errors.js';
export { parseNdjson, readNdjson, readText } from './ndjson.js';
export type { RecordValidator } from './ndjson.js';
export { splitBusinessKey, toClaim, toLedgerEntry, toResource, toWriteLogEntry } from './validate.js';
export { DETAIL_LIMIT, VIOLATION_CLASSES } from './types.js';
export type {
  CanaryHitExample,
  CheckDetails,
  CheckInputs,
  CheckReport,
  Claim,
  LedgerEntry,
  LogText,
  Resource,
  ViolationClass,
  ViolationExample,
  WriteLogEntry,
} from './types.js';
