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
]);
