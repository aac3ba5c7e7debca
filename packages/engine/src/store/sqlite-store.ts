import { setImmediate } from 'node:timers';
import Database from 'better-sqlite3';
import { TetherError } from '@tether/core';
import {
  attemptFromRow,
  commandFromRow,
  idempotentReplay,
  leasedFromRow,
  openSiblingSql,
  newerSiblingVerifiedSql,
  eventFromRow,
  patchColumns,
  planSteps,
  sqlStateList,
  validateActor,
  validateAttempt,
  validateCommandId,
  validateFilter,
  validateLease,
  validateNewCommand,
  validatePatientFailures,
  validateSubmitLease,
  TENANT_CHANGED,
  WAITING_STATES,
  WORKING_STATES,
  type AttemptRow,
  type CommandRow,
  type EventRow,
} from './command-rows.js';
import { fromSqliteError, type ConstraintCodes } from './driver-errors.js';
import { apiKeyRepo } from './api-keys.js';
import { auditRepo } from './audit.js';
import { commandStatsRepo } from './command-stats.js';
import { driveSync, sqlTx, type SqlRunner } from './sql-runner.js';
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
  ApiKeyRepo,
  AuditRepo,
  CommandStatsRepo,
  CommandAttemptRecord,
  CommandEventRecord,
  CommandFilter,
  CommandPatch,
  CommandRecord,
  CommandRepo,
  CommandStep,
  InsertResult,
  LeasedCommand,
  LeaseRequest,
  NewCommand,
  NewCommandEvent,
  NewTenant,
  RateLimitDecision,
  SubmitLease,
  TenantChanged,
  TenantCheck,
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

const INSERT_COMMAND = `
INSERT INTO commands (
  id, tenant_id, context, action, resource_type, business_key, idempotency_key, payload_hash, resource, priority,
  state, state_reason, attempts, attempt_seq, budget_started_at, next_attempt_at, lease_owner, lease_expires_at,
  ehr_id, ehr_version, source_timestamp, generation, requested_by, deadline_at, created_at, updated_at, version,
  patient_ref
) VALUES (
  @id, @tenantId, @context, @action, @resourceType, @businessKey, @idempotencyKey, @payloadHash, @resource, @priority,
  @state, NULL, @attempts, @attempts, @now, @now, @leaseOwner, @leaseExpiresAt,
  NULL, @ehrVersion, @sourceTimestamp,
  (SELECT COALESCE(MAX(generation), 0) + 1 FROM commands WHERE tenant_id = @tenantId AND business_key = @businessKey),
  @requestedBy, @deadlineAt, @now, @now, 1,
  @patientRef
)`;

/** The tenant's version and state, for an insert with a {@link TenantCheck}. */
const TENANT_VERSION = 'SELECT version, state FROM tenants WHERE id = ?';

/** The columns of a command inserted without a lease. */
const QUEUED = { state: 'queued', attempts: 0, leaseOwner: null, leaseExpiresAt: null } as const;

/** Whether a submit lease may be taken: no other command of the key in a non-terminal state. */
const OPEN_SIBLING = `SELECT ${openSiblingSql('@tenantId', '@businessKey')} AS open`;

/**
 * The hot write paths (insert, lease, transition) do not use `RETURNING`: SQLite materialises a RETURNING result in
 * an ephemeral table, which cost ~55 µs a statement here against ~9 µs for reading the row back by primary key in
 * the same transaction (measured with better-sqlite3 on this machine; docs/benchmarks.md).
 */
const COMMAND_BY_ID = 'SELECT * FROM commands WHERE id = ?';

const INSERT_EVENT = `
INSERT INTO command_events (command_id, at, kind, actor, from_state, to_state, reason)
VALUES (@commandId, @at, @kind, @actor, @fromState, @toState, @reason)`;

/**
 * Due commands, best first: waiting ones whose time has come, and working ones whose lease expired (their worker
 * died or stalled). A command is skipped while another command of its (tenant, business key) holds a live lease:
 * at most one attempt in flight per clinical object (DESIGN §5 step 1) — unless `@unsafe` (sensitivity testing).
 *
 * One branch per index, each bounded in its index order, so that a lease reads a few index entries instead of the
 * whole table (verified commands pile up; the due ones are few): waiting commands through `commands_due_priority`
 * (migration 5), once for the earliest due batch commands and once for the earliest due interactive ones (however
 * much batch work is due before them; the two sets are disjoint, so no row is read twice), expired leases through
 * `commands_leased`, and the anomaly of a working state without a lease through `commands_tenant_state` (per
 * tenant). The outer query puts them in the final order. Duplicates between branches are harmless (the caller
 * takes one per business key).
 */
