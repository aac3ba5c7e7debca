import { describe, expect, it } from 'vitest';
import { parseScope, parseScopes, requiredScopeFor, scopesAllow } from './smart-scopes.js';
import type { ResourceScope, ScopedInteraction } from './smart-scopes.js';

const READS: readonly ScopedInteraction[] = ['read', 'vread', 'search-type', 'history-instance', 'history-type'];
const WRITES: readonly ScopedInteraction[] = ['create', 'update', 'delete'];

function resource(raw: string): ResourceScope {
  const parsed = parseScope(raw);
  if (parsed.kind !== 'resource') throw new Error(`expected a resource scope, got ${parsed.kind}`);
  return parsed;
}

describe('parseScope', () => {
  it('parses SMART v1 read, write and * into normalised permissions', () => {
    const read = resource('patient/Observation.read');
    expect(read).toMatchObject({ context: 'patient', resourceType: 'Observation', version: 1, restrictions: [] });
    expect([...read.permissions].sort()).toEqual(['r', 's']);
    expect([...resource('user/Patient.write').permissions].sort()).toEqual(['c', 'd', 'u']);
    expect([...resource('system/*.*').permissions].sort()).toEqual(['c', 'd', 'r', 's', 'u']);
    expect(resource('system/*.*').resourceType).toBe('*');
  });

  it('parses SMART v2 letters', () => {
    const cruds = resource('system/Observation.cruds');
    expect(cruds.version).toBe(2);
    expect([...cruds.permissions].sort()).toEqual(['c', 'd', 'r', 's', 'u']);
    expect([...resource('patient/*.rs').permissions].sort()).toEqual(['r', 's']);
    expect([...resource('user/Encounter.c').permissions]).toEqual(['c']);
  });

  it('keeps v2 query restrictions, URL-decoded', () => {
    const scope = resource('patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory');
    expect(scope.restrictions).toEqual([
      { name: 'category', value: 'http://terminology.hl7.org/CodeSystem/observation-category|laboratory' },
    ]);
    expect(resource('patient/Observation.rs?code=a%7Cb&status=final').restrictions).toEqual([
      { name: 'code', value: 'a|b' },
      { name: 'status', value: 'final' },
    ]);
  });

  it('classifies launch, identity, access and unknown scopes', () => {
    expect(parseScope('launch')).toEqual({ kind: 'launch', raw: 'launch', launchContext: undefined });
    expect(parseScope('launch/patient')).toEqual({ kind: 'launch', raw: 'launch/patient', launchContext: 'patient' });
    expect(parseScope('openid').kind).toBe('identity');
    expect(parseScope('fhirUser').kind).toBe('identity');
    expect(parseScope('offline_access').kind).toBe('access');
    expect(parseScope('online_access').kind).toBe('access');
    expect(parseScope('https://vendor.example/scope').kind).toBe('other');
  });

  it.each([
    ['patient/Observation', 'no permissions'],
    ['patient/observation.read', 'lower-case type'],
    ['patient/.read', 'empty type'],
    ['patient/Observation.', 'empty permissions'],
    ['patient/Observation.rc', 'letters out of order'],
    ['patient/Observation.rr', 'repeated letter'],
    ['patient/Observation.x', 'unknown letter'],
    ['patient/Observation.readwrite', 'unknown v1 word'],
    ['patient/Observation.read?category=x', 'v1 with a query'],
    ['patient/Observation.rs?', 'empty query'],
    ['patient/Observation.rs?=x', 'query without a name'],
    ['user/Obs3rvation.read', 'digit in type'],
    ['launch/', 'empty launch context'],
  ])('marks %s as malformed (%s) instead of throwing', (raw) => {
    const parsed = parseScope(raw);
    expect(parsed.kind).toBe('malformed');
    expect(parsed.kind === 'malformed' && parsed.reason.length > 0).toBe(true);
  });
});

describe('parseScopes', () => {
  it('splits on any whitespace, drops empties and duplicates, keeps order', () => {
    const parsed = parseScopes('  openid\tfhirUser  system/Patient.read\nsystem/Patient.read launch/patient ');
    expect(parsed.map((s) => s.raw)).toEqual(['openid', 'fhirUser', 'system/Patient.read', 'launch/patient']);
  });

  it('returns an empty list for undefined or blank input', () => {
    expect(parseScopes(undefined)).toEqual([]);
    expect(parseScopes('   ')).toEqual([]);
  });

  it('keeps malformed scopes in the list so callers can log them', () => {
    expect(parseScopes('system/Patient.read system/Patient.bogus').map((s) => s.kind)).toEqual(['resource', 'malformed']);
  });
});

