import Database from 'better-sqlite3';
import { TetherError } from '@tether/core';
import { fromSqliteError, type ConstraintCodes } from './driver-errors.js';
import { KeyedMutex } from './keyed-mutex.js';
import {
  assertMigrationList,
  migrationChecksum,
  pendingMigrations,
  SCHEMA_MIGRATIONS_DDL,
  type AppliedMigration,
  type Migration,
} from './migrations/migration.js';
import { SQLITE_MIGRATIONS } from './migrations/sqlite.js';
import { resolveSqliteOptions, type MigrationOverride, type ResolvedSqliteOptions, type SqliteStoreOptions } from './options.js';
import {
  takeFromBucket,
  tenantFromRow,
  tokenFromRow,
  validateContext,
  validateNewTenant,
  validateTake,
  validateTenantId,
  validateTenantPatch,
  validateTokenWrite,
  validateVersion,
  type TenantRow,
  type TokenRow,
} from './records.js';
import type {
  NewTenant,
  RateLimitDecision,
  RateLimitRepo,
  Store,
  TenantPatch,
  TenantRecord,
  TenantRepo,
  TokenRecord,
  TokenRepo,
  TokenWrite,
} from './types.js';

const INSERT_TENANT = `
INSERT INTO tenants (
  id, vendor, fhir_base_url, environment, auth_method, client_id, scopes, token_endpoint,
  state, state_reason, data_key_wrapped, credentials_ciphertext, version, created_at, updated_at
) VALUES (
  @id, @vendor, @fhirBaseUrl, @environment, @authMethod, @clientId, @scopes, @tokenEndpoint,
  @state, NULL, @dataKeyWrapped, @credentialsCiphertext, 1, @now, @now
)
RETURNING *`;

const INSERT_FIRST_TOKEN = `
INSERT INTO auth_tokens (
  tenant_id, context, access_token_ciphertext, access_expires_at, access_issued_at,
  refresh_token_ciphertext, scope, version, updated_at
) VALUES (
  @tenantId, @context, @accessTokenCiphertext, @accessExpiresAt, @accessIssuedAt,
  @refreshTokenCiphertext, @scope, 1, @now
)
ON CONFLICT (tenant_id, context) DO NOTHING
RETURNING *`;

const UPDATE_TOKEN_IF_VERSION = `
UPDATE auth_tokens
SET access_token_ciphertext  = @accessTokenCiphertext,
    access_expires_at        = @accessExpiresAt,
    access_issued_at         = @accessIssuedAt,
    refresh_token_ciphertext = @refreshTokenCiphertext,
    scope                    = @scope,
    version                  = version + 1,
    updated_at               = @now
WHERE tenant_id = @tenantId AND context = @context AND version = @expectedVersion
RETURNING *`;

const SAVE_BUCKET = `
INSERT INTO rate_limit_buckets (key, tokens, updated_at) VALUES (@key, @tokens, @updatedAt)
ON CONFLICT (key) DO UPDATE SET tokens = excluded.tokens, updated_at = excluded.updated_at`;

/** What the SQLite connection is actually running with, read back from SQLite (for diagnostics and tests). */
export interface SqliteSettings {
  /** `wal` for a file (`memory` for `:memory:`). */
  readonly journalMode: string;
  /** 2 = FULL. */
  readonly synchronous: number;
  readonly foreignKeys: boolean;
  /** Milliseconds. */
  readonly busyTimeoutMs: number;
  /** `exclusive` or `normal`. */
  readonly lockingMode: string;
}

/**
 * The embedded store: one SQLite file through better-sqlite3.
 *
 * Single process by design. better-sqlite3 is synchronous, so each method runs to completion on the event loop
 * and is atomic with respect to the rest of this process; `withLock` is an in-process mutex. With `exclusive`
 * (the default) the file stays locked while the store is open, so a second process cannot share it by mistake.
 *
 * Durability: WAL journal with `synchronous=FULL`, so a committed write survives power loss, and a process killed
 * mid-transaction leaves the last committed state (SQLite rolls the WAL back to its last commit on the next open).
 *
 * The file is opened on first use (usually `migrate()`), not by the constructor.
 */
export class SqliteStore implements Store {
  readonly kind = 'sqlite' as const;
  readonly options: ResolvedSqliteOptions;
  readonly tenants: TenantRepo;
  readonly tokens: TokenRepo;
  readonly rateLimits: RateLimitRepo;

  readonly #clock: () => number;
  readonly #migrations: readonly Migration[];
  readonly #statements = new Map<string, Database.Statement>();
  readonly #locks = new KeyedMutex();
  #db: Database.Database | undefined;
  #closed = false;

