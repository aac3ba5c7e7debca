/**
 * The store contract: one interface, two implementations (SQLite embedded, PostgreSQL distributed). Every method
 * is async so both fit. Rows never hold secrets in clear: private keys, client secrets and tokens are stored as
 * ciphertext produced by the auth layer (envelope encryption), the store only moves bytes.
 */

import type { AuditEntry, AuditHead, AuditRecord, CommandState as CoreCommandState } from '@tether/core';

export type Environment = 'sandbox' | 'production';
export type AuthMethod = 'backend-services' | 'client-secret' | 'authorization-code';
/** `auth_paused`: an operator must act (revoked grant, invalid client); no automatic retry. */
export type TenantState = 'active' | 'auth_paused' | 'disabled';

export interface TenantRecord {
  /** Health-system id: the tenant key. */
  readonly id: string;
  /** Vendor profile name (`generic`, `epic`, `oracle`, ...). */
  readonly vendor: string;
  readonly fhirBaseUrl: string;
  readonly environment: Environment;
  readonly authMethod: AuthMethod;
  readonly clientId: string;
  /** Requested scopes, space separated. */
  readonly scopes: string;
  /** Token endpoint when known (discovered or configured). */
  readonly tokenEndpoint: string | null;
  readonly state: TenantState;
  /** Why the tenant is paused or disabled (no PHI, no secrets). */
  readonly stateReason: string | null;
  /** The tenant's data key, wrapped (encrypted) by the master key. */
  readonly dataKeyWrapped: Buffer;
  /** Secret credentials (private JWK or client secret) encrypted with the data key; null when none. */
  readonly credentialsCiphertext: Buffer | null;
  /** Optimistic concurrency version, incremented by every update. */
  readonly version: number;
  /** Epoch ms. */
  readonly createdAt: number;
  readonly updatedAt: number;
}

export type NewTenant = Omit<TenantRecord, 'version' | 'createdAt' | 'updatedAt' | 'state' | 'stateReason'> & {
  readonly state?: TenantState;
};

export type TenantPatch = Partial<
  Pick<TenantRecord, 'vendor' | 'fhirBaseUrl' | 'environment' | 'authMethod' | 'clientId' | 'scopes' | 'tokenEndpoint' | 'credentialsCiphertext' | 'dataKeyWrapped' | 'state' | 'stateReason'>
>;

/**
 * Token state for one (tenant, context). `context` is `system`, `provider:<id>` or `patient:<id>`.
 * Access and refresh tokens are ciphertext; `version` is the compare-and-swap guard for rotation.
 */
export interface TokenRecord {
  readonly tenantId: string;
  readonly context: string;
  readonly accessTokenCiphertext: Buffer | null;
  /** Epoch ms when the access token expires. */
  readonly accessExpiresAt: number | null;
  /** Epoch ms when the access token was issued (to compute the proactive refresh window). */
  readonly accessIssuedAt: number | null;
  readonly refreshTokenCiphertext: Buffer | null;
  /** Granted scope (not secret). */
  readonly scope: string | null;
  readonly version: number;
  readonly updatedAt: number;
}

export type TokenWrite = Omit<TokenRecord, 'version' | 'updatedAt' | 'tenantId' | 'context'>;

export interface TenantRepo {
  /** Creates a tenant at version 1; throws TENANT_EXISTS when the id exists, CONFIG_INVALID when a field is invalid. */
  create(tenant: NewTenant): Promise<TenantRecord>;
  get(id: string): Promise<TenantRecord | undefined>;
  list(): Promise<TenantRecord[]>;
  /**
   * Applies a patch. With `expectedVersion`, only when the row still has that version (returns undefined
   * otherwise). Returns the updated row. Throws TENANT_NOT_FOUND when no tenant has that id.
   */
  update(id: string, patch: TenantPatch, expectedVersion?: number): Promise<TenantRecord | undefined>;
}

export interface TokenRepo {
  get(tenantId: string, context: string): Promise<TokenRecord | undefined>;
  /**
   * Writes the token state only if the stored version is `expectedVersion` (0 = no row yet). Returns the new
   * record, or undefined when another writer got there first. This is how a rotated refresh token is committed:
   * it can never be overwritten by a stale writer, and never lost.
   */
  compareAndSet(tenantId: string, context: string, expectedVersion: number, next: TokenWrite): Promise<TokenRecord | undefined>;
  /**
   * Runs `fn` while holding an exclusive lock on (tenant, context) across every process sharing the store
   * (PostgreSQL: advisory lock; SQLite: one process, an in-process mutex). Used for single-flight refresh: the
   * winner refreshes, the others wait, then read what it stored.
   */
  withLock<T>(tenantId: string, context: string, fn: () => Promise<T>): Promise<T>;
}