const KEY_FREE = `(@unsafe = 1 OR NOT EXISTS (
    SELECT 1 FROM commands AS sibling
    WHERE sibling.tenant_id = c.tenant_id
      AND sibling.business_key = c.business_key
      AND sibling.id <> c.id
      AND sibling.lease_owner IS NOT NULL
      AND sibling.lease_expires_at > @now))`;
const CANDIDATE_COLUMNS = 'c.id, c.tenant_id, c.business_key, c.priority, c.next_attempt_at, c.generation, c.created_at';
const LEASE_CANDIDATES = `
SELECT DISTINCT id, tenant_id, business_key, priority, next_attempt_at, generation, created_at FROM (
  SELECT * FROM (SELECT ${CANDIDATE_COLUMNS} FROM commands AS c
    WHERE c.priority = 'batch' AND c.state IN ${sqlStateList(WAITING_STATES)} AND c.next_attempt_at <= @now
      AND (@tenantId IS NULL OR c.tenant_id = @tenantId) AND ${KEY_FREE}
    ORDER BY c.next_attempt_at LIMIT @scan)
  UNION ALL
  SELECT * FROM (SELECT ${CANDIDATE_COLUMNS} FROM commands AS c
    WHERE c.priority = 'interactive' AND c.state IN ${sqlStateList(WAITING_STATES)} AND c.next_attempt_at <= @now
      AND (@tenantId IS NULL OR c.tenant_id = @tenantId) AND ${KEY_FREE}
    ORDER BY c.next_attempt_at LIMIT @scan)
  UNION ALL
  SELECT * FROM (SELECT ${CANDIDATE_COLUMNS} FROM commands AS c
    WHERE c.lease_owner IS NOT NULL AND c.lease_expires_at <= @now AND c.state IN ${sqlStateList(WORKING_STATES)}
      AND (@tenantId IS NULL OR c.tenant_id = @tenantId) AND ${KEY_FREE}
    ORDER BY c.lease_expires_at LIMIT @scan)
  UNION ALL
  SELECT * FROM (SELECT ${CANDIDATE_COLUMNS} FROM commands AS c
    WHERE c.tenant_id IN (SELECT id FROM tenants) AND c.state IN ${sqlStateList(WORKING_STATES)}
      AND (c.lease_expires_at IS NULL OR (c.lease_owner IS NULL AND c.lease_expires_at <= @now))
      AND (@tenantId IS NULL OR c.tenant_id = @tenantId) AND ${KEY_FREE}
    LIMIT @scan)
)
ORDER BY CASE priority WHEN 'interactive' THEN 0 ELSE 1 END, next_attempt_at, generation, created_at, id
LIMIT @scan`;

/** Takes the lease; a waiting command becomes in_flight, a working one keeps its state (the worker resumes it). */
const LEASE_ONE = `
UPDATE commands
SET state            = CASE WHEN state IN ${sqlStateList(WAITING_STATES)} THEN 'in_flight' ELSE state END,
    lease_owner      = @owner,
    lease_expires_at = @until,
    attempts         = attempts + 1,
    attempt_seq      = attempt_seq + 1,
    version          = version + 1,
    updated_at       = @updatedAt
WHERE id = @id`;

/** The leased row read back, with whether a newer sibling is verified (DESIGN §5 step 8). */
const LEASED_BY_ID = `SELECT *, ${newerSiblingVerifiedSql('commands', 'sqlite')} AS newer_sibling_verified FROM commands WHERE id = ?`;

const EXTEND_LEASE = `
UPDATE commands
SET lease_expires_at = @until, version = version + 1, updated_at = @updatedAt
WHERE id = @id AND lease_owner = @owner AND version = @expectedVersion AND lease_expires_at > @now`;

const INSERT_ATTEMPT = `
INSERT INTO command_attempts (
  command_id, n, worker, started_at, ended_at, outcome, error_code, error_category, ehr_status, verification,
  correlation_id, steps, patient_failure
) VALUES (
  @commandId, @n, @worker, @startedAt, @endedAt, @outcome, @errorCode, @errorCategory, @ehrStatus, @verification,
  @correlationId, @steps, @patientFailure
)
ON CONFLICT (command_id, n) DO NOTHING`;

