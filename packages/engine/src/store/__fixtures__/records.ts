/** Store rows for tests: a tenant with fake encrypted material (the store never decrypts it). */
import { randomBytes } from 'node:crypto';
import type { NewTenant } from '../index.js';

export const uid = (): string => randomBytes(4).toString('hex');

export function newTenant(overrides: Partial<NewTenant> = {}): NewTenant {
  return {
    id: `tenant-${uid()}`,
    vendor: 'epic',
    fhirBaseUrl: 'https://ehr.example.test/fhir/R4',
    environment: 'sandbox',
    authMethod: 'backend-services',
    clientId: 'client-1',
    scopes: 'system/Patient.rs system/Observation.c',
    tokenEndpoint: 'https://ehr.example.test/oauth2/token',
    dataKeyWrapped: randomBytes(60),
    credentialsCiphertext: randomBytes(512),
    ...overrides,
  };
}
