/**
 * `tether tenants doctor`: checks a tenant end to end — SMART discovery, a token, the granted scopes, the
 * CapabilityStatement — and says, per resource type and write action, what will work, what works with reduced
 * guarantees, and what will not, and why. Runs inside the service (it holds the credentials); the CLI calls it
 * through `POST /v1/tenants/:id/doctor`.
 */
import { isTetherError, scopesAllow, type ScopedInteraction } from '@tether/core';
import { discoverSmartEndpoints, type TokenBroker } from '../auth/index.js';
import type { EhrClient } from '../client/index.js';
import type { CommandAction, Store } from '../store/index.js';
import { INTERACTIONS_BY_ACTION } from '../writeback/index.js';

export interface DoctorCheck {
  readonly name: 'tenant' | 'discovery' | 'token' | 'scopes' | 'capabilities';
  readonly ok: boolean;
  /** One line, no secrets, no PHI. */
  readonly detail: string;
}

export interface WorkflowVerdict {
  readonly resourceType: string;
  readonly action: Exclude<CommandAction, 'upsert'>;
  /** `works`: the full protocol; `degraded`: works with weaker guarantees; `blocked`: will be refused. */
  readonly status: 'works' | 'degraded' | 'blocked';
  readonly reasons: readonly string[];
}

export interface DoctorReport {
  readonly tenant: string;
  readonly checkedAt: string;
  readonly ok: boolean;
  readonly checks: readonly DoctorCheck[];
  readonly workflows: readonly WorkflowVerdict[];
}

interface CapabilityResource {
  type?: string;
  interaction?: { code?: string }[];
  conditionalCreate?: boolean;
  versioning?: string;
  searchParam?: { name?: string }[];
}

/** Resource types always assessed (the common write-back targets), besides those the server says it writes. */
const COMMON_TYPES = ['Observation', 'Condition', 'DocumentReference', 'AllergyIntolerance', 'MedicationStatement', 'Procedure'];
const ACTIONS = ['create', 'update', 'delete'] as const;

const errorText = (err: unknown): string => (isTetherError(err) ? err.code : 'INTERNAL');

