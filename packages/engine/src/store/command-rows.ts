/**
 * What both store implementations share for the write-back tables (migration 2): input validation, the mapping
 * between records and rows, and the patch column map. Kept apart from records.ts so the command outbox can grow
 * without touching the tenant and token code.
 *
 * Validation errors name the field, never its value: a resource or a business key may hold PHI.
 */
import { z } from 'zod';
import { TetherError } from '@tether/core';
import type {
  CommandAttemptOutcome,
  InsertResult,
  CommandAttemptRecord,
  CommandEventRecord,
  CommandFilter,
  CommandPatch,
  CommandRecord,
  CommandState,
  CommandStep,
  LeasedCommand,
  LeaseRequest,
  NewCommand,
  CommandVerification,
  SubmitLease,
  TenantChanged,
} from './types.js';

/** Every state, in the order of DESIGN §5 (defined in core). The CHECK constraints of migration 2 list the same words. */
import { COMMAND_STATE_VALUES } from '@tether/core';
export { COMMAND_STATE_VALUES };

/** States a worker holds under a lease; such a command is leased again once its lease expires. */
export const WORKING_STATES = ['in_flight', 'unknown', 'acknowledged', 'conflict'] as const satisfies readonly CommandState[];
/** States waiting for their `nextAttemptAt`. */
export const WAITING_STATES = ['queued', 'retry_wait'] as const satisfies readonly CommandState[];

/** The answer of an insert whose tenant check failed (both stores). */
export const TENANT_CHANGED: TenantChanged = Object.freeze({ tenantChanged: true });

/** Default and largest page of {@link CommandFilter.limit}. */
export const DEFAULT_COMMAND_LIST_LIMIT = 100;
export const MAX_COMMAND_LIST_LIMIT = 1_000;
/** Most commands one lease call may take. */
export const MAX_LEASE_BATCH = 100;

const id = z.string().min(1).max(255);
const epochMs = z.number().int().min(0);
const state = z.enum(COMMAND_STATE_VALUES);

/** Longest `patientRef` the store keeps (`Patient/` and a FHIR id of at most 64 characters fit with room). */
export const PATIENT_REF_MAX = 255;

const newCommandSchema = z
  .object({
    id,
    tenantId: id,
    context: z.string().min(1).max(255),
    action: z.enum(['create', 'update', 'upsert', 'delete']),
    resourceType: z.string().regex(/^[A-Z][A-Za-z]{0,63}$/),
    businessKey: z.string().min(1).max(512),
    idempotencyKey: id.nullable(),
    payloadHash: z.string().regex(/^[0-9a-f]{64}$/),
    resource: z.record(z.string(), z.unknown()),
    priority: z.enum(['interactive', 'batch']),
    ehrVersion: z.string().min(1).max(64).nullable(),
    sourceTimestamp: epochMs.nullable(),
    requestedBy: z.string().min(1).max(255),
    deadlineAt: epochMs.nullable(),
    patientRef: z.string().min(1).max(PATIENT_REF_MAX).nullable().optional(),
  })
  .strict();

const patchSchema = z
  .object({
    state: state.optional(),
    stateReason: z.string().max(1_024).nullable().optional(),
    nextAttemptAt: epochMs.optional(),
    leaseOwner: id.nullable().optional(),
    leaseExpiresAt: epochMs.nullable().optional(),
    ehrId: z.string().min(1).max(64).nullable().optional(),
    ehrVersion: z.string().min(1).max(64).nullable().optional(),
    attempts: z.number().int().min(0).optional(),
    budgetStartedAt: epochMs.optional(),
  })
  .strict();

const attemptSchema = z
  .object({
    commandId: id,
    n: z.number().int().min(1),
    worker: id.nullable(),
    startedAt: epochMs,
    endedAt: epochMs.nullable(),
    outcome: z.enum(['applied', 'not_sent', 'rejected', 'rate_limited', 'unknown', 'found', 'superseded', 'budget_exhausted', 'abandoned', 'error']),
    errorCode: z.string().max(64).nullable(),
    errorCategory: z.string().max(64).nullable(),
    ehrStatus: z.number().int().min(0).max(999).nullable(),
    verification: z.enum(['verified', 'mismatch', 'absent', 'unclear', 'duplicate']).nullable(),
    correlationId: z.string().max(128).nullable(),
    steps: z.string().max(4_096).nullable(),
    patientFailure: z.boolean(),
  })
  .strict();