export interface RateLimitDecision {
  readonly allowed: boolean;
  /** When not allowed: ms until a token will be available. */
  readonly waitMs: number;
}

export interface RateLimitRepo {
  /**
   * Token bucket shared by every process on the store: takes `cost` tokens from bucket `key` (capacity
   * `capacity`, refilled at `refillPerSecond`) if available. Atomic.
   */
  take(key: string, capacity: number, refillPerSecond: number, now: number, cost?: number): Promise<RateLimitDecision>;
}

export interface Store {
  readonly kind: 'sqlite' | 'postgres';
  readonly tenants: TenantRepo;
  readonly tokens: TokenRepo;
  readonly rateLimits: RateLimitRepo;
  /** Write-back commands, their attempt timeline and their audit events (migration 2). */
  readonly commands: CommandRepo;
  /** API keys of the HTTP API (migration 3). */
  readonly apiKeys: ApiKeyRepo;
  /** The hash-chained audit log (migration 4). */
  readonly audit: AuditRepo;
  /** Read-only aggregates over commands for metrics and the console. */
  readonly commandStats: CommandStatsRepo;
  /** Applies pending numbered migrations (idempotent; safe with several processes starting at once). */
  migrate(): Promise<void>;
  close(): Promise<void>;
}

// ------------------------------------------------------------------------------------------------ API keys

/** Roles of the HTTP API (DESIGN §10): what a key may do. */
export type ApiRole = 'submitter' | 'operator' | 'viewer' | 'admin';

export interface ApiKeyRecord {
  readonly id: string;
  /** Human label ("ci", "alice"). Not secret. */
  readonly name: string;
  /** The first characters of the key, to recognise it in lists. Not enough to use it. */
  readonly prefix: string;
  /** SHA-256 (hex) of the whole key. */
  readonly keyHash: string;
  readonly role: ApiRole;
  /** Tenant ids the key is limited to; null: every tenant. */
  readonly tenants: readonly string[] | null;
  readonly createdAt: number;
  readonly createdBy: string;
  readonly revokedAt: number | null;
  readonly lastUsedAt: number | null;
}

export type NewApiKey = Pick<ApiKeyRecord, 'id' | 'name' | 'prefix' | 'keyHash' | 'role' | 'tenants' | 'createdBy'>;

export interface ApiKeyRepo {
  /** Throws CONFIG_INVALID on a bad field; a duplicate id or hash is a driver constraint error. */
  create(key: NewApiKey): Promise<ApiKeyRecord>;
  get(id: string): Promise<ApiKeyRecord | undefined>;
  findByHash(keyHash: string): Promise<ApiKeyRecord | undefined>;
  list(): Promise<ApiKeyRecord[]>;
  /** True when the key was active and is now revoked. */
  revoke(id: string): Promise<boolean>;
  /** Records a use (best effort, for operators). */
  touch(id: string, at: number): Promise<void>;
}

// ------------------------------------------------------------------------------------------------ command stats

export interface QueueStat {
  readonly tenantId: string;
  readonly state: CommandState;
  readonly count: number;
  /** Epoch ms of the oldest command in this state. */
  readonly oldestCreatedAt: number | null;
}

export interface VerifiedPerMinute {
  readonly tenantId: string;
  /** Epoch ms of the minute's start. */
  readonly minuteStart: number;
  readonly count: number;
}

export interface AttemptCategoryStat {
  readonly tenantId: string;
  readonly outcome: string;
  readonly errorCategory: string | null;
  readonly count: number;
}

export interface CommandStatsRepo {
  /** Commands per tenant and state, with the oldest creation time. */
  queue(): Promise<QueueStat[]>;
  /** Commands that reached `verified` (by their last update) per tenant and minute since `since`. */
  verifiedPerMinute(since: number): Promise<VerifiedPerMinute[]>;
  /** Attempts started since `since`, per tenant, outcome and error category. */
  attemptCategories(since: number): Promise<AttemptCategoryStat[]>;
}

// ------------------------------------------------------------------------------------------------ commands

/** What a command does to its clinical object (DESIGN §5). */
export type CommandAction = 'create' | 'update' | 'upsert' | 'delete';
/** `interactive` work is leased ahead of `batch` work. */
export type CommandPriority = 'interactive' | 'batch';
/**
 * The states of a command (DESIGN §5). The allowed transitions live in `writeback/state-machine.ts`; the store
 * only persists the state and guards every change with a compare-and-swap on `version`.
 */
