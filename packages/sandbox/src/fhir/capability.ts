import { getResourceTypes } from '@medplum/core';
import type { SandboxProfile } from '../profile.js';
import { ensureDefinitions, RESULT_PARAMS, searchParamsFor } from './definitions.js';

export interface CapabilityInput {
  readonly baseUrl: string;
  readonly profile: SandboxProfile;
  readonly auth: boolean;
  readonly smart: Record<string, unknown> | undefined;
}

/** The software version reported in the CapabilityStatement. */
export const SANDBOX_VERSION = '0.1.0';

/**
 * Builds a CapabilityStatement that says what this server really does, derived from the same tables the server
 * uses (supported search parameters per type, profile switches), so the two cannot drift apart.
 */
export function buildCapabilityStatement(input: CapabilityInput): Record<string, unknown> {
  ensureDefinitions();
  const { profile } = input;
  const types = (getResourceTypes() as string[])
    .filter((t) => t !== 'Resource' && t !== 'DomainResource' && t !== 'Bundle')
    .sort();
  const security: Record<string, unknown> = input.auth
    ? {
        cors: false,
        service: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/restful-security-service', code: 'SMART-on-FHIR' }] }],
        extension: [
          {
            url: 'http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris',
            extension: [
              { url: 'token', valueUri: input.smart?.['token_endpoint'] },
              { url: 'authorize', valueUri: input.smart?.['authorization_endpoint'] },
              { url: 'revoke', valueUri: input.smart?.['revocation_endpoint'] },
            ].filter((e) => typeof e.valueUri === 'string'),
          },
        ],
      }
    : { cors: false, description: 'Authorization is off in this sandbox.' };
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: '2026-11-22',
    kind: 'instance',
    software: { name: `Tether sandbox (${profile.name} profile)`, version: SANDBOX_VERSION },
    implementation: { description: 'Tether local sandbox EHR', url: input.baseUrl },
    fhirVersion: '4.0.1',
    format: ['application/fhir+json', 'json'],
    rest: [
      {
        mode: 'server',
        security,
        interaction: [{ code: 'transaction' }, { code: 'batch' }],
        resource: types.map((type) => ({
          type,
          interaction: ['read', 'vread', 'update', 'delete', 'history-instance', 'history-type', 'create', 'search-type'].map(
            (code) => ({ code }),
          ),
          versioning: 'versioned-update',
          readHistory: true,
          updateCreate: profile.updateCreate,
          conditionalCreate: profile.conditionalCreate,
          conditionalRead: 'not-supported',
          conditionalUpdate: false,
          conditionalDelete: 'not-supported',
          searchParam: [...searchParamsFor(type).values()].map((p) => ({ name: p.code, type: p.type })),
        })),
        searchParam: RESULT_PARAMS.filter((p) => p !== '_format').map((name) => ({ name, type: name === '_summary' ? 'token' : 'number' })),
      },
    ],
  };
}