describe('scopesAllow', () => {
  it('v1 read covers every read, search and history interaction, and no write', () => {
    const scopes = parseScopes('system/Observation.read');
    for (const interaction of READS) {
      expect(scopesAllow(scopes, { resourceType: 'Observation', interaction }).allowed, interaction).toBe(true);
    }
    for (const interaction of WRITES) {
      expect(scopesAllow(scopes, { resourceType: 'Observation', interaction }).allowed, interaction).toBe(false);
    }
  });

  it('v1 write covers create, update and delete, and no read', () => {
    const scopes = parseScopes('user/Observation.write');
    for (const interaction of WRITES) {
      expect(scopesAllow(scopes, { resourceType: 'Observation', interaction }).allowed, interaction).toBe(true);
    }
    for (const interaction of READS) {
      expect(scopesAllow(scopes, { resourceType: 'Observation', interaction }).allowed, interaction).toBe(false);
    }
  });

  it('v2 letters map one to one: r = read/vread/history-instance, s = search-type/history-type', () => {
    const r = parseScopes('system/Observation.r');
    expect(scopesAllow(r, { resourceType: 'Observation', interaction: 'read' }).allowed).toBe(true);
    expect(scopesAllow(r, { resourceType: 'Observation', interaction: 'vread' }).allowed).toBe(true);
    expect(scopesAllow(r, { resourceType: 'Observation', interaction: 'history-instance' }).allowed).toBe(true);
    expect(scopesAllow(r, { resourceType: 'Observation', interaction: 'search-type' }).allowed).toBe(false);
    expect(scopesAllow(r, { resourceType: 'Observation', interaction: 'history-type' }).allowed).toBe(false);
    const s = parseScopes('system/Observation.s');
    expect(scopesAllow(s, { resourceType: 'Observation', interaction: 'search-type' }).allowed).toBe(true);
    expect(scopesAllow(s, { resourceType: 'Observation', interaction: 'history-type' }).allowed).toBe(true);
    expect(scopesAllow(s, { resourceType: 'Observation', interaction: 'read' }).allowed).toBe(false);
    const cud = parseScopes('system/Observation.cud');
    expect(scopesAllow(cud, { resourceType: 'Observation', interaction: 'create' }).allowed).toBe(true);
    expect(scopesAllow(cud, { resourceType: 'Observation', interaction: 'update' }).allowed).toBe(true);
    expect(scopesAllow(cud, { resourceType: 'Observation', interaction: 'delete' }).allowed).toBe(true);
    expect(scopesAllow(parseScopes('system/Observation.c'), { resourceType: 'Observation', interaction: 'update' }).allowed).toBe(false);
  });

  it('matches the resource type exactly, or any type with *', () => {
    expect(scopesAllow('system/Observation.rs', { resourceType: 'Patient', interaction: 'read' }).allowed).toBe(false);
    expect(scopesAllow('system/*.rs', { resourceType: 'Patient', interaction: 'read' }).allowed).toBe(true);
    expect(scopesAllow('patient/*.read', { resourceType: 'Condition', interaction: 'search-type' }).allowed).toBe(true);
  });

  it('honours an explicit context and otherwise prefers the broadest one', () => {
    const scopes = parseScopes('patient/Observation.rs user/Observation.rs');
    expect(scopesAllow(scopes, { resourceType: 'Observation', interaction: 'read', context: 'system' }).allowed).toBe(false);
    const decision = scopesAllow(scopes, { resourceType: 'Observation', interaction: 'read' });
    expect(decision.allowed && decision.grantedBy.raw).toBe('user/Observation.rs');
    const patientOnly = scopesAllow(scopes, { resourceType: 'Observation', interaction: 'read', context: 'patient' });
    expect(patientOnly.allowed && patientOnly.grantedBy.raw).toBe('patient/Observation.rs');
  });

  it('mixes v1 and v2 scopes in one grant', () => {
    const scopes = parseScopes('system/Patient.read system/Observation.c launch/patient openid');
    expect(scopesAllow(scopes, { resourceType: 'Patient', interaction: 'search-type' }).allowed).toBe(true);
    expect(scopesAllow(scopes, { resourceType: 'Observation', interaction: 'create' }).allowed).toBe(true);
    expect(scopesAllow(scopes, { resourceType: 'Observation', interaction: 'read' }).allowed).toBe(false);
    expect(scopesAllow(scopes, { resourceType: 'Patient', interaction: 'update' }).allowed).toBe(false);
  });

  it('ignores malformed, launch and identity scopes', () => {
    const scopes = parseScopes('system/Observation.bogus system/Observation.read?x=1 launch/patient openid fhirUser');
    expect(scopesAllow(scopes, { resourceType: 'Observation', interaction: 'read' }).allowed).toBe(false);
  });

  it('lets a restricted v2 scope grant only searches that carry the same restriction', () => {
    const scopes = parseScopes('patient/Observation.rs?category=laboratory');
    const base = { resourceType: 'Observation', interaction: 'search-type' } as const;
    expect(scopesAllow(scopes, { ...base, searchParams: { category: 'laboratory', patient: '1' } }).allowed).toBe(true);
    expect(scopesAllow(scopes, { ...base, searchParams: new URLSearchParams('category=laboratory') }).allowed).toBe(true);
    expect(scopesAllow(scopes, { ...base, searchParams: { category: 'vital-signs' } }).allowed).toBe(false);
    expect(scopesAllow(scopes, base).allowed).toBe(false);
    // Conservative: a read cannot be checked against the restriction, so it is not granted.
    expect(scopesAllow(scopes, { resourceType: 'Observation', interaction: 'read' }).allowed).toBe(false);
  });

  it('says which scope is missing, in the dialect and context of the grant', () => {
    expect(scopesAllow('system/Patient.rs', { resourceType: 'Observation', interaction: 'create' })).toEqual({
      allowed: false,
      required: 'system/Observation.c',
    });
    expect(scopesAllow('patient/Patient.read', { resourceType: 'Observation', interaction: 'search-type' })).toEqual({
      allowed: false,
      required: 'patient/Observation.read',
    });
    expect(scopesAllow('', { resourceType: 'Observation', interaction: 'delete', context: 'user' })).toEqual({
      allowed: false,
      required: 'user/Observation.d',
    });
    expect(scopesAllow('', { resourceType: 'Encounter', interaction: 'read' })).toEqual({ allowed: false, required: 'system/Encounter.r' });
  });
});

