/**
 * Commands: the input schema, the business-key stamp, the payload hash and `submitCommand`, which validates a
 * command and stores it durably (DESIGN §5). "Saved" means `queued`: `submitCommand` resolves only after the
 * insert committed.
 */
import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import { scopesAllow, stableHash, TetherError, type ScopedInteraction, type SmartContext } from '@tether/core';
import type { CommandAction, CommandRecord, CommandState, InsertResult, LeasedCommand, Store, SubmitLease, TenantRecord } from '../store/index.js';

/**
 * Tether's identifier system for business keys. Every resource Tether writes carries
 * `{ system: BUSINESS_KEY_SYSTEM, value: businessKey }`, so the EHR can be searched for it
 * (`identifier=urn:tether:business-key|<key>`): that search is what reconcile-before-write and verification use.
 */
export const BUSINESS_KEY_SYSTEM = 'urn:tether:business-key';

/**
 * Business keys go verbatim into a FHIR token search (`system|value`), so the characters FHIR search escapes
 * (`|`, `,`, `$`, `\`) and whitespace are refused rather than escaped: a key must mean the same thing everywhere.
 */
const BUSINESS_KEY = /^[\x21-\x7e]{1,256}$/;
const BUSINESS_KEY_FORBIDDEN = /[|,$\\]/;
const CONTEXT = /^(system|provider:[A-Za-z0-9._-]{1,128}|patient:[A-Za-z0-9._-]{1,128})$/;
const RESOURCE_TYPE = /^[A-Z][A-Za-z]{0,63}$/;
const VERSION_ID = /^[A-Za-z0-9.-]{1,64}$/;

/** What a submitter sends (DESIGN §5 command shape). */
export const commandInputSchema = z
  .object({
    tenantId: z.string().min(1).max(255),
    /** Token identity: `system`, `provider:<id>` or `patient:<id>`. */
    context: z.string().regex(CONTEXT, 'system, provider:<id> or patient:<id>'),
    action: z.enum(['create', 'update', 'upsert', 'delete']),
    resourceType: z.string().regex(RESOURCE_TYPE, 'a FHIR resource type name'),
    /** Canonical FHIR R4 resource. Its `resourceType` must equal `resourceType`. */
    resource: z.record(z.string(), z.unknown()),
    /** Deterministic identity of the clinical object (printable ASCII without `| , $ \`, at most 256). */
    businessKey: z
      .string()
      .regex(BUSINESS_KEY, 'printable ASCII, 1-256 characters')
      .refine((key) => !BUSINESS_KEY_FORBIDDEN.test(key), 'must not contain | , $ or \\'),
    /** Ingress idempotency key (IETF Idempotency-Key draft), unique per tenant. */
    idempotencyKey: z.string().min(1).max(255).optional(),
    /** `interactive` (default) is leased ahead of `batch`. */
    priority: z.enum(['interactive', 'batch']).default('interactive'),
    /** Epoch ms after which the command goes to the exception queue instead of being sent. */
    deadline: z.number().int().min(0).optional(),
    /** Who asked (user, API key or channel id; no PHI). */
    requestedBy: z.string().min(1).max(255),
    /** Epoch ms of the source event, for ordering (a verified newer sibling supersedes an older command). */
    sourceTimestamp: z.number().int().min(0).optional(),
    /** `update`/`upsert`: the EHR version the change is based on, sent as If-Match. Omitted: the current one. */
    baseVersion: z.string().regex(VERSION_ID, 'a FHIR version id').optional(),
  })
  .strict();

export type CommandInput = z.input<typeof commandInputSchema>;

/** The answer of {@link submitCommand}. */
export interface SubmitResult {
  readonly id: string;
  /**
   * `queued` for a new command, or `in_flight` when a worker of this process took it at submission
   * ({@link SubmitOptions.dispatch}); the current state of the original for an idempotent replay.
   */
  readonly state: CommandState;
  /** False when an earlier command with the same idempotency key and payload was returned. */
  readonly created: boolean;
  readonly generation: number;
}

/** Seams of {@link submitCommand}. */
export interface SubmitOptions {
  /** Command id source. Default: `randomUUID`. */
  readonly newId?: () => string;
  /**
   * A worker of this process to hand the new command to (a {@link WritebackWorker} is one): when it has a free
   * slot, the command is stored already leased to it, in the insert's transaction, and its first attempt starts at
   * once, with no lease query and no wait for the next poll. Without a free slot (or when another command of the
   * business key is still open) the command is stored `queued` as usual. docs/writeback.md "Hand-off at submission".
   */
  readonly dispatch?: SubmitDispatch;
}

