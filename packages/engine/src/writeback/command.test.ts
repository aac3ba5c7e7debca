import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stableHash } from '@tether/core';
import { SqliteStore } from '../store/index.js';
import { BUSINESS_KEY_SYSTEM, contentMatches, patientRefOf, stampBusinessKey, submitCommand, type CommandInput } from './command.js';

const store = new SqliteStore({ kind: 'sqlite', path: ':memory:' });

beforeAll(async () => {
  await store.migrate();
  const tenant = (id: string, scopes: string, state?: 'auth_paused') =>
    store.tenants.create({
      id,
      vendor: 'generic',
      fhirBaseUrl: 'https://ehr.example.test/fhir',
      environment: 'sandbox',
      authMethod: 'backend-services',
      clientId: 'c',
      scopes,
      tokenEndpoint: null,
      dataKeyWrapped: Buffer.alloc(0),
      credentialsCiphertext: null,
      ...(state ? { state } : {}),
    });
  await tenant('clinic', 'system/Observation.cruds');
  await tenant('readonly', 'system/Observation.rs');
  await tenant('paused', 'system/Observation.cruds', 'auth_paused');
});
afterAll(() => store.close());

const input = (overrides: Partial<CommandInput> = {}): CommandInput => ({
  tenantId: 'clinic',
  context: 'system',
  action: 'create',
  resourceType: 'Observation',
  resource: { resourceType: 'Observation', status: 'final', identifier: [{ system: 'urn:mrn', value: 'MRN-CANARY-123' }] },
  businessKey: 'lab:1',
  requestedBy: 'api-key-1',
  ...overrides,
});

describe('stampBusinessKey', () => {
  it('adds Tether’s identifier and keeps the others, without duplicating it', () => {
    const stamped = stampBusinessKey({ resourceType: 'Observation', identifier: [{ system: 'urn:a', value: '1' }] }, 'k-1');
    expect(stamped['identifier']).toEqual([{ system: 'urn:a', value: '1' }, { system: BUSINESS_KEY_SYSTEM, value: 'k-1' }]);
    expect(stampBusinessKey(stamped, 'k-1')['identifier']).toEqual(stamped['identifier']);
    expect(stampBusinessKey({ resourceType: 'Observation' }, 'k')['identifier']).toEqual([{ system: BUSINESS_KEY_SYSTEM, value: 'k' }]);
  });

  it('refuses a second business key and a non-list identifier', () => {
    expect(() => stampBusinessKey({ identifier: [{ system: BUSINESS_KEY_SYSTEM, value: 'other' }] }, 'k')).toThrow(expect.objectContaining({ code: 'COMMAND_INVALID' }));
    expect(() => stampBusinessKey({ identifier: { system: 'x' } }, 'k')).toThrow(expect.objectContaining({ code: 'COMMAND_INVALID' }));
  });
});

describe('patientRefOf', () => {
  it('takes the Patient subject, else the patient element, else the Patient itself', () => {
    expect(patientRefOf({ resourceType: 'Observation', subject: { reference: 'Patient/p-1' } })).toBe('Patient/p-1');
    expect(patientRefOf({ resourceType: 'AllergyIntolerance', patient: { reference: 'Patient/p-2' } })).toBe('Patient/p-2');
    expect(patientRefOf({ resourceType: 'Observation', subject: { reference: 'Group/g-1' }, patient: { reference: 'Patient/p-3' } })).toBe('Patient/p-3');
    expect(patientRefOf({ resourceType: 'Patient', id: 'p-4' })).toBe('Patient/p-4');
  });

  it('reduces absolute and versioned references to Patient/<id>, so one patient has one key', () => {
    expect(patientRefOf({ resourceType: 'Observation', subject: { reference: 'https://ehr.example.test/fhir/R4/Patient/p-1' } })).toBe('Patient/p-1');
    expect(patientRefOf({ resourceType: 'Observation', subject: { reference: 'Patient/p-1/_history/7' } })).toBe('Patient/p-1');
  });

  it('is null when the resource names no patient', () => {
    expect(patientRefOf({ resourceType: 'Patient' })).toBeNull();
    expect(patientRefOf({ resourceType: 'Patient', id: 'not an id!' })).toBeNull();
    expect(patientRefOf({ resourceType: 'Observation', subject: { reference: 'Group/g-1' } })).toBeNull();
    expect(patientRefOf({ resourceType: 'Observation', subject: { reference: '#contained-1' } })).toBeNull();
    expect(patientRefOf({ resourceType: 'Observation', subject: { identifier: { value: 'MRN-1' } } })).toBeNull();
    expect(patientRefOf({ resourceType: 'Observation', subject: 'Patient/p-1' })).toBeNull();
    expect(patientRefOf({ resourceType: 'Observation', subject: { reference: 'Practitioner/Patient/p-1' } })).toBeNull();
    expect(patientRefOf({ resourceType: 'Organization' })).toBeNull();
  });
});