  /** Throws TetherError `CONFIG_INVALID` when an option is invalid. Does not touch the file. */
  constructor(options: SqliteStoreOptions & MigrationOverride) {
    this.options = resolveSqliteOptions(options);
    this.#clock = options.clock ?? Date.now;
    this.#migrations = options.migrations ?? SQLITE_MIGRATIONS;
    assertMigrationList(this.#migrations);

    this.tenants = {
      create: async (tenant) => this.#createTenant(tenant),
      get: async (id) => this.#getTenant(id),
      list: async () => this.#run('list tenants', () => (this.#statement('SELECT * FROM tenants ORDER BY id').all() as TenantRow[]).map(tenantFromRow)),
      update: async (id, patch, expectedVersion) => this.#updateTenant(id, patch, expectedVersion),
    };
    this.tokens = {
      get: async (tenantId, context) => this.#getToken(tenantId, context),
      compareAndSet: async (tenantId, context, expectedVersion, next) => this.#compareAndSet(tenantId, context, expectedVersion, next),
      withLock: async <T>(tenantId: string, context: string, fn: () => Promise<T>) => this.#withLock(tenantId, context, fn),
    };
    this.rateLimits = {
      take: async (key, capacity, refillPerSecond, now, cost = 1) => this.#take(key, capacity, refillPerSecond, now, cost),
    };
  }

  async migrate(): Promise<void> {
    this.#run('migrate', (db) => {
      db.exec(SCHEMA_MIGRATIONS_DDL);
      // One migration per IMMEDIATE transaction, re-reading what is applied inside it: another connection that
      // migrates at the same time (only possible with `exclusive: false`) waits on the write lock, then sees our
      // rows and skips them.
      const applyNext = db.transaction((): boolean => {
        const applied = db.prepare('SELECT version, name, checksum FROM schema_migrations ORDER BY version').all() as AppliedMigration[];
        const next = pendingMigrations(this.#migrations, applied)[0];
        if (!next) return false;
        try {
          db.exec(next.sql);
        } catch (err) {
          const mapped = fromSqliteError(err, 'migrate');
          if (mapped.code === 'STORE_UNAVAILABLE') throw mapped;
          throw new TetherError('STORE_MIGRATION_FAILED', `Migration ${next.version} (${next.name}) failed; nothing of it was applied.`, {
            cause: err,
            details: { version: next.version },
          });
        }
        db.prepare('INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?, ?, ?, ?)').run(
          next.version,
          next.name,
          migrationChecksum(next),
          this.#clock(),
        );
        return true;
      });
      while (applyNext.immediate()) {
        // Applied one; look for the next.
      }
    });
  }

