/**
 * SQLite-only behaviour: the pragmas the store promises, the exclusive file lock that keeps a second process
 * out, sharing a file when that lock is turned off, and open failures. The behaviour shared with PostgreSQL is in
 * store.conformance.test.ts.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { SqliteTestFiles } from './__fixtures__/test-databases.js';
import { DEFAULT_SQLITE_BUSY_TIMEOUT_MS, SqliteStore } from './index.js';

const files = new SqliteTestFiles();
const stores: SqliteStore[] = [];

function openStore(path: string, extra: { exclusive?: boolean; busyTimeoutMs?: number } = {}): SqliteStore {
  const store = new SqliteStore({ kind: 'sqlite', path, ...extra });
  stores.push(store);
  return store;
}

afterAll(async () => {
  await Promise.all(stores.map((s) => s.close()));
  files.remove();
});

describe('SqliteStore', () => {
  it('runs with WAL, synchronous=FULL, foreign keys, busy_timeout and an exclusive lock', async () => {
    const store = openStore(files.path());
    await store.migrate();
    expect(await store.settings()).toEqual({
      journalMode: 'wal',
      synchronous: 2,
      foreignKeys: true,
      busyTimeoutMs: DEFAULT_SQLITE_BUSY_TIMEOUT_MS,
      lockingMode: 'exclusive',
    });
  });

  it('keeps a second opener of the same file out with STORE_UNAVAILABLE, until the first closes', async () => {
    const path = files.path();
    const first = openStore(path);
    await first.migrate();
    const second = openStore(path, { busyTimeoutMs: 50 });
    await expect(second.migrate()).rejects.toMatchObject({ code: 'STORE_UNAVAILABLE' });
    await first.close();
    const third = openStore(path);
    await third.migrate();
    expect(await third.tenants.list()).toEqual([]);
  });

  it('shares a file between connections with exclusive: false, rate limits staying atomic', async () => {
    const path = files.path();
    const a = openStore(path, { exclusive: false });
    const b = openStore(path, { exclusive: false });
    await Promise.all([a.migrate(), b.migrate()]);
    expect((await a.settings()).lockingMode).toBe('normal');
    const decisions = await Promise.all(Array.from({ length: 30 }, (_, i) => (i % 2 ? a : b).rateLimits.take('shared', 4, 0.001, 1_000)));
    expect(decisions.filter((d) => d.allowed)).toHaveLength(4);

    const tenant = await a.tenants.create({
      id: 'shared-tenant',
      vendor: 'generic',
      fhirBaseUrl: 'https://ehr.example.test/fhir',
      environment: 'sandbox',
      authMethod: 'client-secret',
      clientId: 'c',
      scopes: '',
      tokenEndpoint: null,
      dataKeyWrapped: randomBytes(8),
      credentialsCiphertext: null,
    });
    expect(await b.tenants.get(tenant.id)).toEqual(tenant);
  });

  it('reports a missing directory as STORE_UNAVAILABLE from migrate(), not from the constructor', async () => {
    const store = openStore(join(files.path(), 'no', 'such', 'dir.db'));
    await expect(store.migrate()).rejects.toMatchObject({ code: 'STORE_UNAVAILABLE' });
  });

  it('works in memory', async () => {
    const store = openStore(':memory:');
    await store.migrate();
    expect((await store.settings()).journalMode).toBe('memory');
    expect(await store.tenants.list()).toEqual([]);
  });
});
