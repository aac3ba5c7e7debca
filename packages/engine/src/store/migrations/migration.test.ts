import { describe, expect, it } from 'vitest';
import { assertMigrationList, migrationChecksum, pendingMigrations, type Migration } from './migration.js';
import { POSTGRES_MIGRATIONS } from './postgres.js';
import { SQLITE_MIGRATIONS } from './sqlite.js';

/**
 * The checksum of every released migration, pinned. Migrations are append-only: when you add one, add its two
 * checksums here; if a test below fails for an existing entry, you edited a released migration, and every
 * database it was applied to will refuse to start. Put the change in a new migration instead.
 */
const RELEASED: readonly { version: number; name: string; sqlite: string; postgres: string }[] = [
  {
    version: 1,
    name: 'init',
    sqlite: '9eb41353e569a4b060287d1421274749bc19838a40240d09a337d1d09c484dcc',
    postgres: 'a425b6b73d002905c407fc2365b807207ef10c3df58788747f98e8b8b7ec1b0b',
  },
  {
    version: 2,
    name: 'commands_outbox',
    sqlite: '85e6f476f55524184c9a4f3b7c5c6e5880792b6386a69ec56c304cb3ee0161d2',
    postgres: '5f6c3ed60641c60c49f2d7382bf293681d5b0c7d2b650b877d8dbedd9c1d34c4',
  },
  {
    version: 3,
    name: 'api_keys',
    sqlite: '0e20c22779130978a6168903b653c210dd9bb1db4e063be31a83d53e3adb6d7c',
    postgres: 'df6a7fc76ed1c8720309c5ae9bb8b3da9ded00b2bd8c7ee28f7dcbcf6f2a8865',
  },
  {
    version: 4,
    name: 'audit_log',
    sqlite: '64b3ccc099492a2ac260a820fa8e890600e3080fd184ba704810cd5837b4cbc5',
    postgres: 'cf12ae6b1113a56ee950ed1aa57519e3bdf36182e4c76706bc9eff814fcfb087',
  },
  {
    version: 5,
    name: 'patient_budget',
    sqlite: '3a7b2e70d6ca53f3890d6e1884ef5aa2a49b5dad6535e242d0b76f015c7386ff',
    postgres: '49792dc09a9566708cf4e5f2c0baa0f0ec466da581c10a2800e145a05d9c7065',
  },
  {
    version: 6,
    name: 'drop_commands_due',
    sqlite: '4eaf4f1836d3e4f3c2439cb2bc5a56976381bbaf07de9afc59e9f1061edb68c3',
    postgres: '4eaf4f1836d3e4f3c2439cb2bc5a56976381bbaf07de9afc59e9f1061edb68c3',
  },
];

describe('released migrations', () => {
  it('are well-formed lists: versions 1..n, unique names', () => {
    expect(() => assertMigrationList(SQLITE_MIGRATIONS)).not.toThrow();
    expect(() => assertMigrationList(POSTGRES_MIGRATIONS)).not.toThrow();
  });

  it('move in lockstep: same versions and names in both dialects', () => {
    expect(SQLITE_MIGRATIONS.map(({ version, name }) => ({ version, name }))).toEqual(POSTGRES_MIGRATIONS.map(({ version, name }) => ({ version, name })));
  });

  it('are never edited once released (pinned checksums)', () => {
    expect(SQLITE_MIGRATIONS).toHaveLength(RELEASED.length);
    RELEASED.forEach((pinned, i) => {
      expect({ version: SQLITE_MIGRATIONS[i]?.version, name: SQLITE_MIGRATIONS[i]?.name }).toEqual({ version: pinned.version, name: pinned.name });
      expect(migrationChecksum(SQLITE_MIGRATIONS[i] as Migration)).toBe(pinned.sqlite);
      expect(migrationChecksum(POSTGRES_MIGRATIONS[i] as Migration)).toBe(pinned.postgres);
    });
  });

  it('hold no transaction control (each runs inside the runner’s transaction)', () => {
    for (const m of [...SQLITE_MIGRATIONS, ...POSTGRES_MIGRATIONS]) expect(m.sql).not.toMatch(/\b(BEGIN|COMMIT|ROLLBACK)\b/i);
  });
});

describe('pendingMigrations', () => {
  const known: Migration[] = [
    { version: 1, name: 'one', sql: 'CREATE TABLE a (x integer)' },
    { version: 2, name: 'two', sql: 'CREATE TABLE b (x integer)' },
  ];
  const applied = (m: Migration) => ({ version: m.version, name: m.name, checksum: migrationChecksum(m) });

  it('returns what is not applied yet, in order', () => {
    expect(pendingMigrations(known, [])).toEqual(known);
    expect(pendingMigrations(known, [applied(known[0]!)])).toEqual([known[1]]);
    expect(pendingMigrations(known, known.map(applied))).toEqual([]);
  });

  it('refuses an edited, renamed or unknown applied migration, and a hole', () => {
    const code = { code: 'STORE_MIGRATION_FAILED' };
    expect(() => pendingMigrations(known, [{ ...applied(known[0]!), checksum: 'x' }])).toThrow(expect.objectContaining(code));
    expect(() => pendingMigrations(known, [{ ...applied(known[0]!), name: 'uno' }])).toThrow(expect.objectContaining(code));
    expect(() => pendingMigrations(known, [...known.map(applied), { version: 3, name: 'three', checksum: 'y' }])).toThrow(
      expect.objectContaining(code),
    );
    expect(() => pendingMigrations(known, [applied(known[1]!)])).toThrow(expect.objectContaining(code));
  });

  it('rejects malformed lists', () => {
    expect(() => assertMigrationList([known[1]!])).toThrow(expect.objectContaining({ code: 'STORE_MIGRATION_FAILED' }));
    expect(() => assertMigrationList([known[0]!, { ...known[1]!, name: 'one' }])).toThrow(expect.objectContaining({ code: 'STORE_MIGRATION_FAILED' }));
  });
});
