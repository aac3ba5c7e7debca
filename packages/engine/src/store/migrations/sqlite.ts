import type { Migration } from './migration.js';

/**
 * SQLite migrations, in order. APPEND-ONLY: never edit or reorder a released entry (the runner compares
 * checksums and refuses to start); add a new entry instead, with the same version and name as its PostgreSQL twin.
 *
 * The SQL lives in TypeScript strings rather than `.sql` files so that `tsc` ships it in `dist` with no copy step.
 *
 * Tables are `STRICT`, so a value of the wrong type is an error instead of being stored as whatever it is.
 * Timestamps are integer epoch milliseconds, secrets are blob ciphertext, `version` columns start at 1.
 *
 * Note for later migrations: each migration runs inside a transaction, where `PRAGMA foreign_keys` is a no-op;
 * a table rebuild (SQLite's 12-step ALTER) must therefore keep the foreign keys valid at every step.
 */
export const SQLITE_MIGRATIONS: readonly Migration[] = Object.freeze([
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
  data_key_wrapped       blob    NOT NULL,
  credentials_ciphertext blob,
  version                integer NOT NULL CHECK (version >= 1),
  created_at             integer NOT NULL,
  updated_at             integer NOT NULL
) STRICT;

-- Token state per (tenant, context); context is 'system', 'provider:<id>' or 'patient:<id>'.
-- version guards the compare-and-swap that commits a rotated refresh token.
CREATE TABLE auth_tokens (
  tenant_id                text    NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
  context                  text    NOT NULL,
  access_token_ciphertext  blob,
  access_expires_at        integer,
  access_issued_at         integer,
  refresh_token_ciphertext blob,
  scope                    text,
  version                  integer NOT NULL CHECK (version >= 1),
  updated_at               integer NOT NULL,
  PRIMARY KEY (tenant_id, context)
) STRICT;

-- Token buckets (EHR rate limits). tokens is fractional: refill is continuous.
CREATE TABLE rate_limit_buckets (
  key        text    PRIMARY KEY,
  tokens     real    NOT NULL,
  updated_at integer NOT NULL   -- epoch ms of the last refill computation
) STRICT;
`,
  },
]);
