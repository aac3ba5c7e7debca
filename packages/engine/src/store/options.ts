import { z } from 'zod';
import { TetherError } from '@tether/core';
import type { Migration } from './migrations/migration.js';

/** Default time a caller of `withLock` waits to enter, on both backends (milliseconds). */
export const DEFAULT_LOCK_TIMEOUT_MS = 30_000;

/** Default SQLite `busy_timeout`: how long a statement waits for another connection's write lock (milliseconds). */
export const DEFAULT_SQLITE_BUSY_TIMEOUT_MS = 5_000;
/**
 * By default the SQLite store holds an exclusive lock on the database file for as long as it is open, so a second
 * process opening the same file fails with `STORE_UNAVAILABLE` instead of silently sharing it (the embedded store's
 * locks are in-process only).
 */
export const DEFAULT_SQLITE_EXCLUSIVE = true;

/** Default size of the PostgreSQL query pool (connections). */
export const DEFAULT_PG_POOL_SIZE = 10;
/**
 * Default size of the separate PostgreSQL pool that holds advisory locks for `withLock` (connections): the number
 * of distinct (tenant, context) locks one process can hold or wait for at the same time.
 */
export const DEFAULT_PG_LOCK_POOL_SIZE = 4;
/** Default time to establish a PostgreSQL connection or to wait for a free one in the pool (milliseconds). */
export const DEFAULT_PG_CONNECT_TIMEOUT_MS = 10_000;
/** Default server-side `statement_timeout` of the query pool (milliseconds). Migrations are not limited. */
export const DEFAULT_PG_STATEMENT_TIMEOUT_MS = 15_000;
/** Default `application_name`, shown in `pg_stat_activity` (suffixed `:lock` and `:migrate` for those sessions). */
export const DEFAULT_PG_APPLICATION_NAME = 'tether';

const milliseconds = z.number().int().min(1).max(24 * 3_600_000);

const sqliteSchema = z
  .object({
    kind: z.literal('sqlite'),
    path: z.string().min(1),
    busyTimeoutMs: milliseconds.default(DEFAULT_SQLITE_BUSY_TIMEOUT_MS),
    exclusive: z.boolean().default(DEFAULT_SQLITE_EXCLUSIVE),
    lockTimeoutMs: milliseconds.default(DEFAULT_LOCK_TIMEOUT_MS),
  })
  .strict();

const postgresSchema = z
  .object({
    kind: z.literal('postgres'),
    // pg accepts `postgres://`, `postgresql://` and `socket:` URLs. The value is never echoed in errors: it may
    // hold a password.
    connectionString: z.string().regex(/^(postgres|postgresql|socket):/, 'must be a postgres:// URL'),
    poolSize: z.number().int().min(1).max(1_000).default(DEFAULT_PG_POOL_SIZE),
    lockPoolSize: z.number().int().min(1).max(1_000).default(DEFAULT_PG_LOCK_POOL_SIZE),
    connectTimeoutMs: milliseconds.default(DEFAULT_PG_CONNECT_TIMEOUT_MS),
    statementTimeoutMs: milliseconds.default(DEFAULT_PG_STATEMENT_TIMEOUT_MS),
    lockTimeoutMs: milliseconds.default(DEFAULT_LOCK_TIMEOUT_MS),
    applicationName: z.string().min(1).max(48).default(DEFAULT_PG_APPLICATION_NAME),
  })
  .strict();

const storeSchema = z.discriminatedUnion('kind', [sqliteSchema, postgresSchema]);

/** One line of the store's diagnostic log. Never holds row content, secrets or connection strings. */
export interface StoreLogLine {
  readonly msg: string;
  readonly [key: string]: unknown;
}

/** The I/O seams every store takes besides its plain options. */
export interface StoreSeams {
  /** Epoch-ms clock for `createdAt` / `updatedAt` and `schema_migrations.applied_at`. Default `Date.now`. */
  readonly clock?: () => number;
  /** Diagnostic sink (background connection errors, lost locks). Default: none. */
  readonly log?: (line: StoreLogLine) => void;
}

