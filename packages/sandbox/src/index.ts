export * from './interactions.js';
export * from './profile.js';
export { startSandbox, FHIR_BASE_PATH, OAUTH_BASE_PATH, DEFAULT_TOKEN_TTL_SECONDS } from './server.js';
export type { Sandbox, SandboxOptions, SandboxLogLine } from './server.js';
export { MemoryStore } from './fhir/store.js';
export type { WriteLogEntry, VersionRecord } from './fhir/store.js';
export * from './faults/index.js';
export type * from './auth/types.js';
