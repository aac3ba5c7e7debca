/**
 * Audit records as FHIR R4 AuditEvent resources, for export to a SIEM or an EHR's audit repository. Only what the
 * record holds (no PHI) goes out; the chain position and hashes travel in an extension so an exported set can be
 * re-verified.
 */
import type { AuditRecord } from '@tether/core';

/** Identifier systems and the extension of the export. */
export const AUDIT_FHIR = Object.freeze({
  actorSystem: 'https://tether.dev/fhir/sid/actor',
  commandSystem: 'https://tether.dev/fhir/sid/command',
  tenantSystem: 'https://tether.dev/fhir/sid/tenant',
  actionSystem: 'https://tether.dev/fhir/CodeSystem/audit-action',
  chainExtension: 'https://tether.dev/fhir/StructureDefinition/audit-chain',
});

type Coding = { system: string; code: string; display?: string };
type Detail = { type: string; valueString: string };
type Entity = {
  what: { identifier?: { system: string; value: string }; reference?: string };
  type: Coding;
  role?: Coding;
  detail?: Detail[];
};

/** A FHIR R4 AuditEvent (the elements this export fills). */
export interface FhirAuditEvent {
  readonly resourceType: 'AuditEvent';
  readonly id: string;
  readonly extension: readonly { url: string; extension: { url: string; valueString: string }[] }[];
  readonly type: Coding;
  readonly subtype: readonly Coding[];
  readonly action: 'C' | 'R' | 'U' | 'D' | 'E';
  readonly recorded: string;
  readonly outcome: '0' | '4' | '8' | '12';
  readonly outcomeDesc?: string;
  readonly agent: readonly {
    type: { coding: Coding[] };
    who: { identifier: { system: string; value: string } };
    requestor: boolean;
  }[];
  readonly source: { site?: string; observer: { display: string }; type: Coding[] };
  readonly entity: readonly Entity[];
}

