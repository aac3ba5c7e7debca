import { describe, expect, it } from 'vitest';
import { validateAuditEntry, type AuditCommandEvent } from '../store/index.js';
import { authEventEntry, commandAction, commandEventEntry, contextKind, reasonCode } from './entries.js';

const event = (overrides: Partial<AuditCommandEvent> = {}): AuditCommandEvent => ({
  seq: 12,
  commandId: 'cmd-1',
  at: 1_700_000_000_000,
  kind: 'transition',
  actor: 'worker:w1',
  fromState: 'in_flight',
  toState: 'rejected',
  reason: 'EHR_VALIDATION',
  tenantId: 'acme',
  resourceType: 'Observation',
  commandAction: 'create',
  context: 'patient:PAT-1',
  requestedBy: 'api:key-1',
  vendor: 'epic',
  ehrId: null,
  ehrVersion: null,
  ...overrides,
});
const options = { mappingVersion: () => 'epic-adapter/3' };

describe('command event entries', () => {
  it('keep codes and drop anything that could be free text', () => {
    expect(reasonCode('EHR_VALIDATION')).toBe('EHR_VALIDATION');
    expect(reasonCode('resumed_from_unknown')).toBe('resumed_from_unknown');
    expect(reasonCode('Patient John Smith called')).toBeNull();
    expect(reasonCode('')).toBeNull();
    expect(contextKind('patient:123')).toBe('patient');
    expect(contextKind('provider:abc')).toBe('provider');
    expect(contextKind('system')).toBe('system');
    expect(contextKind('whatever:x')).toBe('other');
  });

  it('turn any event kind into a valid action, so a new kind never stops the tailer', () => {
    expect(commandAction('submitted')).toBe('command.submitted');
    expect(commandAction('operator:retry')).toBe('command.operator.retry');
    expect(commandAction('Weird Kind!!')).toBe('command.weird.kind');
    expect(commandAction('')).toBe('command.event');
    expect(commandAction('::')).toBe('command.event');
  });

  it('map a rejection with its code, the authorisation context kind and the mapping version', () => {
    const entry = commandEventEntry(event(), options);
    expect(entry).toEqual({
      at: 1_700_000_000_000,
      actor: 'worker:w1',
      action: 'command.transition',
      tenantId: 'acme',
      subjectType: 'command',
      subjectId: 'cmd-1',
      outcome: 'failure',
      details: {
        eventSeq: 12,
        from: 'in_flight',
        to: 'rejected',
        reason: 'EHR_VALIDATION',
        resourceType: 'Observation',
        commandAction: 'create',
        context: 'patient',
        vendor: 'epic',
        mappingVersion: 'epic-adapter/3',
      },
    });
  });

  it('always produce an entry the store accepts, whatever the event holds', () => {
    const odd = [
      event({ kind: 'operator:resolve', actor: 'operator:key-2', reason: 'Spoke to Jane Doe, DOB 1970-01-01', toState: 'verified', ehrId: 'x', ehrVersion: '2' }),
      event({ actor: 'Jane Doe <jane@example.com>', at: -5, kind: '???', reason: null, toState: null, fromState: null }),
      event({ commandId: 'c'.repeat(400), tenantId: 't'.repeat(400) }),
    ];
    for (const e of odd) expect(() => validateAuditEntry(commandEventEntry(e, { mappingVersion: () => { throw new Error('boom'); } }))).not.toThrow();
    const operator = commandEventEntry(odd[0]!, options);
    expect(operator.details).toMatchObject({ note: true, ehr: { id: 'x', version: '2' } });
    expect(JSON.stringify(operator)).not.toContain('Jane');
    expect(commandEventEntry(odd[1]!, options).actor).toBe('unknown');
  });
});

describe('auth event entries', () => {
  it('never carry a context id, and keep only the OAuth error code of a pause reason', () => {
    const refreshed = authEventEntry('token:refreshed', { tenantId: 'acme', context: 'patient:PAT-1', reason: 'proactive', expiresInSeconds: 300, rotated: true }, 5);
    expect(JSON.stringify(refreshed)).not.toContain('PAT-1');
    const paused = authEventEntry('tenant:paused', { tenantId: 'acme', reason: 'token endpoint refused the client (invalid_client)' }, 5);
    expect(paused?.details).toEqual({ cause: 'token_endpoint_refused', oauthError: 'invalid_client' });
    expect(authEventEntry('tenant:paused', { tenantId: 'acme', reason: 'something else entirely' }, 5)?.details).toEqual({ cause: 'token_endpoint_refused', oauthError: null });
  });
});
