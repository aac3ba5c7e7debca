import { describe, expect, it } from 'vitest';
import { circuitVerdict, classifyReadAttempt, classifyWriteAttempt } from './classify.js';
import type { FailureReason } from './events.js';
import { CallAbort, failureReasonOf, type TransportResult } from './transport.js';

const response = (status: number, headers: Record<string, string> = {}): TransportResult => ({ kind: 'response', status, headers, body: Buffer.from('{}') });
const failed = (sent: boolean, reason: FailureReason): TransportResult => ({
  kind: 'failed',
  sent,
  reason,
  cause: new Error('x'),
});
const none: ReadonlySet<number> = new Set();

describe('write classification (docs/client.md table)', () => {
  it.each([
    [200, 'applied', undefined],
    [201, 'applied', undefined],
    [204, 'applied', undefined],
    [400, 'rejected', 'EHR_VALIDATION'],
    [422, 'rejected', 'EHR_VALIDATION'],
    [401, 'rejected', 'EHR_UNAUTHORIZED'],
    [403, 'rejected', 'EHR_FORBIDDEN'],
    [404, 'rejected', 'EHR_NOT_FOUND'],
    [410, 'rejected', 'EHR_NOT_FOUND'],
    [409, 'rejected', 'EHR_CONFLICT'],
    [412, 'rejected', 'EHR_PRECONDITION_FAILED'],
    [405, 'rejected', 'EHR_VALIDATION'],
    [429, 'rate_limited', 'EHR_RATE_LIMITED'],
    [408, 'unknown', 'EHR_OUTCOME_UNKNOWN'],
    [500, 'unknown', 'EHR_OUTCOME_UNKNOWN'],
    [502, 'unknown', 'EHR_OUTCOME_UNKNOWN'],
    [503, 'unknown', 'EHR_OUTCOME_UNKNOWN'],
    [504, 'unknown', 'EHR_OUTCOME_UNKNOWN'],
    [303, 'unknown', 'EHR_OUTCOME_UNKNOWN'],
  ] as const)('status %i → %s (%s)', (status, outcome, code) => {
    expect(classifyWriteAttempt(response(status), none)).toMatchObject({ outcome, code, status });
  });

  it('a 5xx the vendor profile guarantees as "not applied" is not_sent; other 5xx stay unknown', () => {
    const profile = new Set([503]);
    expect(classifyWriteAttempt(response(503), profile)).toMatchObject({ outcome: 'not_sent', code: 'EHR_UNAVAILABLE' });
    expect(classifyWriteAttempt(response(500), profile)).toMatchObject({ outcome: 'unknown' });
  });

  it('no response: not_sent only if no byte could have left, unknown otherwise', () => {
    expect(classifyWriteAttempt(failed(false, 'connect-refused'), none)).toMatchObject({ outcome: 'not_sent', code: 'EHR_UNAVAILABLE' });
    expect(classifyWriteAttempt(failed(false, 'connect-timeout'), none)).toMatchObject({ outcome: 'not_sent', code: 'EHR_TIMEOUT' });
    expect(classifyWriteAttempt(failed(false, 'dns'), none)).toMatchObject({ outcome: 'not_sent' });
    expect(classifyWriteAttempt(failed(false, 'deadline'), none)).toMatchObject({ outcome: 'not_sent', code: 'EHR_TIMEOUT' });
    // The same reasons once the request was (possibly) written are ambiguous.
    for (const reason of ['reset', 'headers-timeout', 'attempt-timeout', 'deadline', 'aborted', 'network'] as const) {
      expect(classifyWriteAttempt(failed(true, reason), none)).toMatchObject({ outcome: 'unknown', code: 'EHR_OUTCOME_UNKNOWN', reason });
    }
  });

  it('a broken body after the status: the status decides (2xx applied with an error, 5xx unknown, 4xx rejected)', () => {
    const bodyFailed = (status: number): TransportResult => ({ kind: 'body-failed', status, headers: {}, reason: 'reset', cause: new Error('x') });
    expect(classifyWriteAttempt(bodyFailed(201), none)).toMatchObject({ outcome: 'applied', code: 'EHR_RESPONSE_INVALID' });
    expect(classifyWriteAttempt(bodyFailed(500), none)).toMatchObject({ outcome: 'unknown' });
    expect(classifyWriteAttempt(bodyFailed(409), none)).toMatchObject({ outcome: 'rejected', code: 'EHR_CONFLICT' });
  });
});

