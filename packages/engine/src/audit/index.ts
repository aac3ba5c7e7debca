/**
 * The audit log: append-only, hash-chained records of every command state change, token event and operator
 * action, verifiable (`tether audit verify`) and exportable as FHIR R4 AuditEvent. The only entrance of this
 * folder. See docs/audit.md.
 */
export {
  AuditLog,
  DEFAULT_AUDIT_BATCH_SIZE,
  DEFAULT_AUDIT_TAIL_INTERVAL_MS,
  DEFAULT_MAPPING_VERSION,
  type AuditInput,
  type AuditLogLine,
  type AuditLogOptions,
  type AuditVerifyRequest,
} from './audit-log.js';
export { ACTOR_PATTERN, SYSTEM_ACTOR, authEventEntry, commandEventEntry, contextKind, reasonCode, type CommandEntryOptions } from './entries.js';
export { AUDIT_FHIR, toAuditEvent, type FhirAuditEvent } from './fhir.js';
