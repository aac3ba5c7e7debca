import { assertStoreKind, type StoreOptions } from './options.js';
import { PostgresStore } from './postgres-store.js';
import { SqliteStore } from './sqlite-store.js';
import type { Store } from './types.js';

/**
 * Builds the store chosen by `options.kind`: `sqlite` (embedded, one process) or `postgres` (distributed).
 *
 * The store is returned un-migrated and unconnected: call `migrate()` before anything else, and `close()` at
 * shutdown. Throws TetherError `CONFIG_INVALID` (naming the option, never its value) when the options are invalid;
 * connection problems surface later, from `migrate()`, as `STORE_UNAVAILABLE`.
 *
 * @example
 * ```ts
 * const store = createStore({ kind: 'postgres', connectionString: process.env.TETHER_DATABASE_URL ?? '' });
 * await store.migrate();
 * ```
 */
export function createStore(options: StoreOptions): Store {
  assertStoreKind(options);
  switch (options.kind) {
    case 'sqlite':
      return new SqliteStore(options);
    case 'postgres':
      return new PostgresStore(options);
  }
}