describe('read classification', () => {
  it('retries 429/502/503/504 and network failures, not 500 or 4xx', () => {
    for (const status of [429, 502, 503, 504]) expect(classifyReadAttempt(response(status)).retryable).toBe(true);
    for (const status of [400, 401, 403, 404, 409, 412, 422, 500, 501]) expect(classifyReadAttempt(response(status)).retryable).toBe(false);
    for (const reason of ['connect-refused', 'connect-timeout', 'reset', 'headers-timeout', 'body-timeout', 'attempt-timeout'] as const) {
      expect(classifyReadAttempt(failed(true, reason)).retryable).toBe(true);
    }
    expect(classifyReadAttempt(response(200))).toMatchObject({ ok: true });
  });

  it('does not retry what we caused ourselves (deadline, cancel) nor an oversized body', () => {
    expect(classifyReadAttempt(failed(true, 'deadline'))).toMatchObject({ retryable: false, code: 'EHR_TIMEOUT' });
    expect(classifyReadAttempt(failed(false, 'aborted'))).toMatchObject({ retryable: false, code: 'EHR_TIMEOUT' });
    expect(classifyReadAttempt(failed(true, 'body-too-large'))).toMatchObject({ retryable: false, code: 'EHR_RESPONSE_INVALID' });
  });

  it('codes: timeouts EHR_TIMEOUT, connection failures EHR_UNAVAILABLE, statuses by category', () => {
    expect(classifyReadAttempt(failed(true, 'headers-timeout')).code).toBe('EHR_TIMEOUT');
    expect(classifyReadAttempt(failed(false, 'connect-refused')).code).toBe('EHR_UNAVAILABLE');
    expect(classifyReadAttempt(response(404)).code).toBe('EHR_NOT_FOUND');
    expect(classifyReadAttempt(response(503)).code).toBe('EHR_UNAVAILABLE');
    expect(classifyReadAttempt(response(301)).code).toBe('EHR_RESPONSE_INVALID');
  });
});

describe('what the breaker counts', () => {
  it('transient failures only: connect errors, timeouts, resets, 5xx', () => {
    expect(circuitVerdict(response(503))).toBe('failure');
    expect(circuitVerdict(response(500))).toBe('failure');
    expect(circuitVerdict(failed(false, 'connect-refused'))).toBe('failure');
    expect(circuitVerdict(failed(true, 'attempt-timeout'))).toBe('failure');
    expect(circuitVerdict(failed(true, 'reset'))).toBe('failure');
  });

  it('4xx and 429 are a healthy server saying no; our own deadline/cancel says nothing', () => {
    for (const status of [200, 400, 401, 404, 409, 412, 429]) expect(circuitVerdict(response(status))).toBe('success');
    expect(circuitVerdict(failed(true, 'deadline'))).toBe('ignore');
    expect(circuitVerdict(failed(false, 'aborted'))).toBe('ignore');
  });
});

describe('undici error mapping', () => {
  it('maps undici and socket codes, through cause chains', () => {
    const coded = (code: string): Error => Object.assign(new Error(code), { code });
    expect(failureReasonOf(coded('UND_ERR_CONNECT_TIMEOUT'), false)).toBe('connect-timeout');
    expect(failureReasonOf(coded('ECONNREFUSED'), false)).toBe('connect-refused');
    expect(failureReasonOf(coded('ENOTFOUND'), false)).toBe('dns');
    expect(failureReasonOf(coded('UND_ERR_HEADERS_TIMEOUT'), true)).toBe('headers-timeout');
    expect(failureReasonOf(coded('UND_ERR_BODY_TIMEOUT'), true)).toBe('body-timeout');
    expect(failureReasonOf(Object.assign(new Error('other side closed'), { code: 'UND_ERR_SOCKET' }), true)).toBe('reset');
    expect(failureReasonOf(new Error('wrapped', { cause: coded('ECONNRESET') }), true)).toBe('reset');
    expect(failureReasonOf(new CallAbort('deadline'), true)).toBe('deadline');
    expect(failureReasonOf(new Error('?'), true)).toBe('network');
    expect(failureReasonOf(new Error('?'), false)).toBe('connect-error');
  });
});