const patientFailuresSchema = z
  .object({ tenantId: id, patientRef: z.string().min(1).max(PATIENT_REF_MAX), since: epochMs })
  .strict();

const eventSchema = z.object({ kind: z.string().min(1).max(64), actor: z.string().min(1).max(255), reason: z.string().max(4_096).nullable() }).strict();

const filterSchema = z
  .object({
    tenantId: id.optional(),
    states: z.array(state).min(1).optional(),
    businessKey: z.string().min(1).max(512).optional(),
    patientRef: z.string().min(1).max(PATIENT_REF_MAX).optional(),
    limit: z.number().int().min(1).max(MAX_COMMAND_LIST_LIMIT).optional(),
  })
  .strict();

const leaseSchema = z
  .object({
    owner: id,
    now: epochMs,
    leaseMs: z.number().int().min(1).max(24 * 3_600_000),
    limit: z.number().int().min(1).max(MAX_LEASE_BATCH).optional(),
    tenantId: id.optional(),
    unsafeIgnoreKeyLock: z.boolean().optional(),
  })
  .strict();

const submitLeaseSchema = z
  .object({ owner: id, now: epochMs, leaseMs: z.number().int().min(1).max(24 * 3_600_000), unsafeIgnoreKeyLock: z.boolean().optional() })
  .strict();

function parse<S extends z.ZodType>(schema: S, value: unknown, what: string): z.output<S> {
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    // The path and the rule only: the value may be PHI.
    throw new TetherError('COMMAND_INVALID', `Invalid ${what}: '${issue?.path.join('.') ?? ''}' ${issue?.message ?? ''}`.trim());
  }
  return parsed.data;
}

/** The command, validated, with `patientRef` null when not given. */
export const validateNewCommand = (command: NewCommand): NewCommand & { readonly patientRef: string | null } => {
  const c = parse(newCommandSchema, command, 'command');
  return { ...c, patientRef: c.patientRef ?? null };
};
/** Arguments of `patientFailures`; a failure names the field, never the value (a patient reference is PHI-adjacent). */
export const validatePatientFailures = (tenantId: string, patientRef: string, since: number): { tenantId: string; patientRef: string; since: number } =>
  parse(patientFailuresSchema, { tenantId, patientRef, since }, 'patient failures query');
export const validateCommandPatch = (patch: CommandPatch): CommandPatch => parse(patchSchema, patch, 'command patch');
export const validateAttempt = (attempt: CommandAttemptRecord): CommandAttemptRecord => parse(attemptSchema, attempt, 'command attempt');
export const validateEvent = (event: { kind: string; actor: string; reason: string | null }) => parse(eventSchema, event, 'command event');
export const validateCommandId = (commandId: string): string => parse(id, commandId, 'command id');
export const validateActor = (actor: string): string => parse(id, actor, 'actor');

/** Most steps one {@link CommandRepo.transitionSteps} call may apply. */
export const MAX_TRANSITION_STEPS = 8;

/** An event of a multi-step transition with its states; `null` stands for the state before the first step. */
export interface PlannedEvent {
  readonly kind: string;
  readonly actor: string;
  readonly reason: string | null;
  readonly fromState: CommandState | null;
  readonly toState: CommandState | null;
}

/**
 * Validates the steps of a multi-step transition and plans it: the patches merged in order (later fields win)
 * and, for each step with an event, its from/to states. The first step's `from` is the row's current state, which
 * only the store knows: `null` here.
 */
export function planSteps(steps: readonly CommandStep[]): { patch: CommandPatch; events: PlannedEvent[] } {
  if (!Array.isArray(steps) || steps.length === 0 || steps.length > MAX_TRANSITION_STEPS) {
    throw new TetherError('COMMAND_INVALID', `Invalid command steps: between 1 and ${MAX_TRANSITION_STEPS} steps.`);
  }
  let patch: CommandPatch = {};
  let state: CommandState | null = null;
  const events: PlannedEvent[] = [];
  for (const step of steps) {
    const p = validateCommandPatch(step.patch);
    patch = { ...patch, ...p };
    const from = state;
    if (p.state !== undefined) state = p.state;
    if (step.event) {
      const e = validateEvent(step.event);
      events.push({ kind: e.kind, actor: e.actor, reason: e.reason, fromState: from, toState: state });
    }
  }
  return { patch, events };
}

