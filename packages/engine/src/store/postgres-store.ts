import { createHash } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { TetherError } from '@tether/core';
import {
  attemptFromRow,
  COMMAND_PATCH_COLUMNS,
  commandFromRow,
  eventFromRow,
  idempotentReplay,
  leasedFromRow,
  newerSiblingVerifiedSql,
  openSiblingSql,
  patchColumns,
  planSteps,
  sqlStateList,
  validateActor,
  validateAttempt,
  validateCommandId,
  validateFilter,
  validateLease,
  validateSubmitLease,
  validateNewCommand,
  validatePatientFailures,
  TENANT_CHANGED,
  WAITING_STATES,
  WORKING_STATES,
  type AttemptRow,
  type CommandRow,
  type EventRow,
} from './command-rows.js';
import { fromPgError, type ConstraintCodes } from './driver-errors.js';
import { apiKeyRepo } from './api-keys.js';
import { auditRepo } from './audit.js';
import { commandStatsRepo } from './command-stats.js';
import { driveAsync, numberPlaceholders, sqlTx, type SqlRunner } from './sql-runner.js';
import { KeyedMutex, lockTimeoutError } from './keyed-mutex.js';
import {
  assertMigrationList,
  migrationChecksum,
  pendingMigrations,
  SCHEMA_MIGRATIONS_DDL,
  type AppliedMigration,
  type Migration,
} from './migrations/migration.js';
import { POSTGRES_MIGRATIONS } from './migrations/postgres.js';
import {
  resolvePostgresOptions,
  type MigrationOverride,
  type PostgresStoreOptions,
  type ResolvedPostgresOptions,
  type StoreLogLine,
} from './options.js';
import {
  decideTake,
  TAKE_EPSILON,
  tenantFromRow,
  tokenFromRow,
  validateContext,
  validateNewTenant,
  validateTake,
  validateTenantId,
  validateTenantPatch,
  validateTokenWrite,
  validateVersion,
  type TakeArgs,
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
  SubmitLease,
  TenantChanged,
  TenantCheck,
  NewCommand,
  NewCommandEvent,
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

/**
 * 64-bit advisory lock key for a list of strings: the first 8 bytes of their SHA-256, as a signed bigint (the type
 * `pg_advisory_lock(bigint)` takes), in decimal. Two identities that collide (probability ~2^-64 per pair) merely
 * share a lock: they are serialised more than needed, never less.
 */
export function advisoryLockKey(...parts: string[]): string {
  return createHash('sha256').update(JSON.stringify(parts)).digest().readBigInt64BE(0).toString();
}

/** The key every process takes while migrating, so that two processes starting at once migrate one at a time. */
export const MIGRATION_LOCK_KEY = advisoryLockKey('tether', 'schema_migrations');

/** Most rounds of one lease call (see {@link PostgresStore} `#lease`). */
const LEASE_ROUNDS = 3;

/** Single-statement submissions of one business key that lost the race for a generation, before the locked path. */
const INSERT_FAST_ATTEMPTS = 3;
/** Then under the key's advisory lock (where only a fast-path submission can still win a generation first). */
const INSERT_LOCKED_ATTEMPTS = 64;

/** The unique violation of `commands_business_key`: another submission of the key took this generation first. */
function isGenerationRace(err: unknown): boolean {
  return err instanceof TetherError && err.code === 'IDEMPOTENCY_KEY_IN_PROGRESS' && (err.cause as { constraint?: unknown } | undefined)?.constraint === 'commands_business_key';
}

/** A query prepared once per connection under its name (hot paths: no parse and plan per call). */
interface NamedSql {
  readonly name: string;
  readonly text: string;
}
const named = (name: string, text: string): NamedSql => ({ name, text });

const INSERT_TENANT = `
INSERT INTO tenants (
  id, vendor, fhir_base_url, environment, auth_method, client_id, scopes, token_endpoint,
  state, state_reason, data_key_wrapped, credentials_ciphertext, version, created_at, updated_at
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, $10, $11, 1, $12, $12)
RETURNING *`;

const INSERT_FIRST_TOKEN = `
INSERT INTO auth_tokens (
  tenant_id, context, access_token_ciphertext, access_expires_at, access_issued_at,
  refresh_token_ciphertext, scope, version, updated_at
) VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8)
ON CONFLICT (tenant_id, context) DO NOTHING
RETURNING *`;

const UPDATE_TOKEN_IF_VERSION = `
UPDATE auth_tokens
SET access_token_ciphertext  = $3,
    access_expires_at        = $4,
    access_issued_at         = $5,
    refresh_token_ciphertext = $6,
    scope                    = $7,
    version                  = version + 1,
    updated_at               = $8
WHERE tenant_id = $1 AND context = $2 AND version = $9
RETURNING *`;

/**
 * One take from an existing bucket, atomic across processes: `FOR UPDATE` locks the row, so concurrent takes on
 * the same key queue behind each other and each sees the tokens the previous one left. The refill arithmetic is
 * the same as `refilledTokens` in records.ts. Returns no row when the bucket does not exist yet.
 *
 * $1 key, $2 capacity, $3 refill per second, $4 now (epoch ms), $5 cost, $6 float tolerance.
 */
const TAKE_SQL = `
WITH bucket AS (
  SELECT key,
         LEAST($2::float8, tokens + GREATEST(0, $4::bigint - updated_at) * $3::float8 / 1000.0) AS refilled,
         GREATEST(updated_at, $4::bigint) AS refilled_at
  FROM rate_limit_buckets
  WHERE key = $1
  FOR UPDATE
)
UPDATE rate_limit_buckets AS b
SET tokens = CASE WHEN bucket.refilled + $6::float8 >= $5::float8
                  THEN GREATEST(0, bucket.refilled - $5::float8)
                  ELSE bucket.refilled END,
    updated_at = bucket.refilled_at
FROM bucket
WHERE b.key = bucket.key
RETURNING bucket.refilled`;

/** First take from a bucket nobody has used: it starts full, minus this take. */
const CREATE_BUCKET_SQL = `
INSERT INTO rate_limit_buckets (key, tokens, updated_at) VALUES ($1, $2::float8 - $3::float8, $4)
ON CONFLICT (key) DO NOTHING
RETURNING key`;

/**
 * Inserts a command with the next generation of its business key, unless a command with its idempotency key
 * exists (then that one is returned, `inserted` false), with its `submitted` event. One statement: atomic on its
 * own. Concurrent submissions of one key may compute the same generation; the unique index makes the later one
 * fail (the caller tries again, and then under the key's advisory lock), so generations stay 1, 2, 3...
 *
 * $1 id, $2 tenant, $3 context, $4 action, $5 resource type, $6 business key, $7 idempotency key, $8 payload hash,
 * $9 resource, $10 priority, $11 now, $12 ehr version, $13 source timestamp, $14 requested by, $15 deadline,
 * $16 actor, $17 patient ref, $18 submit lease owner or NULL, $19 submit lease end, $20 unsafe (no key rule), $21 the
 * tenant version the submission was validated against, or NULL (with a version, nothing is written and no row comes
 * back unless the tenant is `active` at that version: {@link TenantCheck}). With a submit lease, the command
 * is inserted `in_flight` under it when no other command of its key is in a non-terminal state ({@link SubmitLease}):
 * without the key's advisory lock this is still safe, because a sibling a worker could lease is either visible to
 * this statement (then no lease is taken) or was submitted after this one committed (its leaser sees this lease).
 */
const INSERT_COMMAND: NamedSql = named('tether:insert-command', `
WITH guard AS (
  SELECT $21::integer IS NULL OR EXISTS (SELECT 1 FROM tenants WHERE id = $2 AND version = $21 AND state = 'active') AS ok
), existing AS (
  SELECT * FROM commands WHERE $7::text IS NOT NULL AND tenant_id = $2 AND idempotency_key = $7 AND (SELECT ok FROM guard)
), lease AS (
  SELECT $18::text AS owner, $19::bigint AS until
  WHERE $18::text IS NOT NULL AND ($20::boolean OR NOT ${openSiblingSql('$2', '$6')})
), ins AS (
  INSERT INTO commands AS c (
    id, tenant_id, context, action, resource_type, business_key, idempotency_key, payload_hash, resource, priority,
    state, state_reason, attempts, attempt_seq, budget_started_at, next_attempt_at, lease_owner, lease_expires_at,
    ehr_id, ehr_version, source_timestamp, generation, requested_by, deadline_at, created_at, updated_at, version,
    patient_ref
  )
  SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::text, $8::text, $9::jsonb, $10::text,
    CASE WHEN lease.owner IS NULL THEN 'queued' ELSE 'in_flight' END, NULL,
    CASE WHEN lease.owner IS NULL THEN 0 ELSE 1 END, CASE WHEN lease.owner IS NULL THEN 0 ELSE 1 END,
    $11::bigint, $11::bigint, lease.owner, lease.until,
    NULL, $12::text, $13::bigint,
    (SELECT COALESCE(MAX(generation), 0) + 1 FROM commands WHERE tenant_id = $2 AND business_key = $6),
    $14::text, $15::bigint, $11::bigint, $11::bigint, 1,
    $17::text
  FROM (SELECT 1) AS one LEFT JOIN lease ON true
  WHERE NOT EXISTS (SELECT 1 FROM existing) AND (SELECT ok FROM guard)
  RETURNING c.*, ${newerSiblingVerifiedSql('c', 'postgres')} AS newer_sibling_verified
), ev AS (
  INSERT INTO command_events (command_id, at, kind, actor, from_state, to_state, reason)
  SELECT id, $11::bigint, 'submitted', $16::text, NULL, 'queued', NULL FROM ins
)
SELECT true AS inserted, ins.* FROM ins
UNION ALL
SELECT false AS inserted, existing.*, false AS newer_sibling_verified FROM existing`);

/** The per-key rule (see the SQLite twin); `$5` true switches it off (sensitivity testing only). */
const pgKeyFree = (alias: string): string => `($5::boolean OR NOT EXISTS (
      SELECT 1 FROM commands AS sibling
      WHERE sibling.tenant_id = ${alias}.tenant_id
        AND sibling.business_key = ${alias}.business_key
        AND sibling.id <> ${alias}.id
        AND sibling.lease_owner IS NOT NULL
        AND sibling.lease_expires_at > $1))`;

/**
 * Due commands, best first (see the SQLite twin for the rules and the index per branch). Read without row locks:
 * who leases what is decided by the business keys' advisory locks, and {@link LEASE_MANY} re-checks every row.
 * (`FOR UPDATE SKIP LOCKED` here kept, until the lease transaction ended, the row lock of a candidate that
 * another worker had leased meanwhile — its re-check fails, its lock stays — which stalled that worker's next
 * state transition on the row.) Each branch reads at most `$4` index entries. Both waiting branches go through
 * `commands_due_priority` (batch, then interactive) in index order: an ordered index scan marks the entries of dead
 * row versions (every leased command leaves one) as dead as it passes them, where a bitmap scan of `commands_due`,
 * which the planner chose without statistics, re-read all of them on every lease until the next vacuum (5.6 ms a
 * lease after 2,500 commands in the benchmark).
 *
 * $1 now, $2 tenant id or NULL, $3 how many candidates, $4 window per branch, $5 unsafe (no key rule).
 */
const LEASE_CANDIDATES: NamedSql = named('tether:lease-candidates', `
SELECT c.id, c.tenant_id, c.business_key
FROM commands AS c
WHERE c.id IN (
    (SELECT w.id FROM commands AS w
     WHERE w.priority = 'batch' AND w.state IN ${sqlStateList(WAITING_STATES)} AND w.next_attempt_at <= $1
       AND ($2::text IS NULL OR w.tenant_id = $2) AND ${pgKeyFree('w')}
     ORDER BY w.next_attempt_at LIMIT $4)
    UNION ALL
    (SELECT i.id FROM commands AS i
     WHERE i.priority = 'interactive' AND i.state IN ${sqlStateList(WAITING_STATES)} AND i.next_attempt_at <= $1
       AND ($2::text IS NULL OR i.tenant_id = $2) AND ${pgKeyFree('i')}
     ORDER BY i.next_attempt_at LIMIT $4)
    UNION ALL
    (SELECT x.id FROM commands AS x
     WHERE x.lease_owner IS NOT NULL AND x.lease_expires_at <= $1 AND x.state IN ${sqlStateList(WORKING_STATES)}
       AND ($2::text IS NULL OR x.tenant_id = $2) AND ${pgKeyFree('x')}
     ORDER BY x.lease_expires_at LIMIT $4)
    UNION ALL
    (SELECT n.id FROM commands AS n
     WHERE n.tenant_id IN (SELECT id FROM tenants) AND n.state IN ${sqlStateList(WORKING_STATES)}
       AND (n.lease_expires_at IS NULL OR (n.lease_owner IS NULL AND n.lease_expires_at <= $1))
       AND ($2::text IS NULL OR n.tenant_id = $2) AND ${pgKeyFree('n')}
     LIMIT $4))
  AND ((c.state IN ${sqlStateList(WAITING_STATES)} AND c.next_attempt_at <= $1)
    OR (c.state IN ${sqlStateList(WORKING_STATES)} AND (c.lease_expires_at IS NULL OR c.lease_expires_at <= $1)))
ORDER BY CASE c.priority WHEN 'interactive' THEN 0 ELSE 1 END, c.next_attempt_at, c.generation, c.created_at, c.id COLLATE "C"
LIMIT $3`);

/**
 * Goes through the candidates' business-key advisory locks ($1, one per key, best first) and takes those that are
 * free right now (non-blocking, transaction-scoped) until it holds $2 of them; answers which. Stopping there
 * leaves the rest to other workers leasing at the same moment.
 */
const TRY_KEY_LOCKS: NamedSql = named('tether:lease-key-locks', 'SELECT k::text AS k FROM unnest($1::bigint[]) AS k WHERE pg_try_advisory_xact_lock(k) LIMIT $2');

/**
 * Takes the leases of the candidates whose key lock was granted, re-checking that each is still due (the row as
 * it is now: another worker may have leased it since the candidates were read) and the per-key rule. The caller
 * holds the transaction-scoped advisory locks of their business keys, and this statement's snapshot is taken
 * after they were granted: it sees every lease committed by an earlier holder, so two workers can never both
 * lease commands of one key. One candidate per key (the caller picks them).
 *
 * $1 ids, $2 owner, $3 lease end, $4 now (caller's clock, for liveness), $5 updated_at, $6 unsafe (no key rule).
 */
const LEASE_MANY: NamedSql = named('tether:lease', `
UPDATE commands AS c
SET state            = CASE WHEN c.state IN ${sqlStateList(WAITING_STATES)} THEN 'in_flight' ELSE c.state END,
    lease_owner      = $2,
    lease_expires_at = $3,
    attempts         = c.attempts + 1,
    attempt_seq      = c.attempt_seq + 1,
    version          = c.version + 1,
    updated_at       = $5
WHERE c.id = ANY($1::text[])
  AND ((c.state IN ${sqlStateList(WAITING_STATES)} AND c.next_attempt_at <= $4)
    OR (c.state IN ${sqlStateList(WORKING_STATES)} AND (c.lease_expires_at IS NULL OR c.lease_expires_at <= $4)))
  AND ($6::boolean OR NOT EXISTS (
    SELECT 1 FROM commands AS sibling
    WHERE sibling.tenant_id = c.tenant_id
      AND sibling.business_key = c.business_key
      AND sibling.id <> c.id
      AND sibling.lease_owner IS NOT NULL
      AND sibling.lease_expires_at > $4))
RETURNING c.*, ${newerSiblingVerifiedSql('c', 'postgres')} AS newer_sibling_verified`);

/** $1 id, $2 owner, $3 expected version, $4 now, $5 new lease end, $6 updated_at. */
const EXTEND_LEASE = `
UPDATE commands
SET lease_expires_at = $5, version = version + 1, updated_at = $6
WHERE id = $1 AND lease_owner = $2 AND version = $3 AND lease_expires_at > $4
RETURNING *`;

/**
 * A multi-step transition as ONE statement (one round trip, atomic): the compare-and-swap update, the events of the
 * steps and the attempt row. `old` reads the state before the update (the statement's snapshot; if the update
 * matched, the row had `version = $2` then too, since versions only grow). A NULL from/to state in the event arrays
 * stands for that old state. Patch values follow from $22.
 *
 * $1 id, $2 expected version, $3 now, $4-$8 event kinds, actors, from, to, reasons (arrays, in order),
 * $9-$21 the attempt (all NULL for none).
 */
const PATCH_COLUMN_LIST: readonly string[] = Object.values(COMMAND_PATCH_COLUMNS);
const transitionStepsSql = (sets: string): string => `
WITH old AS (SELECT state FROM commands WHERE id = $1 AND version = $2),
upd AS (UPDATE commands SET ${sets}version = version + 1, updated_at = $3 WHERE id = $1 AND version = $2 RETURNING *),
ev AS (
  INSERT INTO command_events (command_id, at, kind, actor, from_state, to_state, reason)
  SELECT $1, $3, e.kind, e.actor, COALESCE(e.from_state, old.state), COALESCE(e.to_state, old.state), e.reason
  FROM upd, old, unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::text[]) WITH ORDINALITY AS e(kind, actor, from_state, to_state, reason, n)
  ORDER BY e.n),
att AS (
  INSERT INTO command_attempts (
    command_id, n, worker, started_at, ended_at, outcome, error_code, error_category, ehr_status, verification,
    correlation_id, steps, patient_failure)
  SELECT $9::text, $10::integer, $11::text, $12::bigint, $13::bigint, $14::text, $15::text, $16::text, $17::integer,
    $18::text, $19::text, $20::text, COALESCE($21::boolean, false)
  FROM upd WHERE $9::text IS NOT NULL
  ON CONFLICT (command_id, n) DO NOTHING)
SELECT * FROM upd`;

const INSERT_ATTEMPT = `
INSERT INTO command_attempts (
  command_id, n, worker, started_at, ended_at, outcome, error_code, error_category, ehr_status, verification,
  correlation_id, steps, patient_failure
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT (command_id, n) DO NOTHING
RETURNING n`;

/**
 * The per-patient failure count (see the SQLite twin and {@link CommandRepo.patientFailures}).
 * $1 tenant, $2 patient ref, $3 since.
 */
const PATIENT_FAILURES: NamedSql = named('tether:patient-failures', `
SELECT COUNT(*)::integer AS n
FROM command_attempts AS a JOIN commands AS c ON c.id = a.command_id
WHERE c.tenant_id = $1 AND c.patient_ref = $2
  AND a.patient_failure AND a.started_at >= $3
  AND a.started_at > COALESCE((
    SELECT MAX(e.at) FROM command_events AS e JOIN commands AS r ON r.id = e.command_id
    WHERE e.kind = 'operator:retry' AND e.at >= $3 AND r.tenant_id = $1 AND r.patient_ref = $2), -1)`);

/**
 * The distributed store: PostgreSQL through a `pg` pool. Any number of engine processes may share one database.
 *
 * Two pools: queries run on the query pool (`poolSize`); `withLock` holds its session-level advisory locks on
 * connections of a separate lock pool (`lockPoolSize`). Keeping them apart is what prevents self-deadlock: a
 * locked section's own queries never wait behind connections that are themselves waiting for the lock.
 *
 * No connection is made until the first call (usually `migrate()`).
 */
export class PostgresStore implements Store {
  readonly kind = 'postgres' as const;
  readonly options: ResolvedPostgresOptions;
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
  readonly #log: (line: StoreLogLine) => void;
  readonly #migrations: readonly Migration[];
  readonly #pool: pg.Pool;
  readonly #lockPool: pg.Pool;
  readonly #locks = new KeyedMutex();
  #closed = false;

  /** Throws TetherError `CONFIG_INVALID` when an option is invalid. Does not connect. */
  constructor(options: PostgresStoreOptions & MigrationOverride) {
    this.options = resolvePostgresOptions(options);
    this.#clock = options.clock ?? Date.now;
    this.#log = options.log ?? (() => {});
    this.#migrations = options.migrations ?? POSTGRES_MIGRATIONS;
    assertMigrationList(this.#migrations);

    const { connectionString, connectTimeoutMs, applicationName } = this.options;
    const common = { connectionString, connectionTimeoutMillis: connectTimeoutMs, keepAlive: true };
    this.#pool = new pg.Pool({
      ...common,
      max: this.options.poolSize,
      application_name: applicationName,
      statement_timeout: this.options.statementTimeoutMs,
    });
    // No statement_timeout here: the wait for an advisory lock is bounded by lock_timeout, set per acquisition.
    this.#lockPool = new pg.Pool({ ...common, max: this.options.lockPoolSize, application_name: `${applicationName}:lock` });
    // An idle connection that dies (server restart, network) is reported here; without a listener, Node would
    // crash the process. The pool replaces the connection on the next checkout.
    for (const pool of [this.#pool, this.#lockPool]) {
      pool.on('error', (err) => this.#log({ msg: 'store: idle PostgreSQL connection failed', code: fromPgError(err, 'idle').code }));
    }

    this.tenants = {
      create: async (tenant) => this.#createTenant(tenant),
      get: async (id) => this.#getTenant(id),
      // COLLATE "C": byte order, as SQLite sorts, whatever collation the database was created with.
      list: async () => (await this.#query<TenantRow>('list tenants', 'SELECT * FROM tenants ORDER BY id COLLATE "C"')).map(tenantFromRow),
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
      dialect: 'postgres',
      all: async <R>(action: string, sql: string, params: readonly unknown[] = []) =>
        (await this.#query<pg.QueryResultRow>(action, numberPlaceholders(sql), [...params])) as R[],
      run: async (action, sql, params = []) => {
        this.#assertOpen();
        try {
          return (await this.#pool.query(numberPlaceholders(sql), [...params])).rowCount ?? 0;
        } catch (err) {
          throw fromPgError(err, action);
        }
      },
      transaction: async (action, program) =>
        this.#transaction(action, async (client) =>
          driveAsync(program(sqlTx), async (step) => {
            const result = await client.query(numberPlaceholders(step.sql), [...step.params]);
            return step.kind === 'all' ? result.rows : (result.rowCount ?? 0);
          }),
        ),
    };
    this.apiKeys = apiKeyRepo(this.#sql, this.#clock);
    this.audit = auditRepo(this.#sql);
    this.commandStats = commandStatsRepo(this.#sql);
  }

  /**
   * Applies pending migrations on a dedicated connection holding the migration advisory lock, so processes that
   * start together migrate one after another (the later ones find nothing to do). Each migration commits in its
   * own transaction with its `schema_migrations` row. Waits for the lock without a time limit: the holder is
   * either migrating or dead, and a dead session's locks are released by the server.
   */
  async migrate(): Promise<void> {
    this.#assertOpen();
    const client = new pg.Client({
      connectionString: this.options.connectionString,
      connectionTimeoutMillis: this.options.connectTimeoutMs,
      application_name: `${this.options.applicationName}:migrate`,
    });
    // Errors surface through the pending query; this listener only stops an 'error' event from crashing Node.
    client.on('error', () => {});
    try {
      await client.connect();
      await client.query('SELECT pg_advisory_lock($1::bigint)', [MIGRATION_LOCK_KEY]);
      await client.query(SCHEMA_MIGRATIONS_DDL);
      for (;;) {
        const applied = await client.query<AppliedMigration>('SELECT version, name, checksum FROM schema_migrations ORDER BY version');
        const next = pendingMigrations(this.#migrations, applied.rows)[0];
        if (!next) break;
        await this.#applyMigration(client, next);
      }
    } catch (err) {
      throw fromPgError(err, 'migrate');
    } finally {
      // Ending the session is what releases the migration lock (on success and on every failure alike).
      await client.end().catch(() => {});
    }
  }

  async #applyMigration(client: pg.Client, migration: Migration): Promise<void> {
    await client.query('BEGIN');
    try {
      // Simple query protocol (no parameters), so one migration may hold several statements.
      await client.query(migration.sql);
      await client.query('INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES ($1, $2, $3, $4)', [
        migration.version,
        migration.name,
        migrationChecksum(migration),
        this.#clock(),
      ]);
      await client.query('COMMIT');
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {});
      const mapped = fromPgError(err, 'migrate');
      if (mapped.code === 'STORE_UNAVAILABLE') throw mapped;
      throw new TetherError('STORE_MIGRATION_FAILED', `Migration ${migration.version} (${migration.name}) failed; nothing of it was applied.`, {
        cause: mapped.cause,
        details: { version: migration.version },
      });
    }
  }

  /** Closes both pools, after the connections in use are returned. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await Promise.all([this.#pool.end(), this.#lockPool.end()]);
  }

  #assertOpen(): void {
    if (this.#closed) throw new TetherError('STORE_UNAVAILABLE', 'The store is closed.');
  }

  /** `sql` may be a named query (`{ name, text }`): prepared once per connection, planned without parsing again. */
  async #query<R extends pg.QueryResultRow>(action: string, sql: string | NamedSql, params: unknown[] = [], constraints?: ConstraintCodes): Promise<R[]> {
    this.#assertOpen();
    try {
      return (await this.#pool.query<R>(typeof sql === 'string' ? { text: sql, values: params } : { ...sql, values: params })).rows;
    } catch (err) {
      throw fromPgError(err, action, constraints);
    }
  }

  async #createTenant(input: NewTenant): Promise<TenantRecord> {
    const t = validateNewTenant(input);
    const [row] = await this.#query<TenantRow>(
      'create tenant',
      INSERT_TENANT,
      [t.id, t.vendor, t.fhirBaseUrl, t.environment, t.authMethod, t.clientId, t.scopes, t.tokenEndpoint, t.state, t.dataKeyWrapped, t.credentialsCiphertext, this.#clock()],
      { unique: 'TENANT_EXISTS', check: 'CONFIG_INVALID' },
    );
    if (!row) throw new TetherError('INTERNAL', 'Tenant insert returned no row.');
    return tenantFromRow(row);
  }

  async #getTenant(id: string): Promise<TenantRecord | undefined> {
    validateTenantId(id);
    const [row] = await this.#query<TenantRow>('get tenant', 'SELECT * FROM tenants WHERE id = $1', [id]);
    return row && tenantFromRow(row);
  }

  async #updateTenant(id: string, patch: TenantPatch, expectedVersion: number | undefined): Promise<TenantRecord | undefined> {
    validateTenantId(id);
    if (expectedVersion !== undefined) validateVersion(expectedVersion, 'expectedVersion');
    const changes = validateTenantPatch(patch);
    // Column names come from a fixed map in records.ts, never from the caller; values are bound. $1 id, $2 now.
    const params: unknown[] = [id, this.#clock(), ...changes.map((c) => c.value)];
    const sets = changes.map((change, i) => `${change.column} = $${i + 3}, `).join('');
    let where = 'id = $1';
    if (expectedVersion !== undefined) {
      params.push(expectedVersion);
      where += ` AND version = $${params.length}`;
    }
    const sql = `UPDATE tenants SET ${sets}version = version + 1, updated_at = $2 WHERE ${where} RETURNING *`;
    const [row] = await this.#query<TenantRow>('update tenant', sql, params, { check: 'CONFIG_INVALID' });
    if (row) return tenantFromRow(row);
    // Nothing updated: a stale version (undefined, the caller re-reads and decides) or no such tenant (an error,
    // so that a retry loop cannot spin on a tenant that does not exist).
    const [exists] = await this.#query('update tenant', 'SELECT 1 FROM tenants WHERE id = $1', [id]);
    if (!exists) throw new TetherError('TENANT_NOT_FOUND');
    return undefined;
  }

  async #getToken(tenantId: string, context: string): Promise<TokenRecord | undefined> {
    validateTenantId(tenantId);
    validateContext(context);
    const [row] = await this.#query<TokenRow>('get token', 'SELECT * FROM auth_tokens WHERE tenant_id = $1 AND context = $2', [tenantId, context]);
    return row && tokenFromRow(row);
  }

  async #compareAndSet(tenantId: string, context: string, expectedVersion: number, next: TokenWrite): Promise<TokenRecord | undefined> {
    validateTenantId(tenantId);
    validateContext(context);
    validateVersion(expectedVersion, 'expectedVersion');
    const w = validateTokenWrite(next);
    const params: unknown[] = [
      tenantId,
      context,
      w.accessTokenCiphertext,
      w.accessExpiresAt,
      w.accessIssuedAt,
      w.refreshTokenCiphertext,
      w.scope,
      this.#clock(),
    ];
    // Version 0 means "no row yet": INSERT ... ON CONFLICT DO NOTHING lets exactly one of several racing first
    // writers in. Otherwise the UPDATE's `version = $9` is the compare; the row lock it takes makes it atomic.
    const [row] =
      expectedVersion === 0
        ? await this.#query<TokenRow>('write token', INSERT_FIRST_TOKEN, params, { foreignKey: 'TENANT_NOT_FOUND' })
        : await this.#query<TokenRow>('write token', UPDATE_TOKEN_IF_VERSION, [...params, expectedVersion]);
    return row && tokenFromRow(row);
  }

  /**
   * Session-level `pg_advisory_lock` on a lock-pool connection, held while `fn` runs, released in `finally`.
   *
   * Waiting happens in three places, all within one `lockTimeoutMs` budget (then `STORE_UNAVAILABLE`): behind
   * callers of this process on the same key (in memory, no connection used), for a free lock-pool connection, and
   * for the advisory lock itself (server-side `lock_timeout`). So at most one connection per key per process is
   * ever spent waiting, and a slow holder makes others fail in bounded time instead of piling up.
   *
   * If the lock connection dies while `fn` runs, the server releases the lock and another process may enter;
   * that is logged. Token writes stay safe regardless, because they are compare-and-set on a version.
   */
  async #withLock<T>(tenantId: string, context: string, fn: () => Promise<T>): Promise<T> {
    validateTenantId(tenantId);
    validateContext(context);
    this.#assertOpen();
    const started = performance.now();
    const remainingMs = () => Math.max(1, Math.ceil(this.options.lockTimeoutMs - (performance.now() - started)));

    const releaseLocal = await this.#locks.acquire(JSON.stringify([tenantId, context]), this.options.lockTimeoutMs);
    const key = advisoryLockKey('tether', 'token', tenantId, context);
    let client: pg.PoolClient;
    let lost = false;
    const onError = () => {
      lost = true;
    };
    try {
      client = await this.#connectLockClient(remainingMs());
      client.on('error', onError);
      try {
        await client.query("SELECT set_config('lock_timeout', $1, false)", [`${remainingMs()}ms`]);
        await client.query('SELECT pg_advisory_lock($1::bigint)', [key]);
      } catch (err) {
        client.removeListener('error', onError);
        const timedOut = (err as { code?: unknown }).code === '55P03';
        // After a lock timeout the session is healthy and holds nothing: back to the pool. Otherwise destroy it.
        client.release(timedOut ? undefined : true);
        const mapped = fromPgError(err, 'lock');
        throw timedOut ? lockTimeoutError(this.options.lockTimeoutMs, mapped.cause) : mapped;
      }
    } catch (err) {
      releaseLocal();
      throw err;
    }

    try {
      return await fn();
    } finally {
      await this.#unlock(client, key, lost);
      client.removeListener('error', onError);
      releaseLocal();
    }
  }

  /** A lock-pool connection within `timeoutMs`; one that arrives after the deadline goes straight back. */
  async #connectLockClient(timeoutMs: number): Promise<pg.PoolClient> {
    const pending = this.#lockPool.connect();
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(lockTimeoutError(this.options.lockTimeoutMs)),
        timeoutMs,
      );
    });
    try {
      return await Promise.race([pending, expired]);
    } catch (err) {
      pending.then((late) => late.release(), () => {});
      throw fromPgError(err, 'lock');
    } finally {
      clearTimeout(timer);
    }
  }

  /** Never throws: a failed unlock destroys the connection, and the server frees a dead session's locks. */
  async #unlock(client: pg.PoolClient, key: string, lost: boolean): Promise<void> {
    if (lost) {
      this.#log({ msg: 'store: lock connection lost while held; another process may have entered the section' });
      client.release(true);
      return;
    }
    try {
      const result = await client.query<{ unlocked: boolean }>('SELECT pg_advisory_unlock($1::bigint) AS unlocked', [key]);
      if (result.rows[0]?.unlocked !== true) {
        this.#log({ msg: 'store: advisory lock was not held at unlock; connection discarded' });
        client.release(true);
        return;
      }
      client.release();
    } catch (err) {
      this.#log({ msg: 'store: advisory unlock failed; connection discarded', code: fromPgError(err, 'unlock').code });
      client.release(true);
    }
  }

  async #take(key: string, capacity: number, refillPerSecond: number, now: number, cost: number): Promise<RateLimitDecision> {
    const args = validateTake(key, capacity, refillPerSecond, now, cost);
    // Steady state is one statement. The first take of a key creates the bucket; if another process creates it
    // at the same moment, ours does nothing and the take goes through TAKE_SQL like any other.
    for (let attempt = 0; attempt < 2; attempt++) {
      const taken = await this.#takeExisting(key, args);
      if (taken) return taken;
      const created = await this.#query('take rate limit token', CREATE_BUCKET_SQL, [key, capacity, cost, now]);
      if (created.length > 0) return { allowed: true, waitMs: 0 };
    }
    throw new TetherError('INTERNAL', 'Rate limit bucket vanished during a take.');
  }

  async #takeExisting(key: string, args: TakeArgs): Promise<RateLimitDecision | undefined> {
    const [row] = await this.#query<{ refilled: number }>('take rate limit token', TAKE_SQL, [
      key,
      args.capacity,
      args.refillPerSecond,
      args.now,
      args.cost,
      TAKE_EPSILON,
    ]);
    return row && decideTake(row.refilled, args).decision;
  }

  // ---------------------------------------------------------------------------------------------- commands

  /**
   * Runs `fn` in a transaction on one pooled connection. Rolls back on any error; a connection whose rollback
   * fails is destroyed rather than returned to the pool.
   */
  async #transaction<T>(action: string, fn: (client: pg.PoolClient) => Promise<T>, constraints?: ConstraintCodes, begin = 'BEGIN'): Promise<T> {
    this.#assertOpen();
    let client: pg.PoolClient;
    try {
      client = await this.#pool.connect();
    } catch (err) {
      throw fromPgError(err, action);
    }
    let broken = false;
    try {
      await client.query(begin);
      const result = await fn(client);
      await client.query('COMMIT');
      return result;
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {
        broken = true;
      });
      throw fromPgError(err, action, constraints);
    } finally {
      client.release(broken ? true : undefined);
    }
  }

  async #insertCommand(input: NewCommand, actor: string, submitLease: SubmitLease | undefined, check: TenantCheck | undefined): Promise<InsertResult | TenantChanged> {
    const c = validateNewCommand(input);
    validateActor(actor);
    const lease = validateSubmitLease(submitLease);
    if (check !== undefined) validateVersion(check.version, 'tenant.version');
    const params = (): unknown[] => [
      c.id,
      c.tenantId,
      c.context,
      c.action,
      c.resourceType,
      c.businessKey,
      c.idempotencyKey,
      c.payloadHash,
      JSON.stringify(c.resource),
      c.priority,
      this.#clock(),
      c.ehrVersion,
      c.sourceTimestamp,
      c.requestedBy,
      c.deadlineAt,
      actor,
      c.patientRef,
      lease?.owner ?? null,
      lease === undefined ? null : lease.now + lease.leaseMs,
      lease?.unsafeIgnoreKeyLock === true,
      check?.version ?? null,
    ];
    type Inserted = CommandRow & { inserted: boolean; newer_sibling_verified: boolean };
    const answer = (row: Inserted | undefined): InsertResult | TenantChanged => {
      // No row at all: only when the tenant check failed (otherwise the statement inserts or finds the original).
      if (!row && check !== undefined) return TENANT_CHANGED;
      if (!row) throw new TetherError('INTERNAL', 'Command insert returned no row.');
      if (!row.inserted) return idempotentReplay(commandFromRow(row), c.payloadHash);
      if (lease === undefined || row.lease_owner !== lease.owner) return { command: commandFromRow(row), created: true };
      const leased = leasedFromRow(row);
      return { command: leased, created: true, leased };
    };
    const constraints: ConstraintCodes = { foreignKey: 'TENANT_NOT_FOUND', unique: 'IDEMPOTENCY_KEY_IN_PROGRESS' };
    try {
      // Fast path, one round trip: the statement (idempotency check, insert, event) commits on its own. Two
      // submissions of one business key racing for the same generation meet at the unique index
      // (tenant, business key, generation): the later one waits for the earlier's commit, fails, and tries again.
      for (let attempt = 0; attempt < INSERT_FAST_ATTEMPTS; attempt++) {
        try {
          return answer((await this.#query<Inserted>('insert command', INSERT_COMMAND, params(), constraints))[0]);
        } catch (err) {
          if (!isGenerationRace(err)) throw err;
        }
      }
      // Slow path, for a key submitted by many at once: BEGIN with the key's advisory lock (serialises the
      // submissions of one key that got here until commit; the key is our own decimal hash, not input), the same
      // statement, whose snapshot is taken after the lock was granted and so sees every earlier submission of the
      // key, and COMMIT. A fast-path submission (no lock) can still take the generation first: each such loss means
      // another submission committed, so this ends.
      const key = advisoryLockKey('tether', 'command-key', c.tenantId, c.businessKey);
      for (let attempt = 1; ; attempt++) {
        try {
          return await this.#transaction(
            'insert command',
            async (client) => answer((await client.query<Inserted>({ ...INSERT_COMMAND, values: params() })).rows[0]),
            constraints,
            `BEGIN; SELECT pg_advisory_xact_lock(${BigInt(key).toString()})`,
          );
        } catch (err) {
          if (!isGenerationRace(err) || attempt >= INSERT_LOCKED_ATTEMPTS) throw err;
        }
      }
    } catch (err) {
      // A unique violation of the idempotency index: a submission with the same key committed between our check
      // and our insert. Read the winner and answer as if we had seen it.
      if (err instanceof TetherError && err.code === 'IDEMPOTENCY_KEY_IN_PROGRESS' && c.idempotencyKey !== null) {
        const [row] = await this.#query<CommandRow>('insert command', 'SELECT * FROM commands WHERE tenant_id = $1 AND idempotency_key = $2', [c.tenantId, c.idempotencyKey]);
        if (row && check !== undefined) {
          const [tenant] = await this.#query('insert command', "SELECT 1 FROM tenants WHERE id = $1 AND version = $2 AND state = 'active'", [c.tenantId, check.version]);
          if (!tenant) return TENANT_CHANGED;
        }
        if (row) return idempotentReplay(commandFromRow(row), c.payloadHash);
      }
      throw err;
    }
  }

  async #getCommand(id: string): Promise<CommandRecord | undefined> {
    validateCommandId(id);
    const [row] = await this.#query<CommandRow>('get command', 'SELECT * FROM commands WHERE id = $1', [id]);
    return row && commandFromRow(row);
  }

  async #listCommands(filter: CommandFilter): Promise<CommandRecord[]> {
    const f = validateFilter(filter);
    const where: string[] = [];
    const params: unknown[] = [];
    if (f.tenantId !== undefined) {
      params.push(f.tenantId);
      where.push(`tenant_id = $${params.length}`);
    }
    if (f.businessKey !== undefined) {
      params.push(f.businessKey);
      where.push(`business_key = $${params.length}`);
    }
    if (f.patientRef !== undefined) {
      params.push(f.patientRef);
      where.push(`patient_ref = $${params.length}`);
    }
    if (f.states !== undefined) {
      params.push(f.states);
      where.push(`state = ANY($${params.length}::text[])`);
    }
    params.push(f.limit);
    // COLLATE "C" on the tie-breaker: byte order, as SQLite sorts.
    const sql = `SELECT * FROM commands${where.length > 0 ? ` WHERE ${where.join(' AND ')}` : ''} ORDER BY created_at, id COLLATE "C" LIMIT $${params.length}`;
    return (await this.#query<CommandRow>('list commands', sql, params)).map(commandFromRow);
  }

  async #lease(request: LeaseRequest): Promise<LeasedCommand[]> {
    const r = validateLease(request);
    const unsafe = r.unsafeIgnoreKeyLock === true;
    // A fixed number of round trips per round, whatever the batch: candidates, their key locks, one update. A
    // round that lost candidates to another worker (leased since they were read) is followed by another, with a
    // fresh read, so that contention does not send this worker to sleep for a poll interval.
    return this.#transaction('lease commands', async (client) => {
      const leased: LeasedCommand[] = [];
      const tried = new Set<string>();
      for (let round = 0; round < LEASE_ROUNDS && leased.length < r.limit; round++) {
        const want = r.limit - leased.length;
        const scan = want * 4 + 8;
        const candidates = await client.query<{ id: string; tenant_id: string; business_key: string }>({ ...LEASE_CANDIDATES, values: [r.now, r.tenantId ?? null, scan, scan * 4, unsafe] });
        // One candidate per business key, best first (unless the key rule is deliberately off); never a key this
        // transaction already tried (its lock is ours until commit, and its sibling check is settled).
        const picked: { id: string; key: string }[] = [];
        const keys = new Set<string>();
        for (const candidate of candidates.rows) {
          const key = advisoryLockKey('tether', 'command-key', candidate.tenant_id, candidate.business_key);
          if ((keys.has(key) || tried.has(key)) && !unsafe) continue;
          keys.add(key);
          picked.push({ id: candidate.id, key });
        }
        if (picked.length === 0) break;
        let chosen = picked;
        if (!unsafe) {
          // Non-blocking: a key another transaction is leasing (or submitting) right now is skipped.
          const locked = new Set((await client.query<{ k: string }>({ ...TRY_KEY_LOCKS, values: [picked.map((p) => p.key), want] })).rows.map((row) => row.k));
          chosen = picked.filter((p) => locked.has(p.key));
        }
        chosen = chosen.slice(0, want);
        if (chosen.length === 0) break;
        for (const p of chosen) tried.add(p.key);
        const updated = await client.query<CommandRow & { newer_sibling_verified: boolean }>({ ...LEASE_MANY, values: [chosen.map((p) => p.id), r.owner, r.now + r.leaseMs, r.now, this.#clock(), unsafe] });
        const byId = new Map(updated.rows.map((row) => [row.id, row]));
        for (const p of chosen) {
          const row = byId.get(p.id);
          if (row) leased.push(leasedFromRow(row));
        }
        // Everything chosen was still due: nothing was lost to another worker, no reason for another round.
        if (updated.rows.length === chosen.length) break;
      }
      return leased;
    });
  }

  async #extendLease(id: string, owner: string, expectedVersion: number, now: number, until: number): Promise<CommandRecord | undefined> {
    validateCommandId(id);
    validateActor(owner);
    validateVersion(expectedVersion, 'expectedVersion');
    validateVersion(now, 'now');
    validateVersion(until, 'until');
    const [row] = await this.#query<CommandRow>('extend lease', EXTEND_LEASE, [id, owner, expectedVersion, now, until, this.#clock()]);
    return row && commandFromRow(row);
  }

  async #transition(id: string, expectedVersion: number, patch: CommandPatch, event: NewCommandEvent | undefined): Promise<CommandRecord | undefined> {
    return this.#transitionSteps(id, expectedVersion, [event ? { patch, event } : { patch }], undefined);
  }

  async #transitionSteps(id: string, expectedVersion: number, steps: readonly CommandStep[], attempt: CommandAttemptRecord | undefined): Promise<CommandRecord | undefined> {
    validateCommandId(id);
    validateVersion(expectedVersion, 'expectedVersion');
    const plan = planSteps(steps);
    const changes = patchColumns(plan.patch);
    const a = attempt && validateAttempt(attempt);
    if (a && a.commandId !== id) throw new TetherError('COMMAND_INVALID', "Invalid command attempt: 'commandId' is not the command's.");
    // Column names come from the fixed map in command-rows.ts, never from the caller; values are bound.
    const sets = changes.map((change, i) => `${change.column} = $${i + 22}, `).join('');
    const e = plan.events;
    const attemptParams = a
      ? [a.commandId, a.n, a.worker, a.startedAt, a.endedAt, a.outcome, a.errorCode, a.errorCategory, a.ehrStatus, a.verification, a.correlationId, a.steps, a.patientFailure]
      : Array.from({ length: 13 }, () => null);
    const [row] = await this.#query<CommandRow>(
      'transition command',
      // Named by its columns, in order (one name per SQL text; PostgreSQL allows 63 characters).
      { name: `tether:transition:${changes.map((c) => PATCH_COLUMN_LIST.indexOf(c.column)).join('.')}`, text: transitionStepsSql(sets) },
      [
        id,
        expectedVersion,
        this.#clock(),
        e.map((x) => x.kind),
        e.map((x) => x.actor),
        e.map((x) => x.fromState),
        e.map((x) => x.toState),
        e.map((x) => x.reason),
        ...attemptParams,
        ...changes.map((c) => c.value),
      ],
      { check: 'COMMAND_INVALID' },
    );
    if (row) return commandFromRow(row);
    // Nothing matched: a version that moved on, or no such command (one more round trip, on this path only).
    const exists = await this.#query('transition command', 'SELECT 1 FROM commands WHERE id = $1', [id]);
    if (exists.length === 0) throw new TetherError('COMMAND_NOT_FOUND');
    return undefined;
  }

  async #appendAttempt(attempt: CommandAttemptRecord): Promise<boolean> {
    const a = validateAttempt(attempt);
    const rows = await this.#query(
      'append command attempt',
      INSERT_ATTEMPT,
      [a.commandId, a.n, a.worker, a.startedAt, a.endedAt, a.outcome, a.errorCode, a.errorCategory, a.ehrStatus, a.verification, a.correlationId, a.steps, a.patientFailure],
      { foreignKey: 'COMMAND_NOT_FOUND' },
    );
    return rows.length === 1;
  }

  async #attempts(commandId: string): Promise<CommandAttemptRecord[]> {
    validateCommandId(commandId);
    return (await this.#query<AttemptRow>('list command attempts', 'SELECT * FROM command_attempts WHERE command_id = $1 ORDER BY n', [commandId])).map(attemptFromRow);
  }

  async #patientFailures(tenantId: string, patientRef: string, since: number): Promise<number> {
    const args = validatePatientFailures(tenantId, patientRef, since);
    const [row] = await this.#query<{ n: number }>('count patient failures', PATIENT_FAILURES, [args.tenantId, args.patientRef, args.since]);
    return row?.n ?? 0;
  }

  async #events(commandId: string): Promise<CommandEventRecord[]> {
    validateCommandId(commandId);
    return (await this.#query<EventRow>('list command events', 'SELECT * FROM command_events WHERE command_id = $1 ORDER BY seq', [commandId])).map(eventFromRow);
  }
}