export type CommandState = CoreCommandState;

/**
 * One clinical intent, as stored. The `resource` may hold PHI: it is never logged and never copied into an
 * attempt, event or error. Times are epoch milliseconds.
 */
export interface CommandRecord {
  readonly id: string;
  readonly tenantId: string;
  /** Token identity: `system`, `provider:<id>` or `patient:<id>`. */
  readonly context: string;
  readonly action: CommandAction;
  readonly resourceType: string;
  /** Deterministic identity of the clinical object, stamped into the resource as an identifier. */
  readonly businessKey: string;
  /** Ingress idempotency key, unique per tenant; null when the submitter gave none. */
  readonly idempotencyKey: string | null;
  /** `stableHash` of the submitted payload: the same key with another hash is `IDEMPOTENCY_KEY_REUSED`. */
  readonly payloadHash: string;
  /** Canonical FHIR R4 resource with the business-key identifier stamped in. */
  readonly resource: Record<string, unknown>;
  readonly priority: CommandPriority;
  readonly state: CommandState;
  /** Machine-readable reason of the current state (an error code or a short snake_case word; no PHI). */
  readonly stateReason: string | null;
  /** Attempts counted against the budget (reset by an operator retry). Incremented by every lease. */
  readonly attempts: number;
  /** Number of the latest attempt ever started (never reset): the `n` of its `command_attempts` row. */
  readonly attemptSeq: number;
  /** When the budget clock started (submission, or the last operator retry). */
  readonly budgetStartedAt: number;
  /** Not leased before this time (backoff, Retry-After). */
  readonly nextAttemptAt: number;
  /** Worker id holding the lease; null when not leased. */
  readonly leaseOwner: string | null;
  /** The lease (visibility timeout) ends here; after it another worker may lease the command. */
  readonly leaseExpiresAt: number | null;
  /** The EHR's id of the resource once known (found, created, or the update target). */
  readonly ehrId: string | null;
  /** The last EHR version we know (for `update`: the version the change is based on, sent as If-Match). */
  readonly ehrVersion: string | null;
  /** Time of the source event (e.g. the HL7 message), for ordering. */
  readonly sourceTimestamp: number | null;
  /** 1, 2, 3... per (tenant, business key), in submission order. */
  readonly generation: number;
  /** Who asked (user, API key or channel id; no PHI). */
  readonly requestedBy: string;
  /** Optional deadline (epoch ms) after which the command goes to the exception queue. */
  readonly deadlineAt: number | null;
  /**
   * The patient the resource belongs to, `Patient/<id>` (derived at submission by `patientRefOf`), or null. The key
   * of the per-patient failure budget (poison protection). PHI-adjacent: never logged, never in a metric label,
   * an event or an error message; show it only where the resource may be shown.
   */
  readonly patientRef: string | null;
  readonly createdAt: number;
  readonly updatedAt: number;
  /** Optimistic concurrency version, incremented by every change (lease, extension, transition). */
  readonly version: number;
}

/** What {@link CommandRepo.insert} needs; the store fills in state `queued`, generation, counters and times. */
export type NewCommand = Pick<
  CommandRecord,
  | 'id'
  | 'tenantId'
  | 'context'
  | 'action'
  | 'resourceType'
  | 'businessKey'
  | 'idempotencyKey'
  | 'payloadHash'
  | 'resource'
  | 'priority'
  | 'ehrVersion'
  | 'sourceTimestamp'
  | 'requestedBy'
  | 'deadlineAt'
> &
  Partial<Pick<CommandRecord, 'patientRef'>>;

/** Fields a transition may change. Absent fields keep their value. */
export interface CommandPatch {
  readonly state?: CommandState;
  readonly stateReason?: string | null;
  readonly nextAttemptAt?: number;
  readonly leaseOwner?: string | null;
  readonly leaseExpiresAt?: number | null;
  readonly ehrId?: string | null;
  readonly ehrVersion?: string | null;
  /** Operator retry only: resets the budget. */
  readonly attempts?: number;
  readonly budgetStartedAt?: number;
}

