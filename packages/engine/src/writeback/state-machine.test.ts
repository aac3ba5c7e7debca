import { describe, expect, it } from 'vitest';
import { POSTGRES_MIGRATIONS } from '../store/migrations/postgres.js';
import { SQLITE_MIGRATIONS } from '../store/migrations/sqlite.js';
import { COMMAND_STATES, SETTLED_STATES, TERMINAL_STATES, TRANSITIONS, assertTransition, canTransition, isSettled } from './state-machine.js';

describe('command state machine', () => {
  it('has exactly the states of DESIGN §5, the same list the store CHECK constraint holds', () => {
    expect([...COMMAND_STATES]).toEqual([
      'queued',
      'in_flight',
      'acknowledged',
      'verified',
      'unknown',
      'retry_wait',
      'rejected',
      'conflict',
      'needs_review',
      'superseded',
      'cancelled',
    ]);
    // The CHECK constraint on commands.state in both dialects lists the same words (a new state needs a migration).
    for (const migrations of [SQLITE_MIGRATIONS, POSTGRES_MIGRATIONS]) {
      const checks = migrations.flatMap((m) => [...m.sql.matchAll(/\n\s+state\s+text\s+NOT NULL CHECK \(state IN \(([^)]*)\)\)/g)].map((x) => x[1] ?? ''));
      const commandCheck = checks.find((c) => c.includes("'queued'"));
      expect(commandCheck?.split(',').map((w) => w.trim().replace(/'/g, ''))).toEqual([...COMMAND_STATES]);
    }
  });

  it('allows exactly these transitions (the full table, enumerated)', () => {
    const allowed = COMMAND_STATES.flatMap((from) => COMMAND_STATES.filter((to) => canTransition(from, to)).map((to) => `${from} -> ${to}`));
    expect(allowed).toEqual([
      'queued -> in_flight',
      'queued -> cancelled',
      'in_flight -> acknowledged',
      'in_flight -> unknown',
      'in_flight -> retry_wait',
      'in_flight -> rejected',
      'in_flight -> conflict',
      'in_flight -> needs_review',
      'in_flight -> superseded',
      'acknowledged -> in_flight',
      'acknowledged -> verified',
      'acknowledged -> retry_wait',
      'acknowledged -> needs_review',
      'acknowledged -> superseded',
      'unknown -> in_flight',
      'unknown -> acknowledged',
      'unknown -> retry_wait',
      'unknown -> needs_review',
      'retry_wait -> in_flight',
      'retry_wait -> cancelled',
      'rejected -> queued',
      'rejected -> cancelled',
      'conflict -> in_flight',
      'conflict -> retry_wait',
      'conflict -> needs_review',
      'needs_review -> queued',
      'needs_review -> verified',
      'needs_review -> cancelled',
    ]);
  });

  it('never leaves a terminal state, and verified is reached only through acknowledged or an operator', () => {
    for (const state of TERMINAL_STATES) expect(TRANSITIONS[state]).toEqual([]);
    const into = (to: string) => COMMAND_STATES.filter((from) => canTransition(from, to as never));
    expect(into('verified')).toEqual(['acknowledged', 'needs_review']);
    // No path from unknown back to a send without going through in_flight (where reconcile-before-write runs).
    expect(TRANSITIONS.unknown).not.toContain('queued');
  });

  it('reaches every state from queued, and every non-settled state can reach a settled one', () => {
    const reachable = new Set<string>(['queued']);
    for (let changed = true; changed; ) {
      changed = false;
      for (const from of [...reachable]) for (const to of TRANSITIONS[from as keyof typeof TRANSITIONS]) if (!reachable.has(to)) changed = reachable.add(to) !== undefined;
    }
    expect([...reachable].sort()).toEqual([...COMMAND_STATES].sort());
    for (const state of COMMAND_STATES.filter((s) => !isSettled(s))) {
      expect(TRANSITIONS[state].some((to) => SETTLED_STATES.includes(to) || to === 'in_flight'), state).toBe(true);
    }
  });

  it('throws INTERNAL for an illegal transition', () => {
    expect(() => assertTransition('verified', 'queued')).toThrow(expect.objectContaining({ code: 'INTERNAL', details: { from: 'verified', to: 'queued' } }));
    expect(() => assertTransition('queued', 'in_flight')).not.toThrow();
  });
});
