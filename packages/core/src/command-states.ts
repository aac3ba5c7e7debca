/**
 * The states of a write-back command (DESIGN §5; docs/writeback.md), in that order. Shared by the engine's store
 * (its CHECK constraints list the same words) and by the console, which reads them in API answers.
 */
export const COMMAND_STATE_VALUES = [
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
] as const;

/** One state of {@link COMMAND_STATE_VALUES}. */
export type CommandState = (typeof COMMAND_STATE_VALUES)[number];
