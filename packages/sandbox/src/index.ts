export * from './interactions.js';
export type * from './faults/types.js';
export type * from './auth/types.js';