/** An attempt's bind parameters (SQLite has no boolean: 0/1). */
const attemptParams = (a: CommandAttemptRecord): Record<string, unknown> => ({ ...a, patientFailure: a.patientFailure ? 1 : 0 });

/**
 * The per-patient failure count (see {@link CommandRepo.patientFailures}): flagged attempts of the patient's
 * commands since @since and after the patient's latest operator retry. Driven by `commands_patient` (or the small
 * partial index of flagged attempts); the retry lookup by the partial index of `operator:retry` events in the window.
 */
const PATIENT_FAILURES = `
SELECT COUNT(*) AS n
FROM command_attempts AS a JOIN commands AS c ON c.id = a.command_id
WHERE c.tenant_id = @tenantId AND c.patient_ref = @patientRef
  AND a.patient_failure = 1 AND a.started_at >= @since
  AND a.started_at > COALESCE((
    SELECT MAX(e.at) FROM command_events AS e JOIN commands AS r ON r.id = e.command_id
    WHERE e.kind = 'operator:retry' AND e.at >= @since AND r.tenant_id = @tenantId AND r.patient_ref = @patientRef), -1)`;

const SAVE_BUCKET = `
INSERT INTO rate_limit_buckets (key, tokens, updated_at) VALUES (@key, @tokens, @updatedAt)
ON CONFLICT (key) DO UPDATE SET tokens = excluded.tokens, updated_at = excluded.updated_at`;

