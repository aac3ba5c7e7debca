/**
 * Seeded, replayable fault injection for the sandbox. See `docs/faults.md`.
 */
export * from './injector.js';
export * from './profile.js';
export * from './rng.js';
export type * from './types.js';
