import type { Migration } from './migration.js';

/**
 * PostgreSQL migrations, in order. APPEND-ONLY: never edit or reorder a released entry (the runner compares
 * checksums and refuses to start); add a new entry instead, with the same version and name as its SQLite twin.
 *
 * The SQL lives in TypeScript strings rather than `.sql` files so that `tsc` ships it in `dist` with no copy step.
 *
 * Conventions: timestamps are `bigint` epoch milliseconds (the engine's clock, not the database's, so tests can
 * inject time); secrets are `bytea` ciphertext produced by the auth layer; `version` columns are optimistic
 * concurrency counters starting at 1.
 */
export const POSTGRES_MIGRATIONS: readonly Migration[] = Object.freeze([
  {
    version: 1,
    name: 'init',
    sql: `
-- One row per health system (tenant). Credentials are ciphertext under the tenant's data key, which is itself
-- wrapped by the master key; the store never sees either key in clear.
CREATE TABLE tenants (
  id                     text    PRIMARY KEY,
  vendor                 text    NOT NULL,
  fhir_base_url          text    NOT NULL,
  environment            text    NOT NULL CHECK (environment IN ('sandbox', 'production')),
  auth_method            text    NOT NULL,
  client_id              text    NOT NULL,
  scopes                 text    NOT NULL,
  token_endpoint         text,
  state                  text    NOT NULL CHECK (state IN ('active', 'auth_paused', 'disabled')),
  state_reason           text,   -- why paused or disabled; no PHI, no secrets
  data_key_wrapped       bytea   NOT NULL,
  credentials_ciphertext bytea,
  version                integer NOT NULL CHECK (version >= 1),
  created_at             bigint  NOT NULL,
  updated_at             bigint  NOT NULL
);

-- Token state per (tenant, context); context is 'system', 'provider:<id>' or 'patient:<id>'.
-- version guards the compare-and-swap that commits a rotated refresh token.
CREATE TABLE auth_tokens (
  tenant_id                text    NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
  context                  text    NOT NULL,
  access_token_ciphertext  bytea,
  access_expires_at        bigint,
  access_issued_at         bigint,
  refresh_token_ciphertext bytea,
  scope                    text,
  version                  integer NOT NULL CHECK (version >= 1),
  updated_at               bigint  NOT NULL,
  PRIMARY KEY (tenant_id, context)
);

-- Token buckets shared by every engine process (EHR rate limits). tokens is fractional: refill is continuous.
CREATE TABLE rate_limit_buckets (
  key        text             PRIMARY KEY,
  tokens     double precision NOT NULL,
  updated_at bigint           NOT NULL   -- epoch ms of the last refill computation
);
`,
  },
  {
    version: 2,
    name: 'commands_outbox',
    sql: `
-- The write-back outbox: one row per clinical intent (DESIGN §5). resource may hold PHI (never logged).
-- Times are epoch ms from the engine's clock; version is the compare-and-swap guard of every change.
CREATE TABLE commands (
  id                text    PRIMARY KEY,
  tenant_id         text    NOT NULL REFERENCES tenants (id),
  context           text    NOT NULL,
  action            text    NOT NULL CHECK (action IN ('create', 'update', 'upsert', 'delete')),
  resource_type     text    NOT NULL,
  business_key      text    NOT NULL,
  idempotency_key   text,
  payload_hash      text    NOT NULL,  -- stableHash of the submitted payload (idempotency comparison)
  resource          jsonb   NOT NULL,  -- canonical FHIR R4 JSON with the business-key identifier stamped in
  priority          text    NOT NULL CHECK (priority IN ('interactive', 'batch')),
  state             text    NOT NULL CHECK (state IN ('queued', 'in_flight', 'acknowledged', 'verified', 'unknown', 'retry_wait', 'rejected', 'conflict', 'needs_review', 'superseded', 'cancelled')),
  state_reason      text,             -- error code or short reason word; no PHI
  attempts          integer NOT NULL CHECK (attempts >= 0),      -- counted against the budget
  attempt_seq       integer NOT NULL CHECK (attempt_seq >= 0),   -- number of the latest attempt, never reset
  budget_started_at bigint   NOT NULL,
  next_attempt_at   bigint   NOT NULL,
  lease_owner       text,
  lease_expires_at  bigint ,
  ehr_id            text,
  ehr_version       text,
  source_timestamp  bigint ,
  generation        integer NOT NULL CHECK (generation >= 1),    -- 1, 2, 3... per (tenant, business key)
  requested_by      text    NOT NULL,
  deadline_at       bigint ,
  created_at        bigint   NOT NULL,
  updated_at        bigint   NOT NULL,
  version           integer NOT NULL CHECK (version >= 1)
);

-- Ingress idempotency: one command per (tenant, key).
CREATE UNIQUE INDEX commands_idempotency ON commands (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
-- Generations are unique per business key; also the index of the per-key single-flight check of the lease query.
CREATE UNIQUE INDEX commands_business_key ON commands (tenant_id, business_key, generation);
-- What the lease query scans: waiting work by due time, working states by lease expiry.
CREATE INDEX commands_due ON commands (next_attempt_at) WHERE state IN ('queued', 'retry_wait');
CREATE INDEX commands_leased ON commands (lease_expires_at) WHERE lease_owner IS NOT NULL;
-- Listing (exception queue, dashboards).
CREATE INDEX commands_tenant_state ON commands (tenant_id, state, created_at);

-- The timeline: one row per attempt, append-only. Never holds resource content.
CREATE TABLE command_attempts (
  command_id     text    NOT NULL REFERENCES commands (id),
  n              integer NOT NULL CHECK (n >= 1),
  worker         text,
  started_at     bigint   NOT NULL,
  ended_at       bigint ,
  outcome        text    NOT NULL,  -- applied | not_sent | rejected | rate_limited | unknown | found | superseded | budget_exhausted | abandoned | error
  error_code     text,
  error_category text,
  ehr_status     integer,
  verification   text,              -- verified | mismatch | absent | unclear | duplicate
  correlation_id text,
  steps          text,              -- the EHR calls of the attempt, e.g. 'search:200 create:unknown search:200 read:200'
  PRIMARY KEY (command_id, n)
);

-- Audit events: submission, every transition, operator actions (who and why). Append-only.
CREATE TABLE command_events (
  seq        bigserial PRIMARY KEY,
  command_id text    NOT NULL REFERENCES commands (id),
  at         bigint   NOT NULL,
  kind       text    NOT NULL,  -- submitted | transition | operator:retry | operator:resolve | operator:cancel
  actor      text    NOT NULL,  -- api:<who> | worker:<id> | operator:<who>
  from_state text,
  to_state   text,
  reason     text               -- reason code, or the operator's note
);
CREATE INDEX command_events_command ON command_events (command_id, seq);
`,
  },
  {
    version: 3,
    name: 'api_keys',
    sql: `
-- API keys of the HTTP API. Only a SHA-256 of the secret is stored (keys are 256-bit random, so a fast hash is
-- enough: there is nothing to brute-force); \`prefix\` is the non-secret start shown to operators.
-- \`tenants\` is a JSON array of tenant ids the key is limited to, or NULL for every tenant.
CREATE TABLE api_keys (
  id           text    PRIMARY KEY,
  name         text    NOT NULL,
  prefix       text    NOT NULL,
  key_hash     text    NOT NULL UNIQUE,
  role         text    NOT NULL CHECK (role IN ('submitter', 'operator', 'viewer', 'admin')),
  tenants      text,
  created_at   bigint NOT NULL,
  created_by   text    NOT NULL,
  revoked_at   bigint,
  last_used_at bigint
);
`,
  },
  {
    version: 4,
    name: 'audit_log',
    sql: `
-- The audit log: append-only, hash-chained (docs/audit.md). Each record's hash is SHA-256 over the canonical JSON of
-- its fields and the previous record's hash (packages/core/src/audit-chain.ts); seq runs 1, 2, 3... without gaps.
-- details is that JSON as text (not jsonb: the hashed bytes must round-trip). No PHI in any column.
CREATE TABLE audit_log (
  seq          bigint  PRIMARY KEY CHECK (seq >= 1),
  at           bigint  NOT NULL,
  actor        text    NOT NULL,  -- api:<key-id> | operator:<key-id> | worker:<id> | system
  action       text    NOT NULL,  -- command.submitted | command.transition | command.operator.retry | token.refreshed ...
  tenant_id    text,
  subject_type text,              -- command | tenant | token | api_key ...
  subject_id   text,
  outcome      text    NOT NULL,
  details      text    NOT NULL,
  prev_hash    text    NOT NULL,
  hash         text    NOT NULL
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, seq);
CREATE INDEX audit_log_subject ON audit_log (subject_type, subject_id, seq);

-- The end of the chain, locked (FOR UPDATE) and updated by every append, so appends from any number of processes
-- are serialised and never fork the chain, and deleting the newest records shows. Also the cursor of the
-- command_events tailer, advanced in the same transaction as the appends.
CREATE TABLE audit_head (
  id         integer PRIMARY KEY CHECK (id = 1),
  last_seq   bigint  NOT NULL CHECK (last_seq >= 0),
  last_hash  text    NOT NULL,
  events_tx  xid8    NOT NULL,  -- cursor: (tx, seq) of the last command event copied
  events_seq bigint  NOT NULL CHECK (events_seq >= 0)
);
INSERT INTO audit_head (id, last_seq, last_hash, events_tx, events_seq) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', '0', 0);

-- The transaction that wrote each command event. A bigserial value is taken at insert, but transactions end in
-- any order, so a tailer reading "seq > cursor" could pass a lower seq whose transaction ends later, and lose it.
-- The tailer instead reads events in (tx, seq) order, only those whose transaction is older than every running
-- one (pg_snapshot_xmin): that set can no longer grow. Rows written before this migration are all committed (the
-- ALTER waits for them) and get tx 0. The constant default first, so adding the column rewrites nothing.
ALTER TABLE command_events ADD COLUMN tx xid8 NOT NULL DEFAULT '0';
ALTER TABLE command_events ALTER COLUMN tx SET DEFAULT pg_current_xact_id();
CREATE INDEX command_events_tx ON command_events (tx, seq);
`,
  },
  {
    version: 5,
    name: 'patient_budget',
    sql: `
-- Poison protection per patient (docs/writeback.md#budgets). patient_ref: the patient the command's resource belongs
-- to ('Patient/<id>', derived at submission; NULL when none or for commands submitted before this migration).
-- PHI-adjacent: never logged, never in metrics or errors. patient_failure: the attempt counts against its patient's
-- failure budget (the worker decides; the store only counts).
ALTER TABLE commands ADD COLUMN patient_ref text;
ALTER TABLE command_attempts ADD COLUMN patient_failure boolean NOT NULL DEFAULT false;
-- The patient-failure count (commands.patientFailures): the patient's commands, their flagged attempts in the window,
-- and the latest operator retry of any of them (which resets the budget). Failures and retries are rare: the partial
-- indexes stay small.
CREATE INDEX commands_patient ON commands (tenant_id, patient_ref) WHERE patient_ref IS NOT NULL;
CREATE INDEX command_attempts_patient_failure ON command_attempts (started_at) WHERE patient_failure;
CREATE INDEX command_events_operator_retry ON command_events (at) WHERE kind = 'operator:retry';
-- Due waiting work by priority (planned in docs/store.md): interactive work is found however much batch work is due.
CREATE INDEX commands_due_priority ON commands (priority, next_attempt_at) WHERE state IN ('queued', 'retry_wait');
`,
  },
  {
    version: 6,
    name: 'drop_commands_due',
    sql: `
-- The lease reads due waiting work through commands_due_priority only (its batch and its interactive end; docs/store.md),
-- so commands_due (next_attempt_at) is no longer read by any query; dropping it saves its upkeep on every submission,
-- lease and retry.
DROP INDEX commands_due;
`,
  },
]);