describe('contentMatches', () => {
  const sent = stampBusinessKey({ resourceType: 'Observation', status: 'final', valueQuantity: { value: 1 } }, 'k');
  it('ignores server-set id and meta and elements we did not send', () => {
    expect(contentMatches(sent, { ...sent, id: 'x', meta: { versionId: '3' }, text: { div: '<div/>' } }, 'k')).toBe(true);
  });
  it('sees a changed or missing field, and a missing business key', () => {
    expect(contentMatches(sent, { ...sent, status: 'amended' }, 'k')).toBe(false);
    const { status: _s, ...without } = sent;
    expect(contentMatches(sent, without, 'k')).toBe(false);
    expect(contentMatches(sent, sent, 'other')).toBe(false);
  });
});

describe('submitCommand', () => {
  it('stores a queued command with the stamped resource and the payload hash', async () => {
    const result = await submitCommand(store, input(), { newId: () => 'cmd-fixed-1' });
    expect(result).toEqual({ id: 'cmd-fixed-1', state: 'queued', created: true, generation: 1 });
    const stored = await store.commands.get('cmd-fixed-1');
    expect(stored?.resource['identifier']).toEqual([{ system: 'urn:mrn', value: 'MRN-CANARY-123' }, { system: BUSINESS_KEY_SYSTEM, value: 'lab:1' }]);
    const { idempotencyKey: _k, ...payload } = { ...input(), priority: 'interactive' };
    expect(stored?.payloadHash).toBe(stableHash(payload));
    expect(stored?.priority).toBe('interactive');
    expect(stored?.patientRef).toBeNull();
  });

  it('stores the patient the resource belongs to (the key of the per-patient failure budget)', async () => {
    const { id } = await submitCommand(store, input({ businessKey: 'lab:patient', resource: { resourceType: 'Observation', status: 'final', subject: { reference: 'Patient/p-9' } } }));
    expect((await store.commands.get(id))?.patientRef).toBe('Patient/p-9');
  });

  it('returns the original for the same idempotency key and payload; 422 for another payload', async () => {
    const first = await submitCommand(store, input({ idempotencyKey: 'k-1', businessKey: 'lab:2' }));
    expect(await submitCommand(store, input({ idempotencyKey: 'k-1', businessKey: 'lab:2' }))).toEqual({ ...first, created: false });
    await expect(submitCommand(store, input({ idempotencyKey: 'k-1', businessKey: 'lab:3' }))).rejects.toMatchObject({ code: 'IDEMPOTENCY_KEY_REUSED', httpStatus: 422 });
  });

  it('refuses invalid commands with COMMAND_INVALID, naming the field but never echoing PHI', async () => {
    const cases: Partial<CommandInput>[] = [
      { action: 'merge' as never },
      { resourceType: 'observation' },
      { context: 'doctor:1' },
      { businessKey: 'MRN-CANARY-123|x' },
      { businessKey: 'has space MRN-CANARY-123' },
      { resource: { resourceType: 'Patient', name: [{ family: 'MRN-CANARY-123' }] } },
      { resource: { resourceType: 'Observation', identifier: 'MRN-CANARY-123' } },
      { extra: 'MRN-CANARY-123' } as never,
    ];
    for (const c of cases) {
      const error = await submitCommand(store, input(c)).catch((e: unknown) => e);
      expect(error, JSON.stringify(Object.keys(c))).toMatchObject({ code: 'COMMAND_INVALID' });
      expect(String((error as Error).message)).not.toContain('MRN-CANARY-123');
    }
  });

  it('checks the tenant: unknown, paused, and scopes that do not cover the protocol', async () => {
    await expect(submitCommand(store, input({ tenantId: 'nobody' }))).rejects.toMatchObject({ code: 'TENANT_NOT_FOUND' });
    await expect(submitCommand(store, input({ tenantId: 'paused' }))).rejects.toMatchObject({ code: 'AUTH_TENANT_PAUSED' });
    await expect(submitCommand(store, input({ tenantId: 'readonly' }))).rejects.toMatchObject({ code: 'EHR_SCOPE_MISSING', details: { required: 'system/Observation.c' } });
    await expect(submitCommand(store, input({ context: 'patient:p1' }))).rejects.toMatchObject({ code: 'EHR_SCOPE_MISSING', details: { required: 'patient/Observation.c' } });
    expect(await store.commands.list({ tenantId: 'readonly' })).toEqual([]);
  });

  it('reads the tenant once, not per submission, and still sees every change another process makes', async () => {
    await store.tenants.create({
      id: 'cached',
      vendor: 'generic',
      fhirBaseUrl: 'https://ehr.example.test/fhir',
      environment: 'sandbox',
      authMethod: 'backend-services',
      clientId: 'c',
      scopes: 'system/Observation.cruds',
      tokenEndpoint: null,
      dataKeyWrapped: Buffer.alloc(0),
      credentialsCiphertext: null,
    });
    // The submitter's view of the store counts its tenant reads; changes are made through the store directly, as
    // another engine process or an operator would.
    let reads = 0;
    const view = { ...store, tenants: { ...store.tenants, get: (id: string) => (reads++, store.tenants.get(id)) } } as unknown as typeof store;
    const submit = (key: string) => submitCommand(view, input({ tenantId: 'cached', businessKey: key }));
    for (let i = 0; i < 3; i++) await submit(`cache:${i}`);
    expect(reads).toBe(1);

    await store.tenants.update('cached', { state: 'auth_paused', stateReason: 'refresh token revoked' });
    await expect(submit('cache:paused')).rejects.toMatchObject({ code: 'AUTH_TENANT_PAUSED' });
    await store.tenants.update('cached', { state: 'active', stateReason: null });
    expect(await submit('cache:resumed')).toMatchObject({ state: 'queued', created: true });
    await store.tenants.update('cached', { scopes: 'system/Observation.rs' });
    await expect(submit('cache:rescoped')).rejects.toMatchObject({ code: 'EHR_SCOPE_MISSING' });
    const stored = (await store.commands.list({ tenantId: 'cached' })).map((c) => c.businessKey).sort();
    expect(stored).toEqual(['cache:0', 'cache:1', 'cache:2', 'cache:resumed']);

    await store.tenants.update('cached', { scopes: 'system/Observation.cruds' });
    reads = 0;
    for (let i = 3; i < 6; i++) await submit(`cache:${i}`);
    expect(reads).toBe(1);
  });

  it('numbers generations per business key', async () => {
    const a = await submitCommand(store, input({ businessKey: 'lab:gen', action: 'upsert' }));
    const b = await submitCommand(store, input({ businessKey: 'lab:gen', action: 'upsert' }));
    expect([a.generation, b.generation]).toEqual([1, 2]);
  });
});
