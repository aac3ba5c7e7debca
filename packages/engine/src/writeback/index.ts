/**
 * Durable write-back: commands, the state machine, the worker that delivers them (DESIGN §5) and the exception
 * queue. The only entrance of this folder. See docs/writeback.md.
 */
export {
  BUSINESS_KEY_SYSTEM,
  INTERACTIONS_BY_ACTION,
  businessKeySearch,
  carriesBusinessKey,
  commandFacts,
  commandInputSchema,
  contentMatches,
  patientRefOf,
  sentContentHash,
  smartContextOf,
  stampBusinessKey,
  storedContentHash,
  submitCommand,
  type CommandInput,
  type SubmitOptions,
  type SubmitDispatch,
  type SubmitResult,
} from './command.js';
export {
  COMMAND_STATES,
  SETTLED_STATES,
  TERMINAL_STATES,
  TRANSITIONS,
  WORKING_STATES,
  assertTransition,
  canTransition,
  isSettled,
  isTerminal,
} from './state-machine.js';
export { WritebackWorker } from './worker.js';
export {
  DEFAULT_RETRY_BACKOFF_BASE_MS,
  DEFAULT_RETRY_BACKOFF_MAX_MS,
  DEFAULT_LEASE_MS,
  DEFAULT_MAX_AGE_MS,
  DEFAULT_COMMAND_MAX_ATTEMPTS,
  DEFAULT_POLL_INTERVAL_MS,
  DEFAULT_PATIENT_FAILURE_BUDGET,
  DEFAULT_PATIENT_FAILURE_WINDOW_MS,
  PATIENT_BUDGET_CACHE_MS,
  DEFAULT_VERIFY_POLLS,
  DEFAULT_VERIFY_WINDOW_MS,
  DEFAULT_WORKER_CONCURRENCY,
  DEFAULT_VENDOR_PROFILE,
  LEASE_FENCE_SLACK_MS,
  defaultVendorProfile,
  abortableSleep,
  retryDelay,
  type WritebackVendorProfile,
  type WritebackWorkerOptions,
} from './options.js';
export type { WritebackEvent } from './events.js';
export { ExceptionQueue, type EhrCopy, type EhrState, type ExceptionDetail, type OperatorAction } from './exceptions.js';