export async function runDoctor(deps: { store: Store; broker: TokenBroker; client: EhrClient }, tenantId: string): Promise<DoctorReport> {
  const checks: DoctorCheck[] = [];
  const report = (workflows: WorkflowVerdict[] = []): DoctorReport => ({
    tenant: tenantId,
    checkedAt: new Date().toISOString(),
    ok: checks.every((c) => c.ok) && workflows.every((w) => w.status !== 'blocked'),
    checks,
    workflows,
  });

  const tenant = await deps.store.tenants.get(tenantId);
  if (!tenant) {
    checks.push({ name: 'tenant', ok: false, detail: 'no tenant has that id' });
    return report();
  }
  checks.push({
    name: 'tenant',
    ok: tenant.state === 'active',
    detail: tenant.state === 'active' ? `active, vendor ${tenant.vendor}, ${tenant.environment}` : `${tenant.state} (${tenant.stateReason ?? 'no reason recorded'}): resume it after fixing the credentials`,
  });

  try {
    const found = await discoverSmartEndpoints(tenant.fhirBaseUrl);
    checks.push({ name: 'discovery', ok: true, detail: `token endpoint ${found.tokenEndpoint}${found.capabilities.length > 0 ? `; capabilities: ${found.capabilities.join(' ')}` : ''}` });
  } catch (err) {
    checks.push({ name: 'discovery', ok: tenant.tokenEndpoint !== null, detail: `SMART discovery failed (${errorText(err)})${tenant.tokenEndpoint ? '; the configured token endpoint is used instead' : ''}` });
  }

  let granted: string | undefined;
  if (tenant.state === 'active') {
    try {
      await deps.broker.getAccessToken(tenant.id, 'system');
      granted = (await deps.store.tokens.get(tenant.id, 'system'))?.scope ?? undefined;
      checks.push({ name: 'token', ok: true, detail: 'a system token was obtained' });
    } catch (err) {
      checks.push({ name: 'token', ok: false, detail: `no token (${errorText(err)})` });
    }
  } else {
    checks.push({ name: 'token', ok: false, detail: 'not tried: the tenant is not active' });
  }
  const requested = new Set(tenant.scopes.split(/\s+/).filter(Boolean));
  const grantedSet = new Set((granted ?? '').split(/\s+/).filter(Boolean));
  const missing = granted === undefined ? [] : [...requested].filter((s) => !grantedSet.has(s));
  checks.push({
    name: 'scopes',
    ok: granted !== undefined,
    detail: granted === undefined ? `unknown (no token); requested: ${tenant.scopes}` : `granted: ${granted}${missing.length > 0 ? `; requested but not granted: ${missing.join(' ')}` : ''}`,
  });

  let resources: CapabilityResource[] = [];
  try {
    const res = await deps.client.request({ tenantId: tenant.id, baseUrl: tenant.fhirBaseUrl }, 'system', { method: 'GET', path: 'metadata' });
    const body = res.body as { fhirVersion?: string; rest?: { mode?: string; resource?: CapabilityResource[] }[] };
    resources = (body.rest ?? []).filter((r) => r.mode === undefined || r.mode === 'server').flatMap((r) => r.resource ?? []);
    checks.push({ name: 'capabilities', ok: true, detail: `FHIR ${body.fhirVersion ?? '?'}, ${resources.length} resource types` });
  } catch (err) {
    checks.push({ name: 'capabilities', ok: false, detail: `the CapabilityStatement could not be read (${errorText(err)})` });
  }

  const byType = new Map(resources.filter((r) => typeof r.type === 'string').map((r) => [r.type as string, r]));
  const writable = resources.filter((r) => (r.interaction ?? []).some((i) => i.code === 'create' || i.code === 'update')).map((r) => r.type as string);
  const types = [...new Set([...COMMON_TYPES, ...writable])].sort();
  const workflows: WorkflowVerdict[] = [];
  for (const resourceType of types) {
    const cap = byType.get(resourceType);
    const interactions = new Set((cap?.interaction ?? []).map((i) => i.code));
    const searchable = (cap?.searchParam ?? []).some((p) => p.name === 'identifier');
    for (const action of ACTIONS) {
      const blocked: string[] = [];
      const degraded: string[] = [];
      for (const interaction of INTERACTIONS_BY_ACTION[action] as readonly ScopedInteraction[]) {
        // The tenant's requested scopes decide what Tether accepts; the granted ones what the EHR allows.
        const wanted = scopesAllow(tenant.scopes, { resourceType, interaction, context: 'system' });
        if (!wanted.allowed) blocked.push(`scope ${wanted.required} is not requested by the tenant`);
        else if (granted !== undefined) {
          const got = scopesAllow(granted, { resourceType, interaction, context: 'system' });
          if (!got.allowed) blocked.push(`scope ${got.required} was not granted by the EHR`);
        }
      }
      if (resources.length > 0) {
        if (!cap) blocked.push('the server does not list this resource type');
        else {
          const write = action === 'create' ? 'create' : action === 'update' ? 'update' : 'delete';
          if (!interactions.has(write)) blocked.push(`the server does not support ${write}`);
          if (!interactions.has('search-type') || !searchable) degraded.push('no search by identifier: unknown outcomes cannot be verified by business key and go to the exception queue');
          if (!interactions.has('read')) degraded.push('no read: verification relies on search only');
          if (action === 'create' && !cap.conditionalCreate) degraded.push('no conditional create (If-None-Exist): Tether searches before each retry instead, leaving a small race window');
          if (action === 'update' && cap.versioning !== 'versioned-update') degraded.push('no versioned update (If-Match): concurrent edits in the EHR cannot be detected');
        }
      }
      const status = blocked.length > 0 ? 'blocked' : degraded.length > 0 ? 'degraded' : 'works';
      workflows.push({ resourceType, action, status, reasons: [...new Set([...blocked, ...degraded])] });
    }
  }
  return report(workflows);
}
