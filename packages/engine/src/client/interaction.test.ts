import { describe, expect, it } from 'vitest';
import { classifyRequest } from './interaction.js';

describe('request → interaction', () => {
  it.each([
    ['GET', 'Patient', 'search-type', false],
    ['POST', 'Patient/_search', 'search-type', false],
    ['POST', 'Patient', 'create', true],
    ['GET', 'Patient/123', 'read', false],
    ['PUT', 'Patient/123', 'update', true],
    ['DELETE', 'Patient/123', 'delete', true],
    ['PATCH', 'Patient/123', 'patch', true],
    ['GET', 'Patient/123/_history', 'history-instance', false],
    ['GET', 'Patient/123/_history/4', 'vread', false],
    ['GET', 'Patient/_history', 'history-type', false],
    ['GET', 'metadata', 'capabilities', false],
    ['GET', 'Patient/123/$everything', 'operation', false],
    ['POST', 'Patient/$match', 'operation', true],
  ] as const)('%s %s → %s (write: %s)', (method, path, interaction, isWrite) => {
    const info = classifyRequest(method, path);
    expect(info.interaction).toBe(interaction);
    expect(info.isWrite).toBe(isWrite);
  });

  it('scope checks name the SMART interaction (patch needs update; operations and metadata need none)', () => {
    expect(classifyRequest('PATCH', 'Observation/1').scopeChecks).toEqual([{ resourceType: 'Observation', interaction: 'update' }]);
    expect(classifyRequest('GET', 'Observation/1/_history/2').scopeChecks).toEqual([{ resourceType: 'Observation', interaction: 'vread' }]);
    expect(classifyRequest('GET', 'metadata').scopeChecks).toEqual([]);
    expect(classifyRequest('GET', 'Patient/1/$everything').scopeChecks).toEqual([]);
  });

  it('conditional update and delete carry their search in the query', () => {
    expect(classifyRequest('PUT', 'Patient', undefined, true).interaction).toBe('update');
    expect(classifyRequest('DELETE', 'Patient', undefined, true).interaction).toBe('delete');
    expect(() => classifyRequest('PUT', 'Patient')).toThrow(expect.objectContaining({ code: 'EHR_REQUEST_INVALID' }));
  });

  it('a transaction or batch is a write; its precheck covers every entry once', () => {
    const bundle = {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [
        { request: { method: 'POST', url: 'Observation' } },
        { request: { method: 'POST', url: 'Observation' } },
        { request: { method: 'PUT', url: 'Patient?identifier=urn:x|1' } },
        { request: { method: 'GET', url: 'Encounter/9' } },
      ],
    };
    const info = classifyRequest('POST', '', bundle);
    expect(info).toMatchObject({ interaction: 'transaction', isWrite: true, resourceType: undefined });
    expect(info.scopeChecks).toEqual([
      { resourceType: 'Observation', interaction: 'create' },
      { resourceType: 'Patient', interaction: 'update' },
      { resourceType: 'Encounter', interaction: 'read' },
    ]);
    expect(classifyRequest('POST', '', { ...bundle, type: 'batch' }).interaction).toBe('batch');
  });

  it('refuses what is not a FHIR interaction', () => {
    for (const [method, path, body] of [
      ['GET', ''],
      ['POST', '', { resourceType: 'Bundle', type: 'collection' }],
      ['POST', '', { resourceType: 'Bundle', type: 'transaction', entry: [{ request: { url: 'Patient' } }] }],
      ['GET', 'patient/1'],
      ['GET', 'Patient/bad id'],
      ['GET', 'Patient/1/_history/x y'],
      ['GET', 'Patient//1'],
      ['POST', 'Patient/1'],
      ['GET', 'Patient/1/_history/2/extra'],
    ] as const) {
      expect(() => classifyRequest(method, path, body), `${method} ${path}`).toThrow(expect.objectContaining({ code: 'EHR_REQUEST_INVALID' }));
    }
  });
});
