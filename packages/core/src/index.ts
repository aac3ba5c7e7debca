export * from './errors.js';
export * from './operation-outcome.js';
export * from './stable-json.js';
export * from './smart-scopes.js';
export * from './events.js';
export * from './audit-chain.js';
export * from './command-states.js';