export function validateFilter(filter: CommandFilter): Required<Pick<CommandFilter, 'limit'>> & CommandFilter {
  const f = parse(filterSchema, filter, 'command filter');
  return { ...f, limit: f.limit ?? DEFAULT_COMMAND_LIST_LIMIT };
}

export function validateSubmitLease(lease: SubmitLease | undefined): SubmitLease | undefined {
  return lease === undefined ? undefined : parse(submitLeaseSchema, lease, 'submit lease');
}

/** States after which a command never moves again (no lease, no operator retry). */
export const TERMINAL_STATES = ['verified', 'superseded', 'cancelled'] as const satisfies readonly CommandState[];

/**
 * SQL (both dialects): true when a command of the key `(tenant, business key)` other than the new one is in a
 * non-terminal state. A submit lease is taken only when this is false (see {@link SubmitLease}). `tenant` and
 * `key` are placeholders of the caller's dialect.
 */
export const openSiblingSql = (tenant: string, key: string): string => `EXISTS (
    SELECT 1 FROM commands AS open_sibling
    WHERE open_sibling.tenant_id = ${tenant} AND open_sibling.business_key = ${key}
      AND open_sibling.state NOT IN ${sqlStateList(TERMINAL_STATES)})`;

export function validateLease(request: LeaseRequest): Required<Pick<LeaseRequest, 'limit'>> & LeaseRequest {
  const r = parse(leaseSchema, request, 'lease request');
  return { ...r, limit: r.limit ?? 1 };
}

/** Patchable fields and their columns; the keys are the only identifiers ever spliced into SQL text. */
export const COMMAND_PATCH_COLUMNS = {
  state: 'state',
  stateReason: 'state_reason',
  nextAttemptAt: 'next_attempt_at',
  leaseOwner: 'lease_owner',
  leaseExpiresAt: 'lease_expires_at',
  ehrId: 'ehr_id',
  ehrVersion: 'ehr_version',
  attempts: 'attempts',
  budgetStartedAt: 'budget_started_at',
} as const satisfies Record<keyof Required<CommandPatch>, string>;

/** The patch as (column, value) pairs, in a fixed order. */
export function patchColumns(patch: CommandPatch): { column: string; value: unknown }[] {
  return Object.entries(patch)
    .filter(([, value]) => value !== undefined)
    .map(([key, value]) => ({ column: COMMAND_PATCH_COLUMNS[key as keyof CommandPatch], value }));
}

/** A `commands` row as both drivers return it (PostgreSQL: `bigint` as string, `jsonb` parsed). */
export interface CommandRow {
  id: string;
  tenant_id: string;
  context: string;
  action: string;
  resource_type: string;
  business_key: string;
  idempotency_key: string | null;
  payload_hash: string;
  resource: string | Record<string, unknown>;
  priority: string;
  state: string;
  state_reason: string | null;
  attempts: number;
  attempt_seq: number;
  budget_started_at: number | string;
  next_attempt_at: number | string;
  lease_owner: string | null;
  lease_expires_at: number | string | null;
  ehr_id: string | null;
  ehr_version: string | null;
  source_timestamp: number | string | null;
  generation: number;
  requested_by: string;
  deadline_at: number | string | null;
  patient_ref: string | null;
  created_at: number | string;
  updated_at: number | string;
  version: number;
}

export interface AttemptRow {
  command_id: string;
  n: number;
  worker: string | null;
  started_at: number | string;
  ended_at: number | string | null;
  outcome: string;
  error_code: string | null;
  error_category: string | null;
  ehr_status: number | null;
  verification: string | null;
  correlation_id: string | null;
  steps: string | null;
  /** PostgreSQL: boolean; SQLite: 0/1. */
  patient_failure: boolean | number;
}

export interface EventRow {
  seq: number | string;
  command_id: string;
  at: number | string;
  kind: string;
  actor: string;
  from_state: string | null;
  to_state: string | null;
  reason: string | null;
}

const ms = (value: number | string): number => Number(value);
const msOrNull = (value: number | string | null): number | null => (value === null ? null : Number(value));

