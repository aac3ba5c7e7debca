export { buildCli, main, ExitCode, DEFAULT_DATA_DIR } from './cli/main.js';
export * from './auth/index.js';
export * from './store/index.js';
export * from './client/index.js';
export * from './writeback/index.js';
export * from './audit/index.js';
export * from './observability/index.js';
export * from './api/index.js';
export * from './service/index.js';
// Both the store and the client define a rate-limit decision; the store's is the persisted one.
export type { RateLimitDecision } from './store/index.js';
export type { RateLimitDecision as ClientRateLimitDecision } from './client/index.js';
