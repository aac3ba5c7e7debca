/**
 * The command state machine (DESIGN §5), pure. The store persists states and guards each change with a
 * compare-and-swap; this module decides which changes are legal at all. Every transition the worker or the
 * exception queue makes goes through {@link assertTransition}.
 *
 * ```
 *               lease                 2xx / found                read back equal
 *   queued ───────────▶ in_flight ─────────────────▶ acknowledged ───────────────▶ verified
 *     ▲  │                 │ │ │ │                      │   │
 *     │  │ cancel          │ │ │ └─ sent, no answer ─▶ unknown ── found ──▶ acknowledged
 *     │  ▼                 │ │ │                        │
 *     │ cancelled          │ │ └─ 412/409 (update) ─▶ conflict ── re-read, once ──▶ in_flight
 *     │                    │ └─ 4xx ─▶ rejected ──── operator retry ───▶ queued
 *     │                    ├─ not sent / 429 / absent after the window ─▶ retry_wait ── lease ──▶ in_flight
 *     │                    ├─ newer sibling verified ─▶ superseded
 *     │                    └─ budget, mismatch, duplicate ─▶ needs_review
 *     └──────────── operator retry ─────────── needs_review ── resolve ──▶ verified, cancel ──▶ cancelled
 * ```
 *
 * A worker that finds a working state (`unknown`, `acknowledged`, `conflict`) after a lease expired moves it
 * back to `in_flight` and starts the attempt with reconcile-before-write.
 */
import { TetherError } from '@tether/core';
import { COMMAND_STATE_VALUES, TERMINAL_COMMAND_STATES, LEASED_WORKING_STATES, type CommandState } from '../store/index.js';

/** Every state (DESIGN §5 order): the same list the store's CHECK constraints use. */
export const COMMAND_STATES = COMMAND_STATE_VALUES;

/** The legal transitions: `from → [to...]`. Anything else is a bug. */
export const TRANSITIONS: Readonly<Record<CommandState, readonly CommandState[]>> = Object.freeze({
  queued: ['in_flight', 'cancelled'],
  in_flight: ['acknowledged', 'unknown', 'retry_wait', 'rejected', 'conflict', 'needs_review', 'superseded'],
  unknown: ['in_flight', 'acknowledged', 'retry_wait', 'needs_review'],
  // -> superseded: the EHR holds the content of a newer generation of the same key (it overtook this one).
  acknowledged: ['in_flight', 'verified', 'retry_wait', 'needs_review', 'superseded'],
  conflict: ['in_flight', 'retry_wait', 'needs_review'],
  retry_wait: ['in_flight', 'cancelled'],
  needs_review: ['queued', 'verified', 'cancelled'],
  rejected: ['queued', 'cancelled'],
  verified: [],
  superseded: [],
  cancelled: [],
});

/** No way out: the command is done for good. */
export const TERMINAL_STATES: readonly CommandState[] = TERMINAL_COMMAND_STATES;
/**
 * Nothing more happens without an operator: terminal states plus `rejected` and `needs_review` (the exception
 * queue). A command in any other state is still owned by the workers.
 */
export const SETTLED_STATES: readonly CommandState[] = ['verified', 'superseded', 'cancelled', 'rejected', 'needs_review'];
/** States in which a worker holds the command under a lease. */
export const WORKING_STATES: readonly CommandState[] = LEASED_WORKING_STATES;

export const canTransition = (from: CommandState, to: CommandState): boolean => TRANSITIONS[from].includes(to);
export const isTerminal = (state: CommandState): boolean => TERMINAL_STATES.includes(state);
export const isSettled = (state: CommandState): boolean => SETTLED_STATES.includes(state);

/** Throws `INTERNAL` for an illegal transition: it is a bug in the engine, never the caller's fault. */
export function assertTransition(from: CommandState, to: CommandState): void {
  if (!canTransition(from, to)) {
    throw new TetherError('INTERNAL', `Illegal command transition ${from} -> ${to}.`, { details: { from, to } });
  }
}