/** How an attempt ended (the timeline's outcome class). */
export type CommandAttemptOutcome =
  | 'applied'
  | 'not_sent'
  | 'rejected'
  | 'rate_limited'
  | 'unknown'
  /** Reconcile-before-write found the object already in the EHR: nothing was sent. */
  | 'found'
  /** Not sent because a newer sibling was already verified. */
  | 'superseded'
  /** Budget (attempts or age) exhausted before sending. */
  | 'budget_exhausted'
  /** The lease expired before the attempt recorded anything (worker killed or stalled). */
  | 'abandoned'
  /** The attempt failed inside the engine (store, search errors) before an outcome was known. */
  | 'error';

/** Result of the read-back, when one was made. */
export type CommandVerification = 'verified' | 'mismatch' | 'absent' | 'unclear' | 'duplicate';

/** One attempt of the timeline. Append-only; never holds resource content. */
export interface CommandAttemptRecord {
  readonly commandId: string;
  /** The command's `attemptSeq` when the attempt started: 1, 2, 3... */
  readonly n: number;
  readonly worker: string | null;
  readonly startedAt: number;
  readonly endedAt: number | null;
  readonly outcome: CommandAttemptOutcome;
  readonly errorCode: string | null;
  readonly errorCategory: string | null;
  /** Status of the EHR's answer to the write, when there was one. */
  readonly ehrStatus: number | null;
  readonly verification: CommandVerification | null;
  /** Correlation id sent to the EHR (`X-Request-Id`): joins this attempt to the EHR's logs. */
  readonly correlationId: string | null;
  /** The EHR calls of the attempt, e.g. `search:200 create:unknown search:200 read:200` (no PHI). */
  readonly steps: string | null;
  /**
   * The attempt counts against the failure budget of the command's patient (poison protection): the EHR refused
   * the write for a reason of this object or patient, or the outcome stayed unclear. The worker decides (see
   * docs/writeback.md#budgets); the store counts ({@link CommandRepo.patientFailures}).
   */
  readonly patientFailure: boolean;
}

/** An audit event of a command: submission, every state transition, operator actions. Append-only. */
export interface CommandEventRecord {
  /** Store-assigned, increasing. */
  readonly seq: number;
  readonly commandId: string;
  readonly at: number;
  /** `submitted`, `transition`, `operator:retry`, `operator:resolve`, `operator:cancel`. */
  readonly kind: string;
  /** `api:<who>`, `worker:<id>`, `operator:<who>`. */
  readonly actor: string;
  readonly fromState: CommandState | null;
  readonly toState: CommandState | null;
  /** Why: a reason code for workers, the operator's note for operator actions. Never logged. */
  readonly reason: string | null;
}

/** An event to append together with a transition (same transaction). */
export type NewCommandEvent = Pick<CommandEventRecord, 'kind' | 'actor' | 'reason'>;

/**
 * One step of {@link CommandRepo.transitionSteps}: a patch, and the audit event of its state change. The event's
 * `from_state` is the state before this step and its `to_state` the state after it (the patch's, else unchanged).
 */
export interface CommandStep {
  readonly patch: CommandPatch;
  readonly event?: NewCommandEvent;
}

/** Filter of {@link CommandRepo.list}. */
export interface CommandFilter {
  readonly tenantId?: string;
  readonly states?: readonly CommandState[];
  readonly businessKey?: string;
  /** Only the commands of this patient (`Patient/<id>`, PHI-adjacent: never log the filter). */
  readonly patientRef?: string;
  /** At most this many, oldest first. Default 100, at most 1000. */
  readonly limit?: number;
}

/** Arguments of {@link CommandRepo.lease}. */
export interface LeaseRequest {
  /** Worker id (no PHI), written to `lease_owner`. */
  readonly owner: string;
  /** The caller's clock (epoch ms): what is due and which leases are live is decided against it. */
  readonly now: number;
  /** Visibility timeout in ms: the lease ends at `now + leaseMs` unless extended. */
  readonly leaseMs: number;
  /** Most commands to lease at once. Default 1. */
  readonly limit?: number;
  /** Only this tenant's commands. */
  readonly tenantId?: string;
  /**
   * Sensitivity testing only (`npm run chaos -- --broken no-key-lock`): deliberately WRONG. Ignores the
   * per-business-key exclusivity, so commands of one key may be leased while a sibling holds a live lease (and
   * two of one key in one call). Never set in production.
   */
  readonly unsafeIgnoreKeyLock?: boolean;
}

/**
 * A command as {@link CommandRepo.lease} hands it out, with what the lease found out about its siblings in the
 * same transaction (saving the worker a query per attempt; while the lease is live no sibling can change).
 */