const EVENT_TYPE = {
  rest: { system: 'http://terminology.hl7.org/CodeSystem/audit-event-type', code: 'rest', display: 'RESTful Operation' },
  authentication: { system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110114', display: 'User Authentication' },
  application: { system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110100', display: 'Application Activity' },
} as const;

const RESTFUL = 'http://hl7.org/fhir/restful-interaction';
const ENTITY_TYPE = 'http://terminology.hl7.org/CodeSystem/audit-entity-type';
const OBJECT_ROLE = 'http://terminology.hl7.org/CodeSystem/object-role';
const ROLE_TYPE = 'http://terminology.hl7.org/CodeSystem/extra-security-role-type';

const str = (v: unknown): string | undefined => (typeof v === 'string' && v.length > 0 ? v : undefined);

/** C/U/D of a command's clinical action. */
function crud(commandAction: unknown): 'C' | 'U' | 'D' | 'E' {
  switch (commandAction) {
    case 'create':
      return 'C';
    case 'update':
    case 'upsert':
      return 'U';
    case 'delete':
      return 'D';
    default:
      return 'E';
  }
}

/**
 * One record as an AuditEvent:
 * - `type`: `rest` for commands, DCM 110114 (User Authentication) for token and auth events, DCM 110100
 *   (Application Activity) otherwise; `subtype`: Tether's action code, and for commands the FHIR interaction.
 * - `action`: C/U/D for a submission (from the command's create/update/upsert/delete), E for everything else (a
 *   transition, an operator action, a token refresh: executing something).
 * - `outcome`: 0 for success, 4 (minor failure) for failure.
 * - `agent`: the actor; `requestor` is true for API and operator keys (someone asked), false for workers and the
 *   engine itself.
 * - `entity`: the command, the tenant and, once acknowledged, the EHR's resource (`type/id`); details as strings.
 */
export function toAuditEvent(record: AuditRecord): FhirAuditEvent {
  const d = record.details;
  const family = record.action.split('.', 1)[0];
  const isCommand = family === 'command';
  const type = isCommand ? EVENT_TYPE.rest : family === 'token' || family === 'auth' ? EVENT_TYPE.authentication : EVENT_TYPE.application;
  const subtype: Coding[] = [{ system: AUDIT_FHIR.actionSystem, code: record.action }];
  const commandAction = str(d['commandAction']);
  if (isCommand && commandAction) subtype.push({ system: RESTFUL, code: commandAction === 'upsert' ? 'update' : commandAction });

  const actorKind = record.actor.split(':', 1)[0];
  const human = actorKind === 'api' || actorKind === 'operator';
  const entity: Entity[] = [];
  if (record.subjectId !== null) {
    const subjectSystem = record.subjectType === 'command' ? AUDIT_FHIR.commandSystem : record.subjectType === 'tenant' ? AUDIT_FHIR.tenantSystem : `https://tether.dev/fhir/sid/${record.subjectType ?? 'subject'}`;
    entity.push({
      what: { identifier: { system: subjectSystem, value: record.subjectId } },
      type: { system: ENTITY_TYPE, code: '2', display: 'System Object' },
      role: { system: OBJECT_ROLE, code: '4', display: 'Domain Resource' },
      detail: detailsOf(d),
    });
  }
  if (record.tenantId !== null && !(record.subjectType === 'tenant' && record.subjectId === record.tenantId)) {
    entity.push({
      what: { identifier: { system: AUDIT_FHIR.tenantSystem, value: record.tenantId } },
      type: { system: ENTITY_TYPE, code: '2', display: 'System Object' },
    });
  }
  const ehr = d['ehr'];
  const ehrId = ehr !== null && typeof ehr === 'object' && !Array.isArray(ehr) ? str((ehr as Record<string, unknown>)['id']) : undefined;
  const resourceType = str(d['resourceType']);
  if (ehrId && resourceType) {
    const version = str((ehr as Record<string, unknown>)['version']);
    entity.push({
      what: { reference: `${resourceType}/${ehrId}${version ? `/_history/${version}` : ''}` },
      type: { system: ENTITY_TYPE, code: '2', display: 'System Object' },
      role: { system: OBJECT_ROLE, code: '4', display: 'Domain Resource' },
    });
  }

  const from = str(d['from']);
  const to = str(d['to']);
  const reason = str(d['reason']) ?? str(d['code']);
  const outcomeDesc = [to ? `${from ?? '∅'} → ${to}` : undefined, reason].filter((x) => x !== undefined).join(' ');

  return {
    resourceType: 'AuditEvent',
    id: `tether-audit-${record.seq}`,
    extension: [
      {
        url: AUDIT_FHIR.chainExtension,
        extension: [
          { url: 'seq', valueString: String(record.seq) },
          { url: 'prevHash', valueString: record.prevHash },
          { url: 'hash', valueString: record.hash },
        ],
      },
    ],
    type,
    subtype,
    action: record.action === 'command.submitted' ? crud(commandAction) : 'E',
    recorded: new Date(record.at).toISOString(),
    outcome: record.outcome === 'failure' ? '4' : '0',
    ...(outcomeDesc ? { outcomeDesc } : {}),
    agent: [
      {
        type: { coding: [{ system: ROLE_TYPE, code: human ? 'humanuser' : 'dataprocessor', display: human ? 'human user' : 'data processor' }] },
        who: { identifier: { system: AUDIT_FHIR.actorSystem, value: record.actor } },
        requestor: human,
      },
    ],
    source: {
      ...(record.tenantId !== null ? { site: record.tenantId } : {}),
      observer: { display: 'Tether engine' },
      type: [{ system: 'http://terminology.hl7.org/CodeSystem/security-source-type', code: '4', display: 'Application Server' }],
    },
    entity,
  };
}

/** Scalar details as AuditEvent.entity.detail (type = key, valueString); nested values as their JSON. */
function detailsOf(details: AuditRecord['details']): Detail[] {
  return Object.keys(details)
    .sort()
    .filter((k) => details[k] !== null)
    .map((k) => {
      const v = details[k];
      return { type: k, valueString: typeof v === 'string' ? v : JSON.stringify(v) };
    });
}
