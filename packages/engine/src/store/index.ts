/**
 * The engine's store: tenants, token state, shared rate limits (and, later, commands and the outbox) on SQLite
 * (embedded) or PostgreSQL (distributed). The only entrance of this folder. See docs/store.md.
 */
export { createStore } from './create-store.js';
export { SqliteStore, type SqliteSettings } from './sqlite-store.js';
export { PostgresStore, advisoryLockKey, MIGRATION_LOCK_KEY } from './postgres-store.js';
export {
  DEFAULT_LOCK_TIMEOUT_MS,
  DEFAULT_SQLITE_BUSY_TIMEOUT_MS,
  DEFAULT_SQLITE_EXCLUSIVE,
  DEFAULT_PG_POOL_SIZE,
  DEFAULT_PG_LOCK_POOL_SIZE,
  DEFAULT_PG_CONNECT_TIMEOUT_MS,
  DEFAULT_PG_STATEMENT_TIMEOUT_MS,
  DEFAULT_PG_APPLICATION_NAME,
  type StoreOptions,
  type SqliteStoreOptions,
  type PostgresStoreOptions,
  type StoreSeams,
  type StoreLogLine,
} from './options.js';
export { type Migration, migrationChecksum } from './migrations/migration.js';
export { SQLITE_MIGRATIONS } from './migrations/sqlite.js';
export { POSTGRES_MIGRATIONS } from './migrations/postgres.js';
export type * from './types.js';
export {
  validateAuditEntry,
  MAX_AUDIT_DETAILS_CHARS,
  DEFAULT_AUDIT_COPY_LIMIT,
  MAX_AUDIT_COPY_LIMIT,
  DEFAULT_AUDIT_LIST_LIMIT,
  MAX_AUDIT_LIST_LIMIT,
} from './audit.js';
// The command states, as the store's CHECK constraints list them (the state machine reuses the same list).
export { COMMAND_STATE_VALUES, TERMINAL_STATES as TERMINAL_COMMAND_STATES, WORKING_STATES as LEASED_WORKING_STATES } from './command-rows.js';