/** Takes commands at submission (implemented by {@link WritebackWorker}). */
export interface SubmitDispatch {
  /** Reserves a slot for a command of `tenantId` about to be inserted, or answers undefined (no free slot). */
  claim(tenantId: string): SubmitLease | undefined;
  /**
   * Ends a reservation of {@link claim}: with the leased command (the insert took the lease: start its attempt),
   * or undefined (not taken, or the insert failed: the slot is free again). Called exactly once per claim.
   */
  adopt(leased: LeasedCommand | undefined): void;
}

/** The FHIR interactions the protocol makes for an action: the write itself, the business-key search and the read-back. */
export const INTERACTIONS_BY_ACTION: Readonly<Record<CommandAction, readonly ScopedInteraction[]>> = {
  create: ['create', 'search-type', 'read'],
  update: ['update', 'search-type', 'read'],
  upsert: ['create', 'update', 'search-type', 'read'],
  delete: ['delete', 'search-type', 'read'],
};

/** SMART context of a command context: backend services are `system`, a provider acts as `user`. */
export function smartContextOf(context: string): SmartContext {
  if (context.startsWith('provider:')) return 'user';
  if (context.startsWith('patient:')) return 'patient';
  return 'system';
}

/**
 * Returns a copy of `resource` whose `identifier` list holds exactly one business-key identifier with `businessKey`;
 * other identifiers are kept, in order. Throws `COMMAND_INVALID` when `identifier` is not a list or already names
 * another business key (two keys for one object would make every search ambiguous).
 */
export function stampBusinessKey(resource: Readonly<Record<string, unknown>>, businessKey: string): Record<string, unknown> {
  const existing = resource['identifier'];
  if (existing !== undefined && !Array.isArray(existing)) throw new TetherError('COMMAND_INVALID', "Invalid command: 'resource.identifier' must be a list.");
  const identifiers = (existing ?? []) as unknown[];
  const ours = identifiers.filter((i) => typeof i === 'object' && i !== null && (i as Record<string, unknown>)['system'] === BUSINESS_KEY_SYSTEM);
  if (ours.some((i) => (i as Record<string, unknown>)['value'] !== businessKey)) {
    throw new TetherError('COMMAND_INVALID', `Invalid command: 'resource.identifier' carries a ${BUSINESS_KEY_SYSTEM} value other than the business key.`);
  }
  const others = identifiers.filter((i) => !ours.includes(i));
  return { ...resource, identifier: [...others, { system: BUSINESS_KEY_SYSTEM, value: businessKey }] };
}

/** A FHIR id (R4: 1-64 of `A-Z a-z 0-9 - .`). */
const FHIR_ID = /^[A-Za-z0-9.-]{1,64}$/;
/** `Patient/<id>`, relative or at the end of an absolute URL, optionally with `/_history/<version>`. */
const PATIENT_REFERENCE = /^(?:[a-z][a-z0-9+.-]*:\/\/[^\s]*\/)?Patient\/([A-Za-z0-9.-]{1,64})(?:\/_history\/[A-Za-z0-9.-]{1,64})?$/;

function patientOfReference(value: unknown): string | null {
  if (typeof value !== 'object' || value === null) return null;
  const reference = (value as Record<string, unknown>)['reference'];
  if (typeof reference !== 'string') return null;
  const match = PATIENT_REFERENCE.exec(reference);
  return match?.[1] ? `Patient/${match[1]}` : null;
}

/**
 * The patient a resource belongs to, as `Patient/<id>`: the key of the per-patient failure budget (poison
 * protection, docs/writeback.md#budgets). A Patient is its own (`Patient/<id>` when it has an id); otherwise
 * `subject.reference` when it names a Patient, else `patient.reference` (AllergyIntolerance, Immunization...).
 * Absolute references and version suffixes are reduced to `Patient/<id>`, so every command of one patient shares
 * one key. Null when the resource names no patient (a Group subject, a contained or logical reference, none).
 * PHI-adjacent: never log the result.
 */
export function patientRefOf(resource: Readonly<Record<string, unknown>>): string | null {
  if (resource['resourceType'] === 'Patient') {
    const id = resource['id'];
    return typeof id === 'string' && FHIR_ID.test(id) ? `Patient/${id}` : null;
  }
  return patientOfReference(resource['subject']) ?? patientOfReference(resource['patient']);
}

