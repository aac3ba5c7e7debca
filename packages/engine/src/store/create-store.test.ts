import { describe, expect, it } from 'vitest';
import {
  createStore,
  DEFAULT_LOCK_TIMEOUT_MS,
  DEFAULT_PG_APPLICATION_NAME,
  DEFAULT_PG_CONNECT_TIMEOUT_MS,
  DEFAULT_PG_LOCK_POOL_SIZE,
  DEFAULT_PG_POOL_SIZE,
  DEFAULT_PG_STATEMENT_TIMEOUT_MS,
  DEFAULT_SQLITE_BUSY_TIMEOUT_MS,
  DEFAULT_SQLITE_EXCLUSIVE,
  PostgresStore,
  SqliteStore,
  type StoreOptions,
} from './index.js';

describe('createStore', () => {
  it('builds the chosen backend with its defaults, frozen, without touching the database', async () => {
    const sqlite = createStore({ kind: 'sqlite', path: '/nonexistent/dir/tether.db' });
    expect(sqlite).toBeInstanceOf(SqliteStore);
    expect((sqlite as SqliteStore).options).toEqual({
      kind: 'sqlite',
      path: '/nonexistent/dir/tether.db',
      busyTimeoutMs: DEFAULT_SQLITE_BUSY_TIMEOUT_MS,
      exclusive: DEFAULT_SQLITE_EXCLUSIVE,
      lockTimeoutMs: DEFAULT_LOCK_TIMEOUT_MS,
    });
    expect(Object.isFrozen((sqlite as SqliteStore).options)).toBe(true);

    const postgres = createStore({ kind: 'postgres', connectionString: 'postgres://u:p@127.0.0.1:1/db', poolSize: 3 });
    expect(postgres).toBeInstanceOf(PostgresStore);
    expect((postgres as PostgresStore).options).toEqual({
      kind: 'postgres',
      connectionString: 'postgres://u:p@127.0.0.1:1/db',
      poolSize: 3,
      lockPoolSize: DEFAULT_PG_LOCK_POOL_SIZE,
      connectTimeoutMs: DEFAULT_PG_CONNECT_TIMEOUT_MS,
      statementTimeoutMs: DEFAULT_PG_STATEMENT_TIMEOUT_MS,
      lockTimeoutMs: DEFAULT_LOCK_TIMEOUT_MS,
      applicationName: DEFAULT_PG_APPLICATION_NAME,
    });
    expect(DEFAULT_PG_POOL_SIZE).toBeGreaterThan(0);
    await Promise.all([sqlite.close(), postgres.close()]);
  });

  it.each([
    ['an unknown kind', { kind: 'mysql' }],
    ['no path', { kind: 'sqlite' }],
    ['an empty path', { kind: 'sqlite', path: '' }],
    ['an unknown option', { kind: 'sqlite', path: 'x.db', journal: 'delete' }],
    ['a zero pool', { kind: 'postgres', connectionString: 'postgres://localhost/db', poolSize: 0 }],
    ['a fractional timeout', { kind: 'postgres', connectionString: 'postgres://localhost/db', lockTimeoutMs: 1.5 }],
    ['a non-URL connection string', { kind: 'postgres', connectionString: 'host=db password=s3cret-value' }],
    ['not an object', null],
  ])('refuses %s with CONFIG_INVALID', (_label, options) => {
    let error: unknown;
    try {
      createStore(options as unknown as StoreOptions);
    } catch (e) {
      error = e;
    }
    expect(error).toMatchObject({ name: 'TetherError', code: 'CONFIG_INVALID' });
    expect((error as Error).message).not.toContain('s3cret-value');
  });
});
