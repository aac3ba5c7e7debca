import { describe, expect, it } from 'vitest';
import type { IdSource } from './options.js';
import { attemptTraceparent, correlationIdFor, parseTraceparent, startTrace } from './trace.js';

const TRACEPARENT = /^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/;
let n = 0;
const ids: IdSource = {
  correlationId: () => `corr-${++n}`,
  traceId: () => 'ab'.repeat(16),
  spanId: () => (++n).toString(16).padStart(16, '0'),
};

describe('W3C traceparent', () => {
  it('parses a valid parent and keeps its trace id and flags', () => {
    expect(parseTraceparent('00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01')).toEqual({
      traceId: '4bf92f3577b34da6a3ce929d0e0e4736',
      parentSpanId: '00f067aa0ba902b7',
      flags: '01',
    });
  });

  it('rejects invalid parents (then a new trace starts)', () => {
    for (const bad of [
      '',
      'garbage',
      '00-00000000000000000000000000000000-00f067aa0ba902b7-01',
      '00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01',
      'ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
      '00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01',
      '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra',
    ]) {
      expect(parseTraceparent(bad), bad).toBeUndefined();
    }
    // A future version may append fields.
    expect(parseTraceparent('01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what')).toBeDefined();
  });

  it('every attempt: same trace id, new span id, valid format', () => {
    const trace = startTrace('00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', ids);
    const a = attemptTraceparent(trace, ids);
    const b = attemptTraceparent(trace, ids);
    expect(a.header).toMatch(TRACEPARENT);
    expect(b.header).toMatch(TRACEPARENT);
    expect(a.header.split('-')[1]).toBe('4bf92f3577b34da6a3ce929d0e0e4736');
    expect(b.header.split('-')[1]).toBe('4bf92f3577b34da6a3ce929d0e0e4736');
    expect(a.spanId).not.toBe(b.spanId);
    expect(a.header.endsWith('-01')).toBe(true);
  });

  it('without a parent: a new trace, not sampled; an all-zero generated id is never sent', () => {
    const zero: IdSource = { ...ids, traceId: () => '0'.repeat(32), spanId: () => '0'.repeat(16) };
    const trace = startTrace(undefined, zero);
    const { header } = attemptTraceparent(trace, zero);
    expect(header).toMatch(TRACEPARENT);
    expect(parseTraceparent(header)).toBeDefined();
    expect(header.endsWith('-00')).toBe(true);
  });
});

describe('correlation id', () => {
  it('uses the caller’s id or generates one', () => {
    expect(correlationIdFor('cmd-42:attempt.1', ids)).toBe('cmd-42:attempt.1');
    expect(correlationIdFor(undefined, ids)).toMatch(/^corr-\d+$/);
  });

  it('refuses ids that could inject headers or are unreasonably long', () => {
    for (const bad of ['a\r\nx-evil: 1', 'has space', '', 'x'.repeat(129)]) {
      expect(() => correlationIdFor(bad, ids)).toThrow(expect.objectContaining({ code: 'EHR_REQUEST_INVALID' }));
    }
  });
});