/** The search parameters that find a command's object in the EHR. */
export const businessKeySearch = (businessKey: string): { identifier: string } => ({ identifier: `${BUSINESS_KEY_SYSTEM}|${businessKey}` });

/** True when a resource from the EHR carries the business-key identifier. */
export function carriesBusinessKey(resource: Readonly<Record<string, unknown>>, businessKey: string): boolean {
  const identifiers = resource['identifier'];
  return (
    Array.isArray(identifiers) &&
    identifiers.some((i) => typeof i === 'object' && i !== null && (i as Record<string, unknown>)['system'] === BUSINESS_KEY_SYSTEM && (i as Record<string, unknown>)['value'] === businessKey)
  );
}

/**
 * Hash of the fields we sent, as found in `stored`: the top-level elements of `sent` (minus the server-set `id`
 * and `meta`), taken from `stored`. Equal to {@link sentContentHash} of `sent` when the EHR kept what we sent;
 * elements the EHR added (narrative, extensions of its own) are ignored.
 */
export function storedContentHash(sent: Readonly<Record<string, unknown>>, stored: Readonly<Record<string, unknown>>): string {
  const picked: Record<string, unknown> = {};
  for (const key of Object.keys(sent)) if (key !== 'id' && key !== 'meta') picked[key] = stored[key];
  return stableHash(picked);
}

/** Hash of the fields we send, without `id` and `meta`. */
export function sentContentHash(sent: Readonly<Record<string, unknown>>): string {
  const { id: _id, meta: _meta, ...rest } = sent;
  return stableHash(rest);
}

/** True when the EHR's copy holds the business key and every field we sent, unchanged. */
export const contentMatches = (sent: Readonly<Record<string, unknown>>, stored: Readonly<Record<string, unknown>>, businessKey: string): boolean =>
  carriesBusinessKey(stored, businessKey) && storedContentHash(sent, stored) === sentContentHash(sent);

function invalid(issue: z.core.$ZodIssue | undefined): TetherError {
  // Path and rule only: a resource or a business key may be PHI.
  return new TetherError('COMMAND_INVALID', `Invalid command: '${issue?.path.join('.') ?? ''}' ${issue?.message ?? ''}`.trim());
}

/**
 * Validates a command and stores it durably in state `queued` (or `in_flight`, leased to `options.dispatch` when
 * that worker has a free slot and no other command of the business key is open).
 *
 * Checks: the schema; `resource.resourceType` equals `resourceType`; the tenant exists (`TENANT_NOT_FOUND`) and is
 * active (`AUTH_TENANT_PAUSED`); the tenant's configured scopes cover every interaction the protocol will make
 * (`EHR_SCOPE_MISSING`, naming the scope). The tenant checks use the copy this process read last, and the insert
 * accepts the command only if the tenant is still active at that copy's version (in the insert's own statement):
 * one store round trip per submission, and a tenant paused or re-scoped by any process is never missed. Then
 * stamps the business-key identifier, computes the payload hash (`stableHash` of the validated input without the
 * idempotency key) and inserts, atomically with the idempotency check: same key and payload → the original
 * (`created: false`); same key, other payload → `IDEMPOTENCY_KEY_REUSED`.
 *
 * Resolves only after the insert committed: a `queued` or `in_flight` answer is a durable promise.
 */