/** A command write waiting for the next group commit. */
interface QueuedWrite {
  readonly action: string;
  readonly work: (db: Database.Database) => unknown;
  readonly constraints: ConstraintCodes | undefined;
  readonly resolve: (value: unknown) => void;
  readonly reject: (error: unknown) => void;
}

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
  readonly commands: CommandRepo;
  readonly apiKeys: ApiKeyRepo;
  readonly audit: AuditRepo;
  readonly commandStats: CommandStatsRepo;
  /** Dialect-neutral access for the simple repos (API keys, audit). */
  readonly #sql: SqlRunner;

  readonly #clock: () => number;
  readonly #migrations: readonly Migration[];
  readonly #statements = new Map<string, Database.Statement>();
  readonly #locks = new KeyedMutex();
  readonly #writes: QueuedWrite[] = [];
  #flushScheduled = false;
  #flushSoon = false;
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
    this.commands = {
      // One implementation for both overloads (with a TenantCheck it may answer TenantChanged).
      insert: (async (command: NewCommand, actor: string, lease?: SubmitLease, check?: TenantCheck) => this.#insertCommand(command, actor, lease, check)) as CommandRepo['insert'],
      get: async (id) => this.#getCommand(id),
      list: async (filter) => this.#listCommands(filter ?? {}),
      lease: async (request) => this.#lease(request),
      extendLease: async (id, owner, expectedVersion, now, until) => this.#extendLease(id, owner, expectedVersion, now, until),
      transition: async (id, expectedVersion, patch, event) => this.#transition(id, expectedVersion, patch, event),
      transitionSteps: async (id, expectedVersion, steps, attempt) => this.#transitionSteps(id, expectedVersion, steps, attempt),
      appendAttempt: async (attempt) => this.#appendAttempt(attempt),
      attempts: async (commandId) => this.#attempts(commandId),
      events: async (commandId) => this.#events(commandId),
      patientFailures: async (tenantId, patientRef, since) => this.#patientFailures(tenantId, patientRef, since),
    };
    this.#sql = {
      dialect: 'sqlite',
      all: async <R>(action: string, sql: string, params: readonly unknown[] = []) => this.#run(action, () => this.#statement(sql).all(...params) as R[]),
      run: async (action, sql, params = []) => this.#run(action, () => this.#statement(sql).run(...params).changes),
      // The whole program runs inside one synchronous IMMEDIATE transaction: nothing else can interleave.
      transaction: async (action, program) =>
        this.#run(action, (db) =>
          db
            .transaction(() =>
              driveSync(program(sqlTx), (step) => (step.kind === 'all' ? this.#statement(step.sql).all(...step.params) : this.#statement(step.sql).run(...step.params).changes)),
            )
            .immediate(),
        ),
    };
    this.apiKeys = apiKeyRepo(this.#sql, this.#clock);
    this.audit = auditRepo(this.#sql);
    this.commandStats = commandStatsRepo(this.#sql);
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
    // Writes already accepted are committed (or fail) before the file closes.
    if (this.#writes.length > 0) this.#flushWrites();
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
      // Statement journals and RETURNING results in memory, not in temporary files (halved the cost of a write
      // statement inside the group-commit savepoints here; docs/benchmarks.md).
      db.pragma('temp_store = MEMORY');
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

  /**
   * Group commit for the write-back tables. Worker writes (lease, extension, transitions, attempts) are queued and
   * run together at the next turn of the event loop (`setImmediate`), each in its own savepoint inside ONE
   * `BEGIN IMMEDIATE` transaction, so one fsync (`synchronous=FULL`) makes them all durable. A submission
   * (`now: true`: someone is waiting to hear "saved") does not wait for the next turn: it commits as soon as the
   * current job's microtasks have run (submissions made together share that commit), taking the queued writes
   * along. Every caller's promise settles only after the commit that holds its write: durability is unchanged, only
   * the disk flushes are shared. One write failing rolls back its savepoint alone; a failing commit rejects them
   * all (none was applied).
   */
  #write<T>(action: string, work: (db: Database.Database) => T, constraints?: ConstraintCodes, now = false): Promise<T> {
    if (this.#closed) return Promise.reject(new TetherError('STORE_UNAVAILABLE', 'The store is closed.'));
    const promise = new Promise<T>((resolve, reject) => {
      this.#writes.push({ action, work, constraints, resolve: resolve as (value: unknown) => void, reject });
    });
    if (now && !this.#flushSoon) {
      this.#flushSoon = true;
      queueMicrotask(() => {
        this.#flushSoon = false;
        this.#flushWrites();
      });
    } else if (!now && !this.#flushScheduled) {
      this.#flushScheduled = true;
      setImmediate(() => {
        this.#flushScheduled = false;
        this.#flushWrites();
      });
    }
    return promise;
  }

  #flushWrites(): void {
    const batch = this.#writes.splice(0);
    if (batch.length === 0) return;
    const outcomes: { ok: boolean; value?: unknown; error?: unknown }[] = [];
    const runOne = (op: QueuedWrite): void => {
      try {
        outcomes.push({ ok: true, value: this.#run(op.action, op.work, op.constraints) });
      } catch (error) {
        outcomes.push({ ok: false, error });
      }
    };
    try {
      if (batch.length === 1) runOne(batch[0] as QueuedWrite);
      else {
        this.#run('group commit', (db) => {
          db.transaction(() => batch.forEach(runOne)).immediate();
        });
      }
    } catch (err) {
      for (const op of batch) op.reject(err);
      return;
    }
    batch.forEach((op, i) => {
      const outcome = outcomes[i];
      if (outcome?.ok) op.resolve(outcome.value);
      else op.reject(outcome?.error);
    });
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

  // ---------------------------------------------------------------------------------------------- commands

  #insertCommand(input: NewCommand, actor: string, submitLease: SubmitLease | undefined, check: TenantCheck | undefined): Promise<InsertResult | TenantChanged> {
    const c = validateNewCommand(input);
    validateActor(actor);
    const lease = validateSubmitLease(submitLease);
    if (check !== undefined) validateVersion(check.version, 'tenant.version');
    return this.#write(
      'insert command',
      (db) =>
        // IMMEDIATE: the tenant check, the idempotency check, the generation and the insert happen under SQLite's
        // write lock.
        db
          .transaction((): InsertResult | TenantChanged => {
            if (check !== undefined) {
              const tenant = this.#statement(TENANT_VERSION).get(c.tenantId) as { version: number; state: string } | undefined;
              if (tenant?.version !== check.version || tenant.state !== 'active') return TENANT_CHANGED;
            }
            if (c.idempotencyKey !== null) {
              const existing = this.#statement('SELECT * FROM commands WHERE tenant_id = ? AND idempotency_key = ?').get(c.tenantId, c.idempotencyKey) as
                | CommandRow
                | undefined;
              if (existing) return idempotentReplay(commandFromRow(existing), c.payloadHash);
            }
            const now = this.#clock();
            const leased =
              lease !== undefined &&
              (lease.unsafeIgnoreKeyLock === true || (this.#statement(OPEN_SIBLING).get({ tenantId: c.tenantId, businessKey: c.businessKey }) as { open: number }).open === 0);
            const state = leased ? { state: 'in_flight', attempts: 1, leaseOwner: lease.owner, leaseExpiresAt: lease.now + lease.leaseMs } : QUEUED;
            this.#statement(INSERT_COMMAND).run({ ...c, resource: JSON.stringify(c.resource), now, ...state });
            // The `submitted` event says `queued` either way: a lease is not an event (as in `lease`).
            this.#statement(INSERT_EVENT).run({ commandId: c.id, at: now, kind: 'submitted', actor, fromState: null, toState: 'queued', reason: null });
            if (!leased) return { command: commandFromRow(this.#statement(COMMAND_BY_ID).get(c.id) as CommandRow), created: true };
            const row = leasedFromRow(this.#statement(LEASED_BY_ID).get(c.id) as CommandRow & { newer_sibling_verified: number });
            return { command: row, created: true, leased: row };
          })
          .immediate(),
      { foreignKey: 'TENANT_NOT_FOUND', unique: 'COMMAND_INVALID' },
      true,
    );
  }

  #getCommand(id: string): CommandRecord | undefined {
    validateCommandId(id);
    const row = this.#run('get command', () => this.#statement('SELECT * FROM commands WHERE id = ?').get(id) as CommandRow | undefined);
    return row && commandFromRow(row);
  }

  #listCommands(filter: CommandFilter): CommandRecord[] {
    const f = validateFilter(filter);
    const where: string[] = [];
    const params: Record<string, unknown> = { limit: f.limit };
    if (f.tenantId !== undefined) {
      where.push('tenant_id = @tenantId');
      params['tenantId'] = f.tenantId;
    }
    if (f.businessKey !== undefined) {
      where.push('business_key = @businessKey');
      params['businessKey'] = f.businessKey;
    }
    if (f.patientRef !== undefined) {
      where.push('patient_ref = @patientRef');
      params['patientRef'] = f.patientRef;
    }
    if (f.states !== undefined) {
      // States are validated against the fixed list; bound as parameters all the same. With a business key or a
      // patient, `+state` keeps SQLite on the business-key index or `commands_patient` (a handful of rows) instead
      // of (tenant, state), which would read every verified command of the tenant.
      where.push(`${f.businessKey !== undefined || f.patientRef !== undefined ? '+' : ''}state IN (${f.states.map((_, i) => `@s${i}`).join(', ')})`);
      f.states.forEach((state, i) => (params[`s${i}`] = state));
    }
    const sql = `SELECT * FROM commands${where.length > 0 ? ` WHERE ${where.join(' AND ')}` : ''} ORDER BY created_at, id LIMIT @limit`;
    return this.#run('list commands', () => (this.#statement(sql).all(params) as CommandRow[]).map(commandFromRow));
  }

  #lease(request: LeaseRequest): Promise<LeasedCommand[]> {
    const r = validateLease(request);
    return this.#write('lease commands', (db) =>
      db
        .transaction((): LeasedCommand[] => {
          // Scan a few more candidates than wanted: two of one business key can be due at once, and only one of
          // them may be leased.
          const unsafe = r.unsafeIgnoreKeyLock === true;
          const candidates = this.#statement(LEASE_CANDIDATES).all({ now: r.now, tenantId: r.tenantId ?? null, scan: r.limit * 2 + 4, unsafe: unsafe ? 1 : 0 }) as {
            id: string;
            tenant_id: string;
            business_key: string;
          }[];
          const keys = new Set<string>();
          const leased: LeasedCommand[] = [];
          for (const candidate of candidates) {
            if (leased.length >= r.limit) break;
            const key = JSON.stringify([candidate.tenant_id, candidate.business_key]);
            if (keys.has(key) && !unsafe) continue;
            keys.add(key);
            this.#statement(LEASE_ONE).run({ id: candidate.id, owner: r.owner, until: r.now + r.leaseMs, updatedAt: this.#clock() });
            const row = this.#statement(LEASED_BY_ID).get(candidate.id) as CommandRow & { newer_sibling_verified: number };
            leased.push(leasedFromRow(row));
          }
          return leased;
        })
        .immediate(),
    );
  }

  #extendLease(id: string, owner: string, expectedVersion: number, now: number, until: number): Promise<CommandRecord | undefined> {
    validateCommandId(id);
    validateActor(owner);
    validateVersion(expectedVersion, 'expectedVersion');
    validateVersion(now, 'now');
    validateVersion(until, 'until');
    return this.#write('extend lease', () => {
      if (this.#statement(EXTEND_LEASE).run({ id, owner, expectedVersion, now, until, updatedAt: this.#clock() }).changes !== 1) return undefined;
      return commandFromRow(this.#statement(COMMAND_BY_ID).get(id) as CommandRow);
    });
  }

  #transition(id: string, expectedVersion: number, patch: CommandPatch, event: NewCommandEvent | undefined): Promise<CommandRecord | undefined> {
    return this.#transitionSteps(id, expectedVersion, [event ? { patch, event } : { patch }], undefined);
  }

  #transitionSteps(id: string, expectedVersion: number, steps: readonly CommandStep[], attempt: CommandAttemptRecord | undefined): Promise<CommandRecord | undefined> {
    validateCommandId(id);
    validateVersion(expectedVersion, 'expectedVersion');
    const plan = planSteps(steps);
    const changes = patchColumns(plan.patch);
    const a = attempt && validateAttempt(attempt);
    if (a && a.commandId !== id) throw new TetherError('COMMAND_INVALID', "Invalid command attempt: 'commandId' is not the command's.");
    // Column names come from the fixed map in command-rows.ts, never from the caller; values are bound.
    const sets = changes.map((change, i) => `${change.column} = @v${i}, `).join('');
    const sql = `UPDATE commands SET ${sets}version = version + 1, updated_at = @now WHERE id = @id AND version = @expectedVersion`;
    return this.#write(
      'transition command',
      (db) =>
        db
          .transaction((): CommandRecord | undefined => {
            const before = this.#statement(COMMAND_BY_ID).get(id) as CommandRow | undefined;
            if (!before) throw new TetherError('COMMAND_NOT_FOUND');
            if (before.version !== expectedVersion) return undefined;
            const now = this.#clock();
            const params: Record<string, unknown> = { id, expectedVersion, now };
            changes.forEach((change, i) => (params[`v${i}`] = change.value));
            if (this.#statement(sql).run(params).changes !== 1) return undefined;
            // The row as it now stands (the write lock is held): the one read before, with the patch applied.
            const row: Record<string, unknown> = { ...before, version: before.version + 1, updated_at: now };
            for (const change of changes) row[change.column] = change.value;
            for (const e of plan.events) {
              const fromState = e.fromState ?? before.state;
              this.#statement(INSERT_EVENT).run({ commandId: id, at: now, kind: e.kind, actor: e.actor, reason: e.reason, fromState, toState: e.toState ?? fromState });
            }
            if (a) this.#statement(INSERT_ATTEMPT).run(attemptParams(a));
            return commandFromRow(row as unknown as CommandRow);
          })
          .immediate(),
      { check: 'COMMAND_INVALID' },
    );
  }

  #appendAttempt(attempt: CommandAttemptRecord): Promise<boolean> {
    const a = validateAttempt(attempt);
    return this.#write('append command attempt', () => this.#statement(INSERT_ATTEMPT).run(attemptParams(a)).changes === 1, { foreignKey: 'COMMAND_NOT_FOUND' });
  }

  #patientFailures(tenantId: string, patientRef: string, since: number): number {
    const args = validatePatientFailures(tenantId, patientRef, since);
    return this.#run('count patient failures', () => (this.#statement(PATIENT_FAILURES).get(args) as { n: number }).n);
  }

  #attempts(commandId: string): CommandAttemptRecord[] {
    validateCommandId(commandId);
    return this.#run('list command attempts', () =>
      (this.#statement('SELECT * FROM command_attempts WHERE command_id = ? ORDER BY n').all(commandId) as AttemptRow[]).map(attemptFromRow),
    );
  }

  #events(commandId: string): CommandEventRecord[] {
    validateCommandId(commandId);
    return this.#run('list command events', () =>
      (this.#statement('SELECT * FROM command_events WHERE command_id = ? ORDER BY seq').all(commandId) as EventRow[]).map(eventFromRow),
    );
  }
}
