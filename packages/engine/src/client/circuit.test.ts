import { SamplingBreaker } from 'cockatiel';
import { describe, expect, it } from 'vitest';
import { Circuit } from './circuit.js';

function setup(threshold = 3, halfOpenAfterMs = 1000) {
  let now = 1_000_000;
  const transitions: string[] = [];
  const circuit = new Circuit({
    failureThreshold: threshold,
    halfOpenAfterMs,
    clock: () => now,
    listener: {
      onOpen: (afterTrial) => transitions.push(afterTrial ? 'open(after trial)' : 'open'),
      onHalfOpen: () => transitions.push('half-open'),
      onClose: () => transitions.push('close'),
    },
  });
  return { circuit, transitions, advance: (ms: number) => (now += ms) };
}

function fail(circuit: Circuit, times: number): void {
  for (let i = 0; i < times; i++) circuit.tryAcquire()?.report('failure');
}

describe('circuit breaker (tenant + origin)', () => {
  it('opens after the threshold of consecutive failures; a success resets the count', () => {
    const { circuit, transitions } = setup(3);
    fail(circuit, 2);
    circuit.tryAcquire()?.report('success');
    fail(circuit, 2);
    expect(circuit.state).toBe('closed');
    fail(circuit, 1);
    expect(circuit.state).toBe('open');
    expect(transitions).toEqual(['open']);
  });

  it('fails fast while open, then lets exactly one trial through after halfOpenAfter', () => {
    const { circuit, transitions, advance } = setup(1, 1000);
    fail(circuit, 1);
    expect(circuit.tryAcquire()).toBeUndefined();
    advance(999);
    expect(circuit.tryAcquire()).toBeUndefined();
    expect(circuit.remainingOpenMs()).toBe(1);
    advance(1);
    const trial = circuit.tryAcquire();
    expect(trial?.trial).toBe(true);
    expect(circuit.state).toBe('half-open');
    // Everyone else fails fast while the trial is in flight.
    expect(circuit.tryAcquire()).toBeUndefined();
    trial?.report('success');
    expect(circuit.state).toBe('closed');
    expect(circuit.tryAcquire()?.trial).toBe(false);
    expect(transitions).toEqual(['open', 'half-open', 'close']);
  });

  it('a failed trial reopens for another full period', () => {
    const { circuit, transitions, advance } = setup(1, 1000);
    fail(circuit, 1);
    advance(1000);
    circuit.tryAcquire()?.report('failure');
    expect(circuit.state).toBe('open');
    advance(999);
    expect(circuit.tryAcquire()).toBeUndefined();
    expect(transitions).toEqual(['open', 'half-open', 'open(after trial)']);
  });

  it('a trial without evidence (cancelled) neither closes nor waits another period', () => {
    const { circuit, advance } = setup(1, 1000);
    fail(circuit, 1);
    advance(1000);
    circuit.tryAcquire()?.report('ignore');
    expect(circuit.state).toBe('open');
    expect(circuit.tryAcquire()?.trial).toBe(true);
  });

  it('late results from before the circuit opened are dropped; reports count once', () => {
    const { circuit, advance } = setup(2, 1000);
    const late = circuit.tryAcquire();
    const p = circuit.tryAcquire();
    p?.report('failure');
    p?.report('failure'); // second report of one permit is ignored
    expect(circuit.state).toBe('closed');
    fail(circuit, 1);
    expect(circuit.state).toBe('open');
    advance(1000);
    const trial = circuit.tryAcquire();
    late?.report('success'); // must not close the circuit: it says nothing about the present
    expect(circuit.state).toBe('half-open');
    trial?.report('success');
    expect(circuit.state).toBe('closed');
  });

  it('accepts another cockatiel breaker policy', () => {
    const circuit = new Circuit({
      breaker: new SamplingBreaker({ threshold: 0.5, duration: 10_000, minimumRps: 0.1 }),
      failureThreshold: 1,
      halfOpenAfterMs: 1000,
      clock: Date.now,
      listener: { onOpen() {}, onHalfOpen() {}, onClose() {} },
    });
    for (let i = 0; i < 3; i++) circuit.tryAcquire()?.report('success');
    fail(circuit, 2);
    expect(circuit.state).toBe('closed');
    fail(circuit, 2);
    expect(circuit.state).toBe('open');
  });
});