describe('requiredScopeFor', () => {
  it('builds v2 hints by default and v1 hints on request', () => {
    expect(requiredScopeFor('Observation', 'create')).toBe('system/Observation.c');
    expect(requiredScopeFor('Observation', 'history-type', 'patient')).toBe('patient/Observation.s');
    expect(requiredScopeFor('Observation', 'vread', 'user')).toBe('user/Observation.r');
    expect(requiredScopeFor('Observation', 'update', 'system', 1)).toBe('system/Observation.write');
    expect(requiredScopeFor('Observation', 'search-type', 'system', 1)).toBe('system/Observation.read');
  });
});

describe('scopeCoveredBy', () => {
  it('grants narrower scopes under wildcard and v1 registrations, and nothing broader', async () => {
    const { scopeCoveredBy } = await import('./smart-scopes.js');
    expect(scopeCoveredBy('system/Patient.rs', 'system/*.cruds')).toBe(true);
    expect(scopeCoveredBy('system/Patient.read', 'system/*.cruds')).toBe(true);
    expect(scopeCoveredBy('system/Observation.c', 'system/Observation.write')).toBe(true);
    expect(scopeCoveredBy('system/Observation.cruds', 'system/Observation.write')).toBe(false);
    expect(scopeCoveredBy('system/*.rs', 'system/Patient.rs')).toBe(false);
    expect(scopeCoveredBy('patient/Patient.rs', 'system/*.cruds')).toBe(false);
    expect(scopeCoveredBy('launch/patient', 'system/*.cruds')).toBe(false);
    expect(scopeCoveredBy('launch/patient', 'launch/patient openid')).toBe(true);
    expect(scopeCoveredBy('system/Observation.rs?category=laboratory', 'system/Observation.rs')).toBe(true);
    expect(scopeCoveredBy('system/Observation.rs', 'system/Observation.rs?category=laboratory')).toBe(false);
    expect(scopeCoveredBy('nonsense', 'system/*.cruds')).toBe(false);
  });
});
