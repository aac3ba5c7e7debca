import { describe, expect, it } from 'vitest';
import { TypedEmitter } from './events.js';

describe('TypedEmitter', () => {
  it('delivers payloads in order, unsubscribes, and isolates throwing listeners', () => {
    const errors: string[] = [];
    const e = new TypedEmitter<{ a: { n: number }; b: string }>({ onListenerError: (_err, ev) => errors.push(ev) });
    const seen: number[] = [];
    e.on('a', () => {
      throw new Error('boom');
    });
    const off = e.on('a', (p) => seen.push(p.n));
    e.emit('a', { n: 1 });
    off();
    e.emit('a', { n: 2 });
    e.emit('b', 'no listeners');
    expect(seen).toEqual([1]);
    expect(errors).toEqual(['a', 'a']);
  });
});
