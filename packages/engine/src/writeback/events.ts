import type { CommandState } from '../store/index.js';

/**
 * Lifecycle events of the write-back worker. They carry ids, states and reason codes only: never the resource,
 * the business key or anything else that may be PHI.
 *
 * - `command:leased`: the worker took the lease (start of an attempt).
 * - `command:releasing`: the worker is about to commit the transition that gives the lease up (emitted before
 *   the commit, so an observer never sees the next lease of the same business key before it).
 * - `command:settled`: the attempt ended; `state` is where the command stands now.
 * - `command:lease-lost`: a compare-and-swap failed: the lease expired and another worker owns the command.
 * - `attempt:error`: an unexpected failure inside an attempt (`code` only).
 */
export interface WritebackEvent {
  readonly name: 'command:leased' | 'command:releasing' | 'command:settled' | 'command:lease-lost' | 'attempt:error';
  readonly workerId: string;
  readonly commandId: string;
  readonly tenantId: string;
  readonly attempt: number;
  readonly state?: CommandState;
  readonly reason?: string;
}