/**
 * Options of the embedded SQLite store.
 *
 * - `path`: database file, or `:memory:` (tests). The directory must exist.
 * - `busyTimeoutMs`: SQLite `busy_timeout` (ms), default {@link DEFAULT_SQLITE_BUSY_TIMEOUT_MS}.
 * - `exclusive`: hold an exclusive lock on the file while open, default {@link DEFAULT_SQLITE_EXCLUSIVE}.
 * - `lockTimeoutMs`: how long `withLock` waits to enter (ms), default {@link DEFAULT_LOCK_TIMEOUT_MS}.
 */
export type SqliteStoreOptions = z.input<typeof sqliteSchema> & StoreSeams;

/**
 * Options of the distributed PostgreSQL store.
 *
 * - `connectionString`: `postgres://user:password@host:port/database`.
 * - `poolSize`: query pool connections, default {@link DEFAULT_PG_POOL_SIZE}.
 * - `lockPoolSize`: advisory-lock connections, default {@link DEFAULT_PG_LOCK_POOL_SIZE}.
 * - `connectTimeoutMs`: connect or wait for a pooled connection (ms), default {@link DEFAULT_PG_CONNECT_TIMEOUT_MS}.
 * - `statementTimeoutMs`: server-side statement timeout (ms), default {@link DEFAULT_PG_STATEMENT_TIMEOUT_MS}.
 * - `lockTimeoutMs`: how long `withLock` waits to enter (ms), default {@link DEFAULT_LOCK_TIMEOUT_MS}.
 * - `applicationName`: `application_name` of the sessions, default {@link DEFAULT_PG_APPLICATION_NAME}.
 */
export type PostgresStoreOptions = z.input<typeof postgresSchema> & StoreSeams;

/** Options of {@link createStore}: pick a backend with `kind`. */
export type StoreOptions = SqliteStoreOptions | PostgresStoreOptions;

export type ResolvedSqliteOptions = Readonly<z.output<typeof sqliteSchema>>;
export type ResolvedPostgresOptions = Readonly<z.output<typeof postgresSchema>>;

/**
 * Test seam of the implementation classes (not of `createStore`): the migration list to apply instead of the
 * released one, to prove that an edited or unknown migration is refused.
 */
export interface MigrationOverride {
  readonly migrations?: readonly Migration[];
}

function parse<S extends z.ZodType>(schema: S, input: unknown): Readonly<z.output<S>> {
  const parsed = schema.safeParse(input);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    // Name the option and the rule, never the value (a connection string may carry a password).
    throw new TetherError('CONFIG_INVALID', `Invalid store option '${issue?.path.join('.') ?? ''}': ${issue?.message ?? ''}`);
  }
  return Object.freeze(parsed.data);
}

/** Separates the serialisable options from the seams, validates them and freezes the result. */
export function resolveSqliteOptions(input: SqliteStoreOptions & MigrationOverride): ResolvedSqliteOptions {
  const { clock: _clock, log: _log, migrations: _migrations, ...plain } = input;
  return parse(sqliteSchema, plain);
}

/** Separates the serialisable options from the seams, validates them and freezes the result. */
export function resolvePostgresOptions(input: PostgresStoreOptions & MigrationOverride): ResolvedPostgresOptions {
  const { clock: _clock, log: _log, migrations: _migrations, ...plain } = input;
  return parse(postgresSchema, plain);
}

/** Validates the backend choice only; each implementation validates its own options in full. */
export function assertStoreKind(input: unknown): asserts input is StoreOptions {
  if (typeof input !== 'object' || input === null) throw new TetherError('CONFIG_INVALID', 'Store options must be an object.');
  const { clock: _clock, log: _log, ...plain } = input as Record<string, unknown>;
  parse(storeSchema, plain);
}