export interface LeasedCommand extends CommandRecord {
  /**
   * A sibling (same tenant and business key) is `verified` and newer than this command: a later source timestamp
   * when both carry a different one, else a higher generation (DESIGN §5 step 8). The command must not be sent.
   */
  readonly newerSiblingVerified: boolean;
}

/** The tenant version a submission was validated against ({@link CommandRepo.insert}). */
export interface TenantCheck {
  readonly version: number;
}

/** {@link CommandRepo.insert} with a {@link TenantCheck}: the tenant changed (or is gone); nothing was written. */
export interface TenantChanged {
  readonly tenantChanged: true;
}

/** Result of {@link CommandRepo.insert}. */
export interface InsertResult {
  readonly command: CommandRecord;
  /** False when an earlier command with the same idempotency key and payload was returned instead. */
  readonly created: boolean;
  /** The new command, leased to the submit lease's owner: set when a {@link SubmitLease} was given and taken. */
  readonly leased?: LeasedCommand;
}

/**
 * A lease to take at submission, in the insert's transaction (a worker of the submitting process with a free slot;
 * docs/writeback.md "Hand-off at submission"): the command is stored `in_flight` under this lease instead of
 * `queued`, and the worker starts its first attempt without a lease query. Taken only when no other command of the
 * same (tenant, business key) is in a non-terminal state, so the one-attempt-per-key rule holds without the key
 * lock (any sibling submitted later sees this one), and never for an idempotent replay.
 */
export interface SubmitLease {
  /** The worker's lease owner id. */
  readonly owner: string;
  /** The worker's clock now (ms); the lease runs until `now + leaseMs`. */
  readonly now: number;
  readonly leaseMs: number;
  /** Sensitivity testing only (`--broken no-key-lock`): take the lease even when a sibling is open. */
  readonly unsafeIgnoreKeyLock?: boolean;
}

/**
 * The write-back outbox. Every change is a compare-and-swap on `version`, so a worker that lost its lease (expired,
 * then re-leased by another) can never overwrite the newer owner's work.
 */
export interface CommandRepo {
  /**
   * Inserts a command in state `queued` with the next generation of its (tenant, business key), atomically with
   * the idempotency check and a `submitted` event: an existing command with the same (tenant, idempotency key)
   * and the same payload hash is returned (`created: false`); with another payload hash the insert fails with
   * `IDEMPOTENCY_KEY_REUSED`. Throws `TENANT_NOT_FOUND` for an unknown tenant. Resolves only once committed.
   */
  insert(command: NewCommand, actor: string, lease?: SubmitLease): Promise<InsertResult>;
  /**
   * The same, only if the tenant is still `active` at `tenant.version`, checked in the insert's own statement
   * (PostgreSQL) or transaction (SQLite): the tenant a submitter validated the command against (existence, state,
   * scopes) is the tenant the command is accepted under. Otherwise nothing is written (not even an idempotent
   * replay) and the answer is `{ tenantChanged: true }`: read the tenant again and validate again. Lets a submitter
   * validate against a cached tenant without a read per submission.
   */
  insert(command: NewCommand, actor: string, lease: SubmitLease | undefined, tenant: TenantCheck): Promise<InsertResult | TenantChanged>;
  get(id: string): Promise<CommandRecord | undefined>;
  list(filter?: CommandFilter): Promise<CommandRecord[]>;
  /**
   * Leases due commands: `queued`/`retry_wait` whose `nextAttemptAt` has come, and commands in a working state
   * (`in_flight`, `unknown`, `acknowledged`, `conflict`) whose lease expired. Never leases a command while another
   * command with the same (tenant, business key) holds a live lease, nor two of one key at once. A leased
   * `queued`/`retry_wait` command becomes `in_flight`; every leased command gets `attempts + 1`,
   * `attemptSeq + 1`, the lease and a new version. PostgreSQL: `FOR UPDATE SKIP LOCKED` plus a transaction-scoped
   * advisory lock per business key; SQLite: one IMMEDIATE transaction.
   */
  lease(request: LeaseRequest): Promise<LeasedCommand[]>;
  /**
   * Extends a lease held by `owner` to `until`, if the command still has `expectedVersion` and the lease is still
   * live at `now` (an expired lease may already have let a sibling of the same business key be leased, so it is
   * never revived). Returns the updated command, or undefined when the lease was lost: the caller must stop
   * working on the command, and in particular must not send anything. Workers call it right before every EHR
   * write, as a fence.
   */
  extendLease(id: string, owner: string, expectedVersion: number, now: number, until: number): Promise<CommandRecord | undefined>;
  /**
   * Applies a patch if the command still has `expectedVersion`, with an optional event in the same transaction.
   * Returns the updated command, or undefined when the version moved on. Throws `COMMAND_NOT_FOUND`.
   */
  transition(id: string, expectedVersion: number, patch: CommandPatch, event?: NewCommandEvent): Promise<CommandRecord | undefined>;
  /**
   * Applies several steps as ONE atomic change (one transaction, one durable commit), guarded by one
   * compare-and-swap on `expectedVersion`: the patches in order, the event of every step that carries one (each
   * with its own from/to states), and the attempt row when given (ignored if attempt `n` is already recorded).
   * The version moves on by one. Returns the command after the last step, or undefined (nothing written) when the
   * version moved on. Throws `COMMAND_NOT_FOUND`. This is how a worker records the end of an attempt, e.g.
   * `in_flight → acknowledged → verified` plus the timeline row, with a single commit.
   */
  transitionSteps(id: string, expectedVersion: number, steps: readonly CommandStep[], attempt?: CommandAttemptRecord): Promise<CommandRecord | undefined>;
  /** Appends an attempt; returns false when attempt `n` of that command is already recorded (nothing changes). */
  appendAttempt(attempt: CommandAttemptRecord): Promise<boolean>;
  /** The timeline, in attempt order. */
  attempts(commandId: string): Promise<CommandAttemptRecord[]>;
  /**
   * The per-patient failure budget's count (poison protection): attempts flagged `patientFailure` of the commands
   * of (`tenantId`, `patientRef`) that started at or after `since` (epoch ms, the caller's clock) and after the
   * latest operator retry (`operator:retry` event) of any command of that patient: an operator's retry resets the
   * patient's budget. Shared by every process on the store. `patientRef` is PHI-adjacent: errors never echo it.
   */
  patientFailures(tenantId: string, patientRef: string, since: number): Promise<number>;
  /** The audit events, in order. */
  events(commandId: string): Promise<CommandEventRecord[]>;
}