  /** Closes the file. Idempotent; every later call fails with `STORE_UNAVAILABLE`. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#statements.clear();
    this.#db?.close();
    this.#db = undefined;
  }

  /** Reads back the connection's pragmas. */
  async settings(): Promise<SqliteSettings> {
    return this.#run('read settings', (db) => ({
      journalMode: String(db.pragma('journal_mode', { simple: true })),
      synchronous: Number(db.pragma('synchronous', { simple: true })),
      foreignKeys: Number(db.pragma('foreign_keys', { simple: true })) === 1,
      busyTimeoutMs: Number(db.pragma('busy_timeout', { simple: true })),
      lockingMode: String(db.pragma('locking_mode', { simple: true })),
    }));
  }

  #open(): Database.Database {
    if (this.#closed) throw new TetherError('STORE_UNAVAILABLE', 'The store is closed.');
    if (this.#db) return this.#db;
    const { path, busyTimeoutMs, exclusive } = this.options;
    let db: Database.Database | undefined;
    try {
      db = new Database(path, { timeout: busyTimeoutMs });
      db.pragma(`busy_timeout = ${busyTimeoutMs}`);
      // Must precede the first WAL access: SQLite then keeps the WAL index in process memory and never shares it.
      if (exclusive && path !== ':memory:') db.pragma('locking_mode = EXCLUSIVE');
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = FULL');
      db.pragma('foreign_keys = ON');
      // Take the exclusive lock now, at open, rather than at the first write: a second process fails here.
      if (exclusive && path !== ':memory:') db.exec('BEGIN EXCLUSIVE; COMMIT');
    } catch (err) {
      db?.close();
      const code = String((err as { code?: unknown }).code ?? 'unknown');
      throw new TetherError('STORE_UNAVAILABLE', `The SQLite database could not be opened (${code}); is another process using it, or is its directory missing?`, {
        cause: err,
      });
    }
    this.#db = db;
    return db;
  }

  /** Runs synchronous work against the connection, mapping driver errors. */
  #run<T>(action: string, work: (db: Database.Database) => T, constraints?: ConstraintCodes): T {
    const db = this.#open();
    try {
      return work(db);
    } catch (err) {
      throw fromSqliteError(err, action, constraints);
    }
  }

  /** Prepared statements are cached per SQL text (they stay valid across schema changes: SQLite re-prepares). */
  #statement(sql: string): Database.Statement {
    let statement = this.#statements.get(sql);
    if (!statement) {
      statement = this.#open().prepare(sql);
      this.#statements.set(sql, statement);
    }
    return statement;
  }

  #createTenant(input: NewTenant): TenantRecord {
    const tenant = validateNewTenant(input);
    return this.#run(
      'create tenant',
      () => tenantFromRow(this.#statement(INSERT_TENANT).get({ ...tenant, now: this.#clock() }) as TenantRow),
      { unique: 'TENANT_EXISTS', check: 'CONFIG_INVALID' },
    );
  }

  #getTenant(id: string): TenantRecord | undefined {
    validateTenantId(id);
    const row = this.#run('get tenant', () => this.#statement('SELECT * FROM tenants WHERE id = ?').get(id) as TenantRow | undefined);
    return row && tenantFromRow(row);
  }

  #updateTenant(id: string, patch: TenantPatch, expectedVersion: number | undefined): TenantRecord | undefined {
    validateTenantId(id);
    if (expectedVersion !== undefined) validateVersion(expectedVersion, 'expectedVersion');
    const changes = validateTenantPatch(patch);
    // Column names come from a fixed map in records.ts, never from the caller; values are bound.
    const sets = changes.map((change, i) => `${change.column} = @v${i}, `).join('');
    const sql = `UPDATE tenants SET ${sets}version = version + 1, updated_at = @now WHERE id = @id${
      expectedVersion === undefined ? '' : ' AND version = @expectedVersion'
    } RETURNING *`;
    const params: Record<string, unknown> = { id, now: this.#clock(), ...(expectedVersion === undefined ? {} : { expectedVersion }) };
    changes.forEach((change, i) => (params[`v${i}`] = change.value));

    return this.#run(
      'update tenant',
      () => {
        const row = this.#statement(sql).get(params) as TenantRow | undefined;
        if (row) return tenantFromRow(row);
        // Nothing updated: a stale version (undefined, the caller re-reads and decides) or no such tenant (an
        // error, so that a retry loop cannot spin on a tenant that does not exist).
        if (this.#statement('SELECT 1 FROM tenants WHERE id = ?').get(id) === undefined) throw new TetherError('TENANT_NOT_FOUND');
        return undefined;
      },
      { check: 'CONFIG_INVALID' },
    );
  }

  #getToken(tenantId: string, context: string): TokenRecord | undefined {
    validateTenantId(tenantId);
    validateContext(context);
    const row = this.#run(
      'get token',
      () => this.#statement('SELECT * FROM auth_tokens WHERE tenant_id = ? AND context = ?').get(tenantId, context) as TokenRow | undefined,
    );
    return row && tokenFromRow(row);
  }

  #compareAndSet(tenantId: string, context: string, expectedVersion: number, next: TokenWrite): TokenRecord | undefined {
    validateTenantId(tenantId);
    validateContext(context);
    validateVersion(expectedVersion, 'expectedVersion');
    const write = validateTokenWrite(next);
    const params = { ...write, tenantId, context, now: this.#clock() };
    const row = this.#run(
      'write token',
      () =>
        (expectedVersion === 0
          ? this.#statement(INSERT_FIRST_TOKEN).get(params)
          : this.#statement(UPDATE_TOKEN_IF_VERSION).get({ ...params, expectedVersion })) as TokenRow | undefined,
      { foreignKey: 'TENANT_NOT_FOUND' },
    );
    return row && tokenFromRow(row);
  }

  async #withLock<T>(tenantId: string, context: string, fn: () => Promise<T>): Promise<T> {
    validateTenantId(tenantId);
    validateContext(context);
    if (this.#closed) throw new TetherError('STORE_UNAVAILABLE', 'The store is closed.');
    const release = await this.#locks.acquire(JSON.stringify([tenantId, context]), this.options.lockTimeoutMs);
    try {
      return await fn();
    } finally {
      release();
    }
  }

  #take(key: string, capacity: number, refillPerSecond: number, now: number, cost: number): RateLimitDecision {
    const args = validateTake(key, capacity, refillPerSecond, now, cost);
    return this.#run('take rate limit token', (db) =>
      // IMMEDIATE: the read and the write happen under SQLite's write lock, so even a second connection to the
      // file (possible with `exclusive: false`) cannot interleave between them.
      db
        .transaction(() => {
          const row = this.#statement('SELECT tokens, updated_at FROM rate_limit_buckets WHERE key = ?').get(key) as
            | { tokens: number; updated_at: number }
            | undefined;
          const { decision, next } = takeFromBucket(row && { tokens: row.tokens, updatedAt: row.updated_at }, args);
          this.#statement(SAVE_BUCKET).run({ key, tokens: next.tokens, updatedAt: next.updatedAt });
          return decision;
        })
        .immediate(),
    );
  }
}
