/**
 * PostgreSQL-only behaviour, against the real server: advisory locks across store instances and across
 * processes (including a SIGKILLed holder), the two-pool design under pool pressure, concurrent migrators,
 * driver error mapping without leaks. The behaviour shared with SQLite is in store.conformance.test.ts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PgTestDatabases, pgQuery } from './__fixtures__/test-databases.js';
import { advisoryLockKey, MIGRATION_LOCK_KEY, PostgresStore, POSTGRES_MIGRATIONS, type PostgresStoreOptions } from './index.js';

const databases = new PgTestDatabases();
let url: string;
const stores: PostgresStore[] = [];

function openStore(extra: Partial<PostgresStoreOptions> = {}): PostgresStore {
  const store = new PostgresStore({ kind: 'postgres', connectionString: url, ...extra });
  stores.push(store);
  return store;
}

beforeAll(async () => {
  url = await databases.create();
  await openStore().migrate();
});

afterAll(async () => {
  await Promise.all(stores.map((s) => s.close()));
  await databases.dropAll();
});

const worker = fileURLToPath(new URL('./__fixtures__/pg-lock-worker.mjs', import.meta.url));
const register = new URL('./__fixtures__/register-ts.mjs', import.meta.url).href;

function startWorker(...args: string[]): ChildProcess {
  return spawn(process.execPath, ['--conditions=source', '--import', register, worker, ...args], {
    env: { ...process.env, TETHER_LOCK_TEST_URL: url },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

function exited(child: ChildProcess): Promise<void> {
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('exit', (code, signal) => (code === 0 ? resolve() : reject(new Error(`worker exited ${code ?? signal}: ${stderr}`))));
  });
}

describe('PostgresStore withLock across processes', () => {
  it('serialises read-sleep-write increments from 3 processes (150 increments, none lost)', async () => {
    await pgQuery(url, 'CREATE TABLE lock_counter (id integer PRIMARY KEY, n integer NOT NULL); INSERT INTO lock_counter VALUES (1, 0)');
    await Promise.all([1, 2, 3].map(() => exited(startWorker('increment', '50'))));
    const [row] = await pgQuery<{ n: number }>(url, 'SELECT n FROM lock_counter WHERE id = 1');
    expect(row?.n).toBe(150);
  }, 30_000);

  it('frees the lock when its holder is SIGKILLed (the server ends the session)', async () => {
    const holder = startWorker('hold');
    const done = exited(holder).catch(() => {});
    await new Promise<void>((resolve, reject) => {
      holder.stdout?.on('data', (chunk: Buffer) => chunk.toString().includes('locked') && resolve());
      holder.on('exit', () => reject(new Error('holder exited before locking')));
    });
    const store = openStore({ lockTimeoutMs: 10_000 });
    let entered = false;
    const waiting = store.tokens.withLock('tenant-x', 'system', async () => {
      entered = true;
    });
    await sleep(200);
    expect(entered).toBe(false);
    holder.kill('SIGKILL');
    await done;
    await waiting;
    expect(entered).toBe(true);
  }, 30_000);
});

describe('PostgresStore withLock in one process', () => {
  it('excludes a second store instance (its own pool) through the advisory lock', async () => {
    const a = openStore();
    const b = openStore();
    let inside = 0;
    let maxInside = 0;
    let counter = 0;
    const section = async () => {
      inside++;
      maxInside = Math.max(maxInside, inside);
      const read = counter;
      await sleep(2);
      counter = read + 1;
      inside--;
    };
    await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 ? a : b).tokens.withLock('t-shared', 'system', section)));
    expect(counter).toBe(20);
    expect(maxInside).toBe(1);
  });

  it('gives up with STORE_UNAVAILABLE after lockTimeoutMs when another instance holds the lock', async () => {
    const holderStore = openStore();
    const waiterStore = openStore({ lockTimeoutMs: 300 });
    let release!: () => void;
    const holding = holderStore.tokens.withLock('t-timeout', 'system', () => new Promise<void>((resolve) => (release = resolve)));
    await sleep(50);
    const started = Date.now();
    const error = await waiterStore.tokens.withLock('t-timeout', 'system', async () => 'never').catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'STORE_UNAVAILABLE', details: { timeoutMs: 300 } });
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    release();
    await holding;
    // The waiter's lock connection went back to the pool in good order: the next lock works.
    expect(await waiterStore.tokens.withLock('t-timeout', 'system', async () => 'ok')).toBe('ok');
  });

  it('cannot deadlock on its own pool: 1 query connection, 1 lock connection, 12 callers on 4 keys', async () => {
    const store = openStore({ poolSize: 1, lockPoolSize: 1, lockTimeoutMs: 10_000 });
    const tenant = `pool-${randomBytes(3).toString('hex')}`;
    const writer = openStore();
    await writer.tenants.create({
      id: tenant,
      vendor: 'generic',
      fhirBaseUrl: 'https://ehr.example.test/fhir',
      environment: 'sandbox',
      authMethod: 'backend-services',
      clientId: 'c',
      scopes: '',
      tokenEndpoint: null,
      dataKeyWrapped: randomBytes(8),
      credentialsCiphertext: null,
    });
    const results = await Promise.all(
      Array.from({ length: 12 }, (_, i) =>
        store.tokens.withLock(tenant, `provider:${i % 4}`, async () => {
          // Queries inside the section run on the query pool while other callers wait for the lock connection.
          const current = await store.tokens.get(tenant, `provider:${i % 4}`);
          const next = await store.tokens.compareAndSet(tenant, `provider:${i % 4}`, current?.version ?? 0, {
            accessTokenCiphertext: null,
            accessExpiresAt: null,
            accessIssuedAt: null,
            refreshTokenCiphertext: randomBytes(16),
            scope: null,
          });
          return next?.version;
        }),
      ),
    );
    expect(results.every((v) => typeof v === 'number')).toBe(true);
    for (let k = 0; k < 4; k++) expect((await store.tokens.get(tenant, `provider:${k}`))?.version).toBe(3);
  });

  it('derives distinct signed 64-bit keys per (tenant, context)', () => {
    const a = BigInt(advisoryLockKey('tether', 'token', 'acme', 'system'));
    const b = BigInt(advisoryLockKey('tether', 'token', 'acme', 'provider:1'));
    const c = BigInt(advisoryLockKey('tether', 'token', 'acmesystem', ''));
    expect(new Set([a, b, c, BigInt(MIGRATION_LOCK_KEY)]).size).toBe(4);
    for (const key of [a, b, c]) expect(key >= -(2n ** 63n) && key < 2n ** 63n).toBe(true);
    expect(advisoryLockKey('tether', 'token', 'acme', 'system')).toBe(a.toString());
  });
});

describe('PostgresStore migrations', () => {
  it('lets several processes migrate one fresh database at once', async () => {
    const fresh = await databases.create();
    const migrators = [1, 2, 3].map(() => {
      const store = new PostgresStore({ kind: 'postgres', connectionString: fresh });
      stores.push(store);
      return store;
    });
    await Promise.all(migrators.map((s) => s.migrate()));
    const rows = await pgQuery<{ version: number; applied_at: string }>(fresh, 'SELECT version, applied_at FROM schema_migrations ORDER BY version');
    expect(rows.map((r) => r.version)).toEqual(POSTGRES_MIGRATIONS.map((m) => m.version));
  });
});

describe('PostgresStore errors', () => {
  it('maps an unreachable server to STORE_UNAVAILABLE without leaking the password', async () => {
    const store = new PostgresStore({ kind: 'postgres', connectionString: 'postgres://tether:hunter2-secret@127.0.0.1:1/tether', connectTimeoutMs: 2_000 });
    stores.push(store);
    const error = await store.migrate().catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'STORE_UNAVAILABLE', retryClass: 'transient' });
    expect((error as Error).cause).toMatchObject({ code: 'ECONNREFUSED' });
    const everything = JSON.stringify(error, Object.getOwnPropertyNames(error)) + String((error as Error).cause) + String((error as Error).message);
    expect(everything).not.toContain('hunter2');
    await expect(store.tenants.list()).rejects.toMatchObject({ code: 'STORE_UNAVAILABLE' });
  });

  it('keeps row values out of the cause of a constraint violation', async () => {
    const store = openStore();
    const tenant = {
      id: `canary-${randomBytes(4).toString('hex')}`,
      vendor: 'epic',
      fhirBaseUrl: 'https://ehr.example.test/fhir',
      environment: 'sandbox' as const,
      authMethod: 'backend-services' as const,
      clientId: 'c',
      scopes: '',
      tokenEndpoint: null,
      dataKeyWrapped: randomBytes(8),
      credentialsCiphertext: null,
    };
    await store.tenants.create(tenant);
    const error = await store.tenants.create(tenant).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'TENANT_EXISTS' });
    const cause = (error as Error).cause as Record<string, unknown>;
    expect(cause).toMatchObject({ code: '23505', constraint: 'tenants_pkey' });
    expect(cause.detail).toBeUndefined();
    expect(JSON.stringify({ ...cause, message: (cause as unknown as Error).message }) + (error as Error).message).not.toContain(tenant.id);
  });
});