export function commandFromRow(row: CommandRow): CommandRecord {
  return {
    id: row.id,
    tenantId: row.tenant_id,
    context: row.context,
    action: row.action as CommandRecord['action'],
    resourceType: row.resource_type,
    businessKey: row.business_key,
    idempotencyKey: row.idempotency_key,
    payloadHash: row.payload_hash,
    resource: typeof row.resource === 'string' ? (JSON.parse(row.resource) as Record<string, unknown>) : row.resource,
    priority: row.priority as CommandRecord['priority'],
    state: row.state as CommandState,
    stateReason: row.state_reason,
    attempts: row.attempts,
    attemptSeq: row.attempt_seq,
    budgetStartedAt: ms(row.budget_started_at),
    nextAttemptAt: ms(row.next_attempt_at),
    leaseOwner: row.lease_owner,
    leaseExpiresAt: msOrNull(row.lease_expires_at),
    ehrId: row.ehr_id,
    ehrVersion: row.ehr_version,
    sourceTimestamp: msOrNull(row.source_timestamp),
    generation: row.generation,
    requestedBy: row.requested_by,
    deadlineAt: msOrNull(row.deadline_at),
    patientRef: row.patient_ref,
    createdAt: ms(row.created_at),
    updatedAt: ms(row.updated_at),
    version: row.version,
  };
}

export function attemptFromRow(row: AttemptRow): CommandAttemptRecord {
  return {
    commandId: row.command_id,
    n: row.n,
    worker: row.worker,
    startedAt: ms(row.started_at),
    endedAt: msOrNull(row.ended_at),
    outcome: row.outcome as CommandAttemptOutcome,
    errorCode: row.error_code,
    errorCategory: row.error_category,
    ehrStatus: row.ehr_status,
    verification: row.verification as CommandVerification | null,
    correlationId: row.correlation_id,
    steps: row.steps,
    patientFailure: row.patient_failure === true || row.patient_failure === 1,
  };
}

export function eventFromRow(row: EventRow): CommandEventRecord {
  return {
    seq: ms(row.seq),
    commandId: row.command_id,
    at: ms(row.at),
    kind: row.kind,
    actor: row.actor,
    fromState: row.from_state as CommandState | null,
    toState: row.to_state as CommandState | null,
    reason: row.reason,
  };
}

/**
 * SQL for "a verified sibling of the row `c` (a table name or alias) is newer than it" (DESIGN §5 step 8: the later source timestamp when both
 * carry a different one, else the higher generation), the same rule as the worker's. Standard SQL, both dialects.
 *
 * The state test is written so that no index can serve it (`+newer.state` on SQLite, `newer.state || ''` on
 * PostgreSQL), which keeps the planners off `commands_tenant_state` (tenant, state): without table statistics both
 * chose that index, and so read every verified command of the tenant on every lease (0.23 ms a lease at 3,000
 * verified commands on SQLite, growing with the table), instead of the few commands of one business key through
 * `commands_business_key`.
 */
export const newerSiblingVerifiedSql = (c: string, dialect: 'sqlite' | 'postgres'): string => `EXISTS (
    SELECT 1 FROM commands AS newer
    WHERE newer.tenant_id = ${c}.tenant_id
      AND newer.business_key = ${c}.business_key
      AND newer.id <> ${c}.id
      AND ${dialect === 'sqlite' ? '+newer.state' : "newer.state || ''"} = 'verified'
      AND (CASE WHEN newer.source_timestamp IS NOT NULL AND ${c}.source_timestamp IS NOT NULL AND newer.source_timestamp <> ${c}.source_timestamp
                THEN newer.source_timestamp > ${c}.source_timestamp
                ELSE newer.generation > ${c}.generation END))`;

/** A leased row: the command plus `newer_sibling_verified` (PostgreSQL: boolean; SQLite: 0/1). */
export function leasedFromRow(row: CommandRow & { newer_sibling_verified: boolean | number }): LeasedCommand {
  return { ...commandFromRow(row), newerSiblingVerified: row.newer_sibling_verified === true || row.newer_sibling_verified === 1 };
}

/** The SQL list `('a', 'b')` of constant state words (from the fixed lists above, never from input). */
export const sqlStateList = (states: readonly CommandState[]): string => `(${states.map((s) => `'${s}'`).join(', ')})`;

/**
 * The answer to a submission whose idempotency key is taken: the original command when the payload is the same
 * (Stripe / IETF Idempotency-Key semantics), `IDEMPOTENCY_KEY_REUSED` (422) otherwise.
 */
export function idempotentReplay(existing: CommandRecord, payloadHash: string): InsertResult {
  if (existing.payloadHash === payloadHash) return { command: existing, created: false };
  throw new TetherError('IDEMPOTENCY_KEY_REUSED', undefined, { details: { commandId: existing.id } });
}
