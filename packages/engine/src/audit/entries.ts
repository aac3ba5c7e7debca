/**
 * What goes into the audit log, as pure functions from the engine's facts to audit entries. This file is where
 * "no PHI in the audit log" is decided: only ids of commands and tenants, resource types, states, reason and status
 * codes, actors (API key, operator key, worker ids) and the kind of a token context ever pass. Never a resource,
 * a patient or practitioner id, a business key, a free-text note, a URL or a token.
 */
import type { AuditEntry, AuditJson } from '@tether/core';
import type { AuthEventMap } from '../auth/index.js';
import type { AuditCommandEvent, CommandState } from '../store/index.js';

/** Actor of records the engine makes on its own (token refreshes, automatic pauses). */
export const SYSTEM_ACTOR = 'system';

/** Actors: `api:<key-id>`, `operator:<key-id>`, `worker:<id>`, `system`. */
export const ACTOR_PATTERN = /^(?:(?:api|operator|worker):[A-Za-z0-9._~@:-]{1,200}|system)$/;

/** A reason code: an error code or a short snake_case word. Anything else (free text) is not copied. */
const REASON_CODE = /^[A-Za-z][A-Za-z0-9_.:-]{0,99}$/;

/** States that mean the intent did not (yet) reach the EHR as asked: their records have outcome `failure`. */
const FAILURE_STATES: ReadonlySet<CommandState> = new Set<CommandState>(['rejected', 'needs_review']);

/** States whose record carries the EHR's acknowledgement (id and version of the object). */
const ACKNOWLEDGED_STATES: ReadonlySet<CommandState> = new Set<CommandState>(['acknowledged', 'verified']);

/**
 * The kind of a token context (`system`, `provider`, `patient`), never its id: a patient id is PHI, and the audit
 * log does not need the practitioner's either (the command id leads to it for those allowed to see it).
 */
export function contextKind(context: string): string {
  const kind = context.split(':', 1)[0] ?? '';
  return kind === 'system' || kind === 'provider' || kind === 'patient' ? kind : 'other';
}

/** A reason code as is; free text (an operator's note, anything unexpected) becomes `null`. */
export function reasonCode(reason: string | null | undefined): string | null {
  return typeof reason === 'string' && REASON_CODE.test(reason) ? reason : null;
}

/** An actor as recorded; anything that is not one of the four forms is recorded as `unknown` (never echoed). */
export function safeActor(actor: string): string {
  return ACTOR_PATTERN.test(actor) ? actor : 'unknown';
}

/** `operator:retry` → `command.operator.retry`; total, so a new event kind can never stop the tailer. */
export function commandAction(kind: string): string {
  const parts = kind
    .toLowerCase()
    .split(/[^a-z0-9_]+/)
    .filter((p) => /^[a-z0-9_]+$/.test(p))
    .slice(0, 4);
  return ['command', ...(parts.length > 0 ? parts : ['event'])].join('.').slice(0, 100).replace(/\.$/, '');
}

export interface CommandEntryOptions {
  /** The version of the canonical→vendor mapping that delivers this tenant's commands. */
  readonly mappingVersion: (event: AuditCommandEvent) => string | null;
}

/**
 * The entry of one command event (submission, transition, operator action). Total: never throws, whatever the
 * event holds, because the tailer must not get stuck on a record.
 */
export function commandEventEntry(event: AuditCommandEvent, options: CommandEntryOptions): AuditEntry {
  const operator = event.kind.startsWith('operator');
  const details: Record<string, AuditJson> = {
    eventSeq: event.seq,
    from: event.fromState,
    to: event.toState,
    resourceType: event.resourceType,
    commandAction: event.commandAction,
    context: contextKind(event.context),
    vendor: event.vendor,
    mappingVersion: safeMappingVersion(options, event),
  };
  // A worker's reason is a code; an operator's is a note in their own words, which may name a patient: only
  // whether there was one is recorded.
  if (operator) details['note'] = event.reason !== null && event.reason.length > 0;
  else details['reason'] = reasonCode(event.reason);
  if (event.kind === 'submitted') details['requestedBy'] = safeActor(event.requestedBy) === 'unknown' ? null : event.requestedBy;
  if (event.toState !== null && ACKNOWLEDGED_STATES.has(event.toState)) {
    details['ehr'] = { id: event.ehrId, version: event.ehrVersion };
  }
  return {
    at: Number.isSafeInteger(event.at) && event.at >= 0 ? event.at : 0,
    actor: safeActor(event.actor),
    action: commandAction(event.kind),
    tenantId: event.tenantId.slice(0, 255) || null,
    subjectType: 'command',
    subjectId: event.commandId.slice(0, 255) || null,
    outcome: event.toState !== null && FAILURE_STATES.has(event.toState) ? 'failure' : 'success',
    details,
  };
}

function safeMappingVersion(options: CommandEntryOptions, event: AuditCommandEvent): string | null {
  try {
    const v = options.mappingVersion(event);
    return typeof v === 'string' ? v.slice(0, 100) : null;
  } catch {
    return null;
  }
}

/** The entry of an auth broker event, or undefined for events the log does not keep. */
export function authEventEntry<K extends keyof AuthEventMap>(name: K, payload: AuthEventMap[K], at: number): AuditEntry | undefined {
  const tenantId = String((payload as { tenantId?: unknown }).tenantId ?? '').slice(0, 255);
  const base = { at, actor: SYSTEM_ACTOR, tenantId: tenantId || null };
  switch (name) {
    case 'token:refreshed': {
      const p = payload as AuthEventMap['token:refreshed'];
      return {
        ...base,
        action: 'token.refreshed',
        subjectType: 'token',
        subjectId: contextKind(p.context),
        outcome: 'success',
        details: { context: contextKind(p.context), reason: p.reason, expiresInSeconds: finite(p.expiresInSeconds), rotated: p.rotated },
      };
    }
    case 'token:refresh-failed': {
      const p = payload as AuthEventMap['token:refresh-failed'];
      return {
        ...base,
        action: 'token.refresh_failed',
        subjectType: 'token',
        subjectId: contextKind(p.context),
        outcome: 'failure',
        details: { context: contextKind(p.context), code: reasonCode(p.code), retryInMs: p.retryInMs === null ? null : finite(p.retryInMs) },
      };
    }
    case 'tenant:paused': {
      const p = payload as AuthEventMap['tenant:paused'];
      // The reason is the engine's sentence with the token endpoint's OAuth error code in brackets; keep the code.
      const oauthError = /\(([a-z_]{1,64})\)$/.exec(p.reason)?.[1] ?? null;
      return { ...base, action: 'tenant.paused', subjectType: 'tenant', subjectId: base.tenantId, outcome: 'success', details: { cause: 'token_endpoint_refused', oauthError } };
    }
    case 'tenant:resumed':
      return { ...base, action: 'tenant.resumed', subjectType: 'tenant', subjectId: base.tenantId, outcome: 'success', details: {} };
    case 'auth:clock-skew': {
      const p = payload as AuthEventMap['auth:clock-skew'];
      return { ...base, action: 'auth.clock_skew', subjectType: 'tenant', subjectId: base.tenantId, outcome: 'success', details: { skewMs: finite(p.skewMs) } };
    }
    default:
      return undefined;
  }
}

const finite = (n: number): number | null => (Number.isFinite(n) && !Object.is(n, -0) ? n : null);
