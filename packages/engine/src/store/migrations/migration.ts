import { createHash } from 'node:crypto';
import { TetherError } from '@tether/core';

/**
 * One schema migration. Migrations are append-only: once released, a migration's `sql` never changes (the runner
 * refuses to start when the checksum of an applied migration differs), and fixes go into a new migration.
 */
export interface Migration {
  /** 1, 2, 3... without gaps; also the order of application. */
  readonly version: number;
  /** snake_case summary, e.g. `init`, `commands_outbox`. */
  readonly name: string;
  /** The SQL, run in one transaction together with the bookkeeping row in `schema_migrations`. */
  readonly sql: string;
}

/** A row of `schema_migrations`. */
export interface AppliedMigration {
  readonly version: number;
  readonly name: string;
  readonly checksum: string;
}

/** SHA-256 (hex) of the migration's SQL text, byte for byte: whitespace edits count as edits. */
export function migrationChecksum(migration: Migration): string {
  return createHash('sha256').update(migration.sql, 'utf8').digest('hex');
}

/**
 * Checks a dialect's migration list itself: versions 1..n in order, unique names. A failure is a bug in this
 * package, caught by the unit tests before it can reach a database.
 */
export function assertMigrationList(migrations: readonly Migration[]): void {
  const names = new Set<string>();
  migrations.forEach((m, i) => {
    if (m.version !== i + 1) {
      throw new TetherError('STORE_MIGRATION_FAILED', `Migration list out of order: entry ${i} has version ${m.version}.`);
    }
    if (!/^[a-z0-9_]+$/.test(m.name) || names.has(m.name)) {
      throw new TetherError('STORE_MIGRATION_FAILED', `Migration ${m.version} has an invalid or duplicate name.`);
    }
    names.add(m.name);
  });
}

/**
 * Compares what the database has applied with what this build knows, and returns the migrations still to apply.
 *
 * Refuses (STORE_MIGRATION_FAILED) when an applied migration was edited (checksum differs), when the database has
 * a migration this build does not know (it was migrated by a newer build: running older code against a newer
 * schema is not supported), or when the applied set has a hole.
 */
export function pendingMigrations(known: readonly Migration[], applied: readonly AppliedMigration[]): Migration[] {
  const byVersion = new Map(known.map((m) => [m.version, m]));
  for (const row of applied) {
    const migration = byVersion.get(row.version);
    if (!migration) {
      throw new TetherError(
        'STORE_MIGRATION_FAILED',
        `The database has migration ${row.version} (${row.name}), which this build does not know: it was migrated by a newer version of Tether.`,
        { details: { version: row.version } },
      );
    }
    if (migrationChecksum(migration) !== row.checksum || migration.name !== row.name) {
      throw new TetherError(
        'STORE_MIGRATION_FAILED',
        `Migration ${row.version} (${migration.name}) differs from the one applied to this database (checksum mismatch): released migrations must never be edited.`,
        { details: { version: row.version } },
      );
    }
  }
  const done = new Set(applied.map((row) => row.version));
  const pending = known.filter((m) => !done.has(m.version));
  const firstPending = pending[0];
  if (firstPending && applied.some((row) => row.version > firstPending.version)) {
    throw new TetherError(
      'STORE_MIGRATION_FAILED',
      `Migration ${firstPending.version} (${firstPending.name}) is missing although later ones are applied.`,
      { details: { version: firstPending.version } },
    );
  }
  return pending;
}

/** DDL of the bookkeeping table; the same text works on SQLite and PostgreSQL. */
export const SCHEMA_MIGRATIONS_DDL = `
CREATE TABLE IF NOT EXISTS schema_migrations (
  version    integer PRIMARY KEY,
  name       text    NOT NULL,
  checksum   text    NOT NULL,  -- sha256 (hex) of the migration's SQL
  applied_at bigint  NOT NULL   -- epoch ms
)`;