// ------------------------------------------------------------------------------------------------ audit

/**
 * A command event as the audit tailer sees it: the event, the immutable facts of its command, the tenant's vendor,
 * and the command's EHR id and version *when the event is copied* (see docs/audit.md). Never the resource.
 */
export interface AuditCommandEvent extends CommandEventRecord {
  readonly tenantId: string;
  readonly resourceType: string;
  readonly commandAction: CommandAction;
  /** Token identity of the command: `system`, `provider:<id>` or `patient:<id>` (the id part may be PHI). */
  readonly context: string;
  readonly requestedBy: string;
  /** The tenant's vendor profile; null when the tenant row is gone. */
  readonly vendor: string | null;
  readonly ehrId: string | null;
  readonly ehrVersion: string | null;
}

/** Filter of {@link AuditRepo.list}. Records come in seq order. */
export interface AuditFilter {
  /** Only records with a seq greater than this (paging). */
  readonly afterSeq?: number;
  readonly tenantId?: string;
  readonly actor?: string;
  /** An exact action, or a prefix ending in `.` (`command.`). */
  readonly action?: string;
  readonly subjectType?: string;
  readonly subjectId?: string;
  /** Epoch ms, inclusive. */
  readonly from?: number;
  /** Epoch ms, exclusive. */
  readonly to?: number;
  /** Default 100, at most 1000. */
  readonly limit?: number;
}

/**
 * The audit log: append-only and hash-chained (`@tether/core` audit-chain). There is no update and no delete.
 * Every append locks the head row, so the chain never forks, whichever process appends.
 */
export interface AuditRepo {
  /**
   * Appends entries, in order, at the end of the chain, in one transaction with the head. Throws CONFIG_INVALID
   * (naming the field) when an entry is malformed; nothing is appended then.
   */
  append(entries: readonly AuditEntry[]): Promise<AuditRecord[]>;
  /**
   * Copies up to `limit` command events that are not in the chain yet, in order, through `toEntry` (which must be
   * pure and must not throw), and advances the tailer's cursor in the same transaction: a crash neither skips nor
   * doubles an event, and concurrent tailers (several processes) copy each event once. Returns the new records.
   */
  copyCommandEvents(toEntry: (event: AuditCommandEvent) => AuditEntry, limit?: number): Promise<AuditRecord[]>;
  list(filter?: AuditFilter): Promise<AuditRecord[]>;
  /** The head row: seq and hash of the last record (seq 0 and the genesis hash when empty); undefined if missing. */
  head(): Promise<AuditHead | undefined>;
}