export async function submitCommand(store: Store, input: CommandInput, options: SubmitOptions = {}): Promise<SubmitResult> {
  const parsed = commandInputSchema.safeParse(input);
  if (!parsed.success) throw invalid(parsed.error.issues[0]);
  const command = parsed.data;
  if (command.resource['resourceType'] !== command.resourceType) {
    throw new TetherError('COMMAND_INVALID', "Invalid command: 'resource.resourceType' must equal 'resourceType'.");
  }

  // The tenant as last read by this process (no read per submission). The insert below accepts the command only if
  // the tenant is still active at that version, so a stale copy is never acted on. A remembered copy that refuses
  // the command is read again before refusing (the tenant may have been resumed or re-scoped since).
  let tenant = knownTenant(store, command.tenantId);
  if (tenant === undefined || tenantRefusal(tenant, command) !== undefined) {
    tenant = await readTenant(store, command.tenantId);
    assertTenantAllows(tenant, command);
  }
  const resource = stampBusinessKey(command.resource, command.businessKey);
  const { idempotencyKey, ...payload } = command;
  const row = {
    id: (options.newId ?? randomUUID)(),
    tenantId: command.tenantId,
    context: command.context,
    action: command.action,
    resourceType: command.resourceType,
    businessKey: command.businessKey,
    idempotencyKey: idempotencyKey ?? null,
    payloadHash: stableHash(payload),
    resource,
    priority: command.priority,
    ehrVersion: command.baseVersion ?? null,
    sourceTimestamp: command.sourceTimestamp ?? null,
    requestedBy: command.requestedBy,
    deadlineAt: command.deadline ?? null,
    patientRef: patientRefOf(resource),
  };
  const { dispatch } = options;
  const lease = dispatch?.claim(command.tenantId);
  let inserted: InsertResult;
  try {
    for (let attempt = 1; ; attempt++) {
      const outcome = await store.commands.insert(row, `api:${command.requestedBy}`, lease, { version: tenant.version });
      if (!('tenantChanged' in outcome)) {
        inserted = outcome;
        break;
      }
      // Paused, re-scoped or removed since this process last read it: read, validate and try again. A tenant that
      // keeps changing faster than a submission can complete is answered as unavailable (retryable).
      if (attempt >= TENANT_CHANGE_ATTEMPTS) throw new TetherError('SERVICE_UNAVAILABLE', 'The tenant kept changing during the submission; try again.');
      tenant = await readTenant(store, command.tenantId);
      assertTenantAllows(tenant, command);
    }
  } catch (err) {
    if (lease) dispatch?.adopt(undefined);
    throw err;
  }
  if (lease) dispatch?.adopt(inserted.leased);
  const { command: stored, created } = inserted;
  return { id: stored.id, state: stored.state, created, generation: stored.generation };
}

/** Inserts tried by {@link submitCommand} against a tenant that changed under it before giving up. */
const TENANT_CHANGE_ATTEMPTS = 4;

/**
 * Tenants as last read by {@link submitCommand}, per store: only a starting point, never trusted on its own (every
 * insert checks the version in the store). Tenants are few (one per health system), so the map stays small.
 */
const tenantsSeen = new WeakMap<Store, Map<string, TenantRecord>>();

const knownTenant = (store: Store, id: string): TenantRecord | undefined => tenantsSeen.get(store)?.get(id);

/** Reads the tenant (TENANT_NOT_FOUND when there is none) and remembers it for the next submissions. */
async function readTenant(store: Store, id: string): Promise<TenantRecord> {
  let seen = tenantsSeen.get(store);
  if (!seen) tenantsSeen.set(store, (seen = new Map()));
  const tenant = await store.tenants.get(id);
  if (!tenant) {
    seen.delete(id);
    throw new TetherError('TENANT_NOT_FOUND');
  }
  seen.set(id, tenant);
  return tenant;
}

type TenantNeeds = { readonly action: CommandAction; readonly resourceType: string; readonly context: string };

/**
 * Why the tenant cannot take the command, or undefined: it must be active, and its configured scopes must cover
 * every interaction the protocol will make for the command.
 */
function tenantRefusal(tenant: TenantRecord, command: TenantNeeds): TetherError | undefined {
  if (tenant.state !== 'active') return new TetherError('AUTH_TENANT_PAUSED', undefined, { details: { tenant: tenant.id } });
  const context = smartContextOf(command.context);
  for (const interaction of INTERACTIONS_BY_ACTION[command.action]) {
    const decision = scopesAllow(tenant.scopes, { resourceType: command.resourceType, interaction, context });
    if (!decision.allowed) {
      return new TetherError('EHR_SCOPE_MISSING', `The tenant lacks the scope ${decision.required} that this command needs.`, {
        details: { required: decision.required, tenant: tenant.id },
      });
    }
  }
  return undefined;
}

function assertTenantAllows(tenant: TenantRecord, command: TenantNeeds): void {
  const refusal = tenantRefusal(tenant, command);
  if (refusal) throw refusal;
}

/** The parts of a command a log line or event may carry: ids and states, never the resource or the business key. */
export function commandFacts(command: CommandRecord): { commandId: string; tenantId: string; resourceType: string; action: CommandAction; state: CommandState } {
  return { commandId: command.id, tenantId: command.tenantId, resourceType: command.resourceType, action: command.action, state: command.state };
}
