/**
 * One suite, both implementations: whatever the engine relies on from the store must hold on SQLite and on the
 * real PostgreSQL server alike. Backend-specific behaviour (pragmas, cross-process locking, pools) is tested in
 * sqlite-store.test.ts and postgres-store.test.ts.
 */
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyAuditChain, type AuditEntry, type AuditRecord, type ErrorCode } from '@tether/core';
import { newTenant, uid } from './__fixtures__/records.js';
import { PgTestDatabases, SqliteTestFiles } from './__fixtures__/test-databases.js';
import {
  PostgresStore,
  POSTGRES_MIGRATIONS,
  SqliteStore,
  SQLITE_MIGRATIONS,
  type AuditCommandEvent,
  type AuditFilter,
  type Migration,
  type NewCommand,
  type NewTenant,
  type Store,
  type TokenWrite,
} from './index.js';

interface OpenExtra {
  readonly clock?: () => number;
  readonly lockTimeoutMs?: number;
  readonly migrations?: readonly Migration[];
}

interface Backend {
  readonly kind: 'sqlite' | 'postgres';
  /** The released migrations of this dialect. */
  readonly migrations: readonly Migration[];
  /** A new empty database, and a function that opens (un-migrated) stores on it. */
  database(): Promise<(extra?: OpenExtra) => Store>;
  cleanup(): Promise<void>;
}

function sqliteBackend(): Backend {
  let files: SqliteTestFiles | undefined;
  return {
    kind: 'sqlite',
    migrations: SQLITE_MIGRATIONS,
    async database() {
      files ??= new SqliteTestFiles();
      const path = files.path();
      return (extra = {}) => new SqliteStore({ kind: 'sqlite', path, ...extra });
    },
    async cleanup() {
      files?.remove();
    },
  };
}

function postgresBackend(): Backend {
  const databases = new PgTestDatabases();
  return {
    kind: 'postgres',
    migrations: POSTGRES_MIGRATIONS,
    async database() {
      const connectionString = await databases.create();
      return (extra = {}) => new PostgresStore({ kind: 'postgres', connectionString, ...extra });
    },
    cleanup: () => databases.dropAll(),
  };
}

function tokenWrite(overrides: Partial<TokenWrite> = {}): TokenWrite {
  return {
    accessTokenCiphertext: randomBytes(200),
    accessExpiresAt: 1_700_000_300_000,
    accessIssuedAt: 1_700_000_000_000,
    refreshTokenCiphertext: randomBytes(120),
    scope: 'system/Patient.rs',
    ...overrides,
  };
}

function newCommand(tenantId: string, overrides: Partial<NewCommand> = {}): NewCommand {
  return {
    id: `cmd-${uid()}${uid()}`,
    tenantId,
    context: 'system',
    action: 'create',
    resourceType: 'Observation',
    businessKey: `key-${uid()}`,
    idempotencyKey: null,
    payloadHash: randomBytes(32).toString('hex'),
    resource: { resourceType: 'Observation', status: 'final', valueQuantity: { value: 72.5 } },
    priority: 'interactive',
    ehrVersion: null,
    sourceTimestamp: null,
    requestedBy: 'api:test',
    deadlineAt: null,
    ...overrides,
  };
}

async function expectCode(promise: Promise<unknown>, code: ErrorCode): Promise<void> {
  await expect(promise).rejects.toMatchObject({ name: 'TetherError', code });
}

describe.each([sqliteBackend(), postgresBackend()])('store conformance ($kind)', (backend) => {
  let now = 1_700_000_000_000;
  const clock = () => now;
  let open: (extra?: OpenExtra) => Store;
  let store: Store;

  beforeAll(async () => {
    open = await backend.database();
    store = open({ clock });
    await store.migrate();
  });

  afterAll(async () => {
    await store?.close();
    await backend.cleanup();
  });

  describe('tenants', () => {
    it('creates a tenant at version 1, active, and reads it back', async () => {
      const input = newTenant();
      const created = await store.tenants.create(input);
      expect(created).toEqual({ ...input, state: 'active', stateReason: null, version: 1, createdAt: now, updatedAt: now });
      expect(await store.tenants.get(input.id)).toEqual(created);
      expect(await store.tenants.get(`missing-${uid()}`)).toBeUndefined();
    });

    it('creates a tenant in a given state, with nullable fields null', async () => {
      const input = newTenant({ state: 'disabled', tokenEndpoint: null, credentialsCiphertext: null });
      const created = await store.tenants.create(input);
      expect(created).toMatchObject({ state: 'disabled', stateReason: null, tokenEndpoint: null, credentialsCiphertext: null });
    });

    it('lists every tenant, ordered by id', async () => {
      const a = await store.tenants.create(newTenant({ id: `list-b-${uid()}` }));
      const b = await store.tenants.create(newTenant({ id: `list-a-${uid()}` }));
      const listed = await store.tenants.list();
      expect(listed).toContainEqual(a);
      expect(listed).toContainEqual(b);
      const ids = listed.map((t) => t.id);
      expect(ids).toEqual([...ids].sort());
    });

    it('orders ids bytewise on both backends (case and punctuation included)', async () => {
      const prefix = `order-${uid()}`;
      const ids = [`${prefix}-b`, `${prefix}-B`, `${prefix}_a`, `${prefix}-a-z`, `${prefix}-az`, `${prefix}.c`];
      for (const id of ids) await store.tenants.create(newTenant({ id }));
      const listed = (await store.tenants.list()).map((t) => t.id).filter((id) => id.startsWith(prefix));
      expect(listed).toEqual([...ids].sort());
    });

    it('refuses a duplicate id with TENANT_EXISTS and keeps the original', async () => {
      const original = await store.tenants.create(newTenant());
      await expectCode(store.tenants.create(newTenant({ id: original.id, vendor: 'oracle' })), 'TENANT_EXISTS');
      expect(await store.tenants.get(original.id)).toEqual(original);
    });

    it('round-trips ciphertext byte for byte (every byte value, NUL, empty)', async () => {
      const everyByte = Buffer.from(Array.from({ length: 512 }, (_, i) => (i * 7 + 3) % 256));
      const created = await store.tenants.create(newTenant({ dataKeyWrapped: Buffer.alloc(0), credentialsCiphertext: everyByte }));
      const read = await store.tenants.get(created.id);
      expect(Buffer.isBuffer(read?.credentialsCiphertext)).toBe(true);
      expect(read?.credentialsCiphertext?.equals(everyByte)).toBe(true);
      expect(read?.dataKeyWrapped.length).toBe(0);
    });

    it('updates a patch, increments the version, moves updatedAt only', async () => {
      const created = await store.tenants.create(newTenant());
      now += 1_000;
      const key = randomBytes(48);
      const updated = await store.tenants.update(created.id, {
        state: 'auth_paused',
        stateReason: 'invalid_grant from the token endpoint',
        tokenEndpoint: null,
        dataKeyWrapped: key,
      });
      expect(updated).toEqual({
        ...created,
        state: 'auth_paused',
        stateReason: 'invalid_grant from the token endpoint',
        tokenEndpoint: null,
        dataKeyWrapped: key,
        version: 2,
        updatedAt: now,
      });
      expect(await store.tenants.get(created.id)).toEqual(updated);
      // An empty patch is still an update: it bumps the version.
      expect((await store.tenants.update(created.id, {}))?.version).toBe(3);
    });

    it('applies an update with the current expectedVersion; a stale one returns undefined and changes nothing', async () => {
      const created = await store.tenants.create(newTenant());
      const v2 = await store.tenants.update(created.id, { scopes: 'system/*.rs' }, 1);
      expect(v2?.version).toBe(2);
      now += 1_000;
      expect(await store.tenants.update(created.id, { scopes: 'stale write' }, 1)).toBeUndefined();
      expect(await store.tenants.update(created.id, { scopes: 'future write' }, 7)).toBeUndefined();
      expect(await store.tenants.get(created.id)).toEqual(v2);
    });

    it('lets exactly one of several concurrent updates with the same expectedVersion win', async () => {
      const created = await store.tenants.create(newTenant());
      const results = await Promise.all(
        Array.from({ length: 10 }, (_, i) => store.tenants.update(created.id, { clientId: `client-${i}` }, created.version)),
      );
      const winners = results.filter((r) => r !== undefined);
      expect(winners).toHaveLength(1);
      expect(await store.tenants.get(created.id)).toEqual(winners[0]);
    });

    it('answers TENANT_NOT_FOUND when updating a tenant that does not exist', async () => {
      await expectCode(store.tenants.update(`missing-${uid()}`, { vendor: 'epic' }), 'TENANT_NOT_FOUND');
      await expectCode(store.tenants.update(`missing-${uid()}`, { vendor: 'epic' }, 1), 'TENANT_NOT_FOUND');
    });

    it('refuses invalid input with CONFIG_INVALID without echoing the value', async () => {
      const bad = { ...newTenant(), environment: 'prod-secret-value' } as unknown as NewTenant;
      const error = await store.tenants.create(bad).catch((e: unknown) => e);
      expect(error).toMatchObject({ code: 'CONFIG_INVALID' });
      expect(String((error as Error).message)).not.toContain('prod-secret-value');

      const created = await store.tenants.create(newTenant());
      await expectCode(store.tenants.update(created.id, { version: 9 } as never), 'CONFIG_INVALID');
      await expectCode(store.tenants.update(created.id, { state: 'paused' } as never), 'CONFIG_INVALID');
      await expectCode(store.tenants.update(created.id, {}, -1), 'CONFIG_INVALID');
      expect((await store.tenants.get(created.id))?.version).toBe(1);
    });
  });

  describe('tokens', () => {
    it('reads nothing for a token never written', async () => {
      const tenant = await store.tenants.create(newTenant());
      expect(await store.tokens.get(tenant.id, 'system')).toBeUndefined();
    });

    it('inserts with version 0 once, then only the holder of the current version can write', async () => {
      const tenant = await store.tenants.create(newTenant());
      const first = tokenWrite();
      const v1 = await store.tokens.compareAndSet(tenant.id, 'system', 0, first);
      expect(v1).toEqual({ ...first, tenantId: tenant.id, context: 'system', version: 1, updatedAt: now });
      expect(await store.tokens.get(tenant.id, 'system')).toEqual(v1);

      expect(await store.tokens.compareAndSet(tenant.id, 'system', 0, tokenWrite())).toBeUndefined();
      expect(await store.tokens.compareAndSet(tenant.id, 'system', 2, tokenWrite())).toBeUndefined();
      expect(await store.tokens.get(tenant.id, 'system')).toEqual(v1);

      now += 5_000;
      const rotated = tokenWrite({ accessExpiresAt: null, accessIssuedAt: null, accessTokenCiphertext: null, scope: null });
      const v2 = await store.tokens.compareAndSet(tenant.id, 'system', 1, rotated);
      expect(v2).toEqual({ ...rotated, tenantId: tenant.id, context: 'system', version: 2, updatedAt: now });
      expect(await store.tokens.compareAndSet(tenant.id, 'system', 1, tokenWrite())).toBeUndefined();
      expect(await store.tokens.get(tenant.id, 'system')).toEqual(v2);
    });

    it('keeps contexts apart', async () => {
      const tenant = await store.tenants.create(newTenant());
      const system = await store.tokens.compareAndSet(tenant.id, 'system', 0, tokenWrite());
      const provider = await store.tokens.compareAndSet(tenant.id, 'provider:dr-1', 0, tokenWrite());
      expect(system?.version).toBe(1);
      expect(provider?.version).toBe(1);
      expect(await store.tokens.get(tenant.id, 'provider:dr-1')).toEqual(provider);
    });

    it('lets exactly one of 20 concurrent compare-and-sets win, for the first write and for a rotation', async () => {
      const tenant = await store.tenants.create(newTenant());
      const writes = Array.from({ length: 20 }, () => tokenWrite());

      const firsts = await Promise.all(writes.map((w) => store.tokens.compareAndSet(tenant.id, 'system', 0, w)));
      const firstWinners = firsts.filter((r) => r !== undefined);
      expect(firstWinners).toHaveLength(1);

      const rotations = await Promise.all(writes.map((w) => store.tokens.compareAndSet(tenant.id, 'system', 1, w)));
      const winners = rotations.filter((r) => r !== undefined);
      expect(winners).toHaveLength(1);
      const stored = await store.tokens.get(tenant.id, 'system');
      expect(stored).toEqual(winners[0]);
      expect(stored?.version).toBe(2);
      const winnerIndex = rotations.findIndex((r) => r !== undefined);
      expect(stored?.refreshTokenCiphertext?.equals(writes[winnerIndex]?.refreshTokenCiphertext ?? Buffer.alloc(1))).toBe(true);
    });

    it('answers TENANT_NOT_FOUND for a token of an unknown tenant', async () => {
      await expectCode(store.tokens.compareAndSet(`missing-${uid()}`, 'system', 0, tokenWrite()), 'TENANT_NOT_FOUND');
    });
  });

  describe('withLock', () => {
    it('admits one caller at a time (read, await, write never interleaves)', async () => {
      const tenant = await store.tenants.create(newTenant());
      let counter = 0;
      let inside = 0;
      let maxInside = 0;
      const callers = 25;
      await Promise.all(
        Array.from({ length: callers }, () =>
          store.tokens.withLock(tenant.id, 'system', async () => {
            inside++;
            maxInside = Math.max(maxInside, inside);
            const read = counter;
            await sleep(1);
            counter = read + 1;
            inside--;
          }),
        ),
      );
      expect(counter).toBe(callers);
      expect(maxInside).toBe(1);
    });

    it('lets the holder use the store, and returns what fn returns', async () => {
      const tenant = await store.tenants.create(newTenant());
      // Several concurrent single-flight refreshes: the first finds no token and writes version 1, each later one
      // reads the current version inside the lock and rotates it. No write is ever lost.
      const results = await Promise.all(
        Array.from({ length: 8 }, () =>
          store.tokens.withLock(tenant.id, 'system', async () => {
            const current = await store.tokens.get(tenant.id, 'system');
            const next = await store.tokens.compareAndSet(tenant.id, 'system', current?.version ?? 0, tokenWrite());
            await store.rateLimits.take(`lock-${tenant.id}`, 100, 1, now);
            return next?.version;
          }),
        ),
      );
      expect([...results].sort((a, b) => (a ?? 0) - (b ?? 0))).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    });

    it('does not block other keys', async () => {
      const tenant = await store.tenants.create(newTenant());
      let releaseHolder!: () => void;
      const holding = store.tokens.withLock(tenant.id, 'system', () => new Promise<void>((resolve) => (releaseHolder = resolve)));
      await sleep(20);
      expect(await store.tokens.withLock(tenant.id, 'patient:p-1', async () => 'other context')).toBe('other context');
      releaseHolder();
      await holding;
    });

    it("passes fn's error through and releases the lock", async () => {
      const tenant = await store.tenants.create(newTenant());
      await expect(
        store.tokens.withLock(tenant.id, 'system', async () => {
          throw new Error('refresh failed');
        }),
      ).rejects.toThrow('refresh failed');
      expect(await store.tokens.withLock(tenant.id, 'system', async () => 'next')).toBe('next');
    });

    it('fails a waiter with STORE_UNAVAILABLE after lockTimeoutMs, and the lock still works afterwards', async () => {
      const scratch = open({ lockTimeoutMs: 150 });
      try {
        let releaseHolder!: () => void;
        const holding = scratch.tokens.withLock('t', 'system', () => new Promise<void>((resolve) => (releaseHolder = resolve)));
        await sleep(20);
        const started = Date.now();
        await expectCode(scratch.tokens.withLock('t', 'system', async () => 'never'), 'STORE_UNAVAILABLE');
        expect(Date.now() - started).toBeGreaterThanOrEqual(140);
        releaseHolder();
        await holding;
        expect(await scratch.tokens.withLock('t', 'system', async () => 'after')).toBe('after');
      } finally {
        await scratch.close();
      }
    });
  });

  describe('rate limits', () => {
    it('serves up to capacity, then says how long to wait', async () => {
      const key = `rl-${uid()}`;
      const t0 = 1_000_000;
      for (let i = 0; i < 3; i++) expect(await store.rateLimits.take(key, 3, 2, t0)).toEqual({ allowed: true, waitMs: 0 });
      // 2 tokens per second: the next one is 500 ms away.
      expect(await store.rateLimits.take(key, 3, 2, t0)).toEqual({ allowed: false, waitMs: 500 });
      expect(await store.rateLimits.take(key, 3, 2, t0 + 200)).toEqual({ allowed: false, waitMs: 300 });
      expect(await store.rateLimits.take(key, 3, 2, t0 + 500)).toEqual({ allowed: true, waitMs: 0 });
      expect(await store.rateLimits.take(key, 3, 2, t0 + 500)).toEqual({ allowed: false, waitMs: 500 });
    });

    it('refills continuously but never beyond capacity', async () => {
      const key = `rl-${uid()}`;
      const t0 = 2_000_000;
      for (let i = 0; i < 5; i++) await store.rateLimits.take(key, 5, 10, t0);
      // An hour later the bucket is full again: 5 tokens, not 36,000.
      const later = t0 + 3_600_000;
      const decisions = [];
      for (let i = 0; i < 7; i++) decisions.push((await store.rateLimits.take(key, 5, 10, later)).allowed);
      expect(decisions).toEqual([true, true, true, true, true, false, false]);
    });

    it('takes a cost of several tokens', async () => {
      const key = `rl-${uid()}`;
      expect(await store.rateLimits.take(key, 10, 1, 0, 6)).toEqual({ allowed: true, waitMs: 0 });
      expect(await store.rateLimits.take(key, 10, 1, 0, 6)).toEqual({ allowed: false, waitMs: 2_000 });
      expect(await store.rateLimits.take(key, 10, 1, 2_000, 6)).toEqual({ allowed: true, waitMs: 0 });
    });

    it('does not refill when a caller’s clock is behind the bucket', async () => {
      const key = `rl-${uid()}`;
      await store.rateLimits.take(key, 1, 1, 10_000);
      expect(await store.rateLimits.take(key, 1, 1, 5_000)).toEqual({ allowed: false, waitMs: 1_000 });
      expect(await store.rateLimits.take(key, 1, 1, 10_999)).toEqual({ allowed: false, waitMs: 1 });
      expect(await store.rateLimits.take(key, 1, 1, 11_000)).toEqual({ allowed: true, waitMs: 0 });
    });

    it('never lets concurrent takes exceed capacity', async () => {
      const key = `rl-${uid()}`;
      const decisions = await Promise.all(Array.from({ length: 40 }, () => store.rateLimits.take(key, 7, 0.001, 50_000)));
      expect(decisions.filter((d) => d.allowed)).toHaveLength(7);
      for (const denied of decisions.filter((d) => !d.allowed)) expect(denied.waitMs).toBeGreaterThan(0);
    });

    it('refuses impossible parameters with CONFIG_INVALID', async () => {
      await expectCode(store.rateLimits.take(`rl-${uid()}`, 2, 1, 0, 3), 'CONFIG_INVALID');
      await expectCode(store.rateLimits.take(`rl-${uid()}`, 0, 1, 0), 'CONFIG_INVALID');
      await expectCode(store.rateLimits.take(`rl-${uid()}`, 2, 0, 0), 'CONFIG_INVALID');
      await expectCode(store.rateLimits.take(`rl-${uid()}`, 2, 1, Number.NaN), 'CONFIG_INVALID');
    });
  });

  describe('commands', () => {
    it('inserts a command as queued, generation 1, with a submitted event, and reads it back', async () => {
      const tenant = await store.tenants.create(newTenant());
      const input = newCommand(tenant.id, { sourceTimestamp: 1_600_000_000_000, ehrVersion: '3' });
      const { command, created } = await store.commands.insert(input, 'api:alice');
      expect(created).toBe(true);
      expect(command).toMatchObject({
        ...input,
        state: 'queued',
        stateReason: null,
        attempts: 0,
        attemptSeq: 0,
        generation: 1,
        nextAttemptAt: now,
        budgetStartedAt: now,
        leaseOwner: null,
        leaseExpiresAt: null,
        ehrId: null,
        patientRef: null,
        version: 1,
        createdAt: now,
      });
      expect(await store.commands.get(input.id)).toEqual(command);
      expect(await store.commands.get(`missing-${uid()}`)).toBeUndefined();
      expect(await store.commands.events(input.id)).toEqual([
        expect.objectContaining({ kind: 'submitted', actor: 'api:alice', fromState: null, toState: 'queued', at: now }),
      ]);
    });

    it('numbers generations per (tenant, business key), also under concurrent submissions', async () => {
      const tenant = await store.tenants.create(newTenant());
      const results = await Promise.all(Array.from({ length: 12 }, () => store.commands.insert(newCommand(tenant.id, { businessKey: 'shared' }), 'api:t')));
      expect(results.map((r) => r.command.generation).sort((a, b) => a - b)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
      expect((await store.commands.insert(newCommand(tenant.id, { businessKey: 'other' }), 'api:t')).command.generation).toBe(1);
    });

    it('answers an idempotent replay with the original, and a reused key with IDEMPOTENCY_KEY_REUSED', async () => {
      const tenant = await store.tenants.create(newTenant());
      const first = newCommand(tenant.id, { idempotencyKey: 'idem-1' });
      const original = await store.commands.insert(first, 'api:t');
      const replay = await store.commands.insert({ ...first, id: `cmd-${uid()}` }, 'api:t');
      expect(replay).toEqual({ command: original.command, created: false });
      await expectCode(store.commands.insert(newCommand(tenant.id, { idempotencyKey: 'idem-1' }), 'api:t'), 'IDEMPOTENCY_KEY_REUSED');
      // Keys are per tenant.
      const other = await store.tenants.create(newTenant());
      expect((await store.commands.insert(newCommand(other.id, { idempotencyKey: 'idem-1' }), 'api:t')).created).toBe(true);
      expect(await store.commands.list({ tenantId: tenant.id })).toHaveLength(1);
    });

    it.each([
      ['without', false],
      ['with', true],
    ])('lets exactly one of 10 concurrent submissions with one idempotency key create the command (%s a tenant check)', async (_label, checked) => {
      const tenant = await store.tenants.create(newTenant());
      const base = newCommand(tenant.id, { idempotencyKey: 'idem-race' });
      const insert = (cmd: NewCommand) =>
        checked ? store.commands.insert(cmd, 'api:t', undefined, { version: tenant.version }) : store.commands.insert(cmd, 'api:t');
      // Half of them with another business key: the idempotency index, not the key lock, must decide.
      const results = await Promise.all(
        Array.from({ length: 10 }, (_, i) => insert({ ...base, id: `cmd-${uid()}`, businessKey: i % 2 === 0 ? base.businessKey : `k-${i}` }).catch((e: unknown) => e)),
      );
      const ok = results.filter((r): r is { created: boolean; command: { id: string } } => typeof r === 'object' && r !== null && 'created' in r);
      const errors = results.filter((r) => !ok.includes(r as never));
      expect(ok.filter((r) => r.created)).toHaveLength(1);
      expect(new Set(ok.map((r) => r.command.id)).size).toBe(1);
      // Same payload hash: every other answer is the replay; a different business key is still the same payload
      // here (the hash is the caller's), so none may fail.
      expect(errors).toEqual([]);
    });

    it('refuses a command of an unknown tenant (TENANT_NOT_FOUND) and invalid input without echoing it (COMMAND_INVALID)', async () => {
      await expectCode(store.commands.insert(newCommand(`missing-${uid()}`), 'api:t'), 'TENANT_NOT_FOUND');
      const tenant = await store.tenants.create(newTenant());
      const error = await store.commands.insert({ ...newCommand(tenant.id), action: 'merge-secret-value' as never }, 'api:t').catch((e: unknown) => e);
      expect(error).toMatchObject({ code: 'COMMAND_INVALID' });
      expect(String((error as Error).message)).not.toContain('merge-secret-value');
    });

    it('leases due commands once, interactive first, and again only after the lease expired', async () => {
      const tenant = await store.tenants.create(newTenant());
      const batch = (await store.commands.insert(newCommand(tenant.id, { priority: 'batch' }), 'api:t')).command;
      const interactive = (await store.commands.insert(newCommand(tenant.id), 'api:t')).command;
      const t = now + 10;
      const [first] = await store.commands.lease({ owner: 'w1', now: t, leaseMs: 1_000, tenantId: tenant.id });
      expect(first).toMatchObject({ id: interactive.id, state: 'in_flight', leaseOwner: 'w1', leaseExpiresAt: t + 1_000, attempts: 1, attemptSeq: 1, version: 2 });
      const [second] = await store.commands.lease({ owner: 'w2', now: t, leaseMs: 1_000, tenantId: tenant.id });
      expect(second?.id).toBe(batch.id);
      expect(await store.commands.lease({ owner: 'w3', now: t + 999, leaseMs: 1_000, tenantId: tenant.id })).toEqual([]);
      // Expired: leased again, state kept (the next worker resumes and reconciles), attempt 2.
      const again = await store.commands.lease({ owner: 'w3', now: t + 1_000, leaseMs: 1_000, tenantId: tenant.id, limit: 5 });
      expect(again.map((c) => [c.id, c.state, c.leaseOwner, c.attemptSeq])).toEqual([
        [interactive.id, 'in_flight', 'w3', 2],
        [batch.id, 'in_flight', 'w3', 2],
      ]);
    });

    it('finds interactive work however much batch work is due before it (commands_due_priority)', async () => {
      const tenant = await store.tenants.create(newTenant());
      await Promise.all(Array.from({ length: 1_100 }, () => store.commands.insert(newCommand(tenant.id, { priority: 'batch' }), 'api:t')));
      now += 1;
      const interactive = (await store.commands.insert(newCommand(tenant.id), 'api:t')).command;
      const leased = await store.commands.lease({ owner: 'w', now, leaseMs: 1_000, tenantId: tenant.id, limit: 2 });
      expect(leased.map((c) => c.priority)).toEqual(['interactive', 'batch']);
      expect(leased[0]?.id).toBe(interactive.id);
    });

    it('does not lease a command before its nextAttemptAt', async () => {
      const tenant = await store.tenants.create(newTenant());
      const { command } = await store.commands.insert(newCommand(tenant.id), 'api:t');
      const [leased] = await store.commands.lease({ owner: 'w', now, leaseMs: 1_000, tenantId: tenant.id });
      const waiting = await store.commands.transition(command.id, leased!.version, { state: 'retry_wait', nextAttemptAt: now + 5_000, leaseOwner: null, leaseExpiresAt: null });
      expect(waiting?.state).toBe('retry_wait');
      expect(await store.commands.lease({ owner: 'w', now: now + 4_999, leaseMs: 1_000, tenantId: tenant.id })).toEqual([]);
      expect((await store.commands.lease({ owner: 'w', now: now + 5_000, leaseMs: 1_000, tenantId: tenant.id }))[0]).toMatchObject({ state: 'in_flight', attempts: 2 });
    });

    it('leases at most one command per business key while its lease is live', async () => {
      const tenant = await store.tenants.create(newTenant());
      const a = (await store.commands.insert(newCommand(tenant.id, { businessKey: 'k' }), 'api:t')).command;
      const b = (await store.commands.insert(newCommand(tenant.id, { businessKey: 'k' }), 'api:t')).command;
      const leased = await store.commands.lease({ owner: 'w1', now, leaseMs: 1_000, tenantId: tenant.id, limit: 10 });
      expect(leased.map((c) => c.id)).toEqual([a.id]);
      expect(await store.commands.lease({ owner: 'w2', now, leaseMs: 1_000, tenantId: tenant.id, limit: 10 })).toEqual([]);
      await store.commands.transition(a.id, leased[0]!.version, { state: 'verified', leaseOwner: null, leaseExpiresAt: null });
      expect((await store.commands.lease({ owner: 'w2', now, leaseMs: 1_000, tenantId: tenant.id, limit: 10 })).map((c) => c.id)).toEqual([b.id]);
    });

    it('never has two live leases on one business key under 12 concurrent leasers', async () => {
      const tenant = await store.tenants.create(newTenant());
      for (let i = 0; i < 40; i++) await store.commands.insert(newCommand(tenant.id, { businessKey: `k${i % 8}` }), 'api:t');
      // SKIP LOCKED may make a round lease fewer than possible (rows locked by another leaser are skipped), so
      // lease in concurrent rounds until nothing is left; across all rounds no key may be leased twice.
      const leased = [];
      for (let round = 0; round < 5; round++) {
        const results = await Promise.all(Array.from({ length: 12 }, (_, i) => store.commands.lease({ owner: `w${i}`, now, leaseMs: 60_000, tenantId: tenant.id, limit: 3 })));
        leased.push(...results.flat());
      }
      const keys = leased.map((c) => c.businessKey);
      expect(new Set(keys).size).toBe(keys.length);
      expect(leased).toHaveLength(8);
      const live = (await store.commands.list({ tenantId: tenant.id, states: ['in_flight'] })).filter((c) => c.leaseOwner !== null);
      expect(live).toHaveLength(8);
    });

    it('extends a live lease for its owner at the current version only', async () => {
      const tenant = await store.tenants.create(newTenant());
      await store.commands.insert(newCommand(tenant.id), 'api:t');
      const [leased] = await store.commands.lease({ owner: 'w1', now, leaseMs: 1_000, tenantId: tenant.id });
      const c = leased!;
      expect(await store.commands.extendLease(c.id, 'w2', c.version, now, now + 5_000)).toBeUndefined();
      expect(await store.commands.extendLease(c.id, 'w1', c.version - 1, now, now + 5_000)).toBeUndefined();
      const extended = await store.commands.extendLease(c.id, 'w1', c.version, now + 500, now + 5_000);
      expect(extended).toMatchObject({ leaseExpiresAt: now + 5_000, version: c.version + 1 });
      // An expired lease is never revived: a sibling may have been leased meanwhile.
      expect(await store.commands.extendLease(c.id, 'w1', extended!.version, now + 5_000, now + 9_000)).toBeUndefined();
    });

    it('transitions with compare-and-swap, recording the event atomically', async () => {
      const tenant = await store.tenants.create(newTenant());
      const { command } = await store.commands.insert(newCommand(tenant.id), 'api:t');
      now += 1_000;
      const next = await store.commands.transition(
        command.id,
        1,
        { state: 'needs_review', stateReason: 'budget_exhausted', ehrId: 'obs-1', ehrVersion: '2' },
        { kind: 'transition', actor: 'worker:w1', reason: 'budget_exhausted' },
      );
      expect(next).toMatchObject({ state: 'needs_review', stateReason: 'budget_exhausted', ehrId: 'obs-1', ehrVersion: '2', version: 2, updatedAt: now });
      expect(await store.commands.transition(command.id, 1, { state: 'cancelled' }, { kind: 'transition', actor: 'x', reason: null })).toBeUndefined();
      const events = await store.commands.events(command.id);
      expect(events.map((e) => [e.kind, e.fromState, e.toState, e.actor])).toEqual([
        ['submitted', null, 'queued', 'api:t'],
        ['transition', 'queued', 'needs_review', 'worker:w1'],
      ]);
      await expectCode(store.commands.transition(`missing-${uid()}`, 1, { state: 'cancelled' }), 'COMMAND_NOT_FOUND');
      await expectCode(store.commands.transition(command.id, 2, { state: 'paused' as never }), 'COMMAND_INVALID');
    });

    it('applies several steps, their events and the attempt row as one compare-and-swap', async () => {
      const tenant = await store.tenants.create(newTenant());
      const { command } = await store.commands.insert(newCommand(tenant.id), 'api:t');
      const [leased] = await store.commands.lease({ owner: 'w1', now, leaseMs: 1_000, tenantId: tenant.id });
      const attempt = {
        commandId: command.id,
        n: 1,
        worker: 'w1',
        startedAt: now,
        endedAt: now + 5,
        outcome: 'applied' as const,
        errorCode: null,
        errorCategory: null,
        ehrStatus: 201,
        verification: 'verified' as const,
        correlationId: `${command.id}.1`,
        steps: 'create:201',
        patientFailure: false,
      };
      const steps = [
        { patch: { state: 'acknowledged' as const, ehrId: 'obs-9', ehrVersion: '1' }, event: { kind: 'transition', actor: 'worker:w1', reason: 'ehr_has_it' } },
        { patch: { state: 'verified' as const, leaseOwner: null, leaseExpiresAt: null }, event: { kind: 'transition', actor: 'worker:w1', reason: null } },
      ];
      const next = await store.commands.transitionSteps(command.id, leased!.version, steps, attempt);
      expect(next).toMatchObject({ state: 'verified', ehrId: 'obs-9', ehrVersion: '1', leaseOwner: null, version: leased!.version + 1 });
      expect((await store.commands.events(command.id)).map((e) => [e.fromState, e.toState, e.reason])).toEqual([
        [null, 'queued', null],
        ['in_flight', 'acknowledged', 'ehr_has_it'],
        ['acknowledged', 'verified', null],
      ]);
      expect(await store.commands.attempts(command.id)).toEqual([attempt]);
      // A stale version changes nothing: no event, no attempt row.
      expect(await store.commands.transitionSteps(command.id, leased!.version, steps, { ...attempt, n: 2 })).toBeUndefined();
      expect(await store.commands.events(command.id)).toHaveLength(3);
      expect(await store.commands.attempts(command.id)).toHaveLength(1);
      await expectCode(store.commands.transitionSteps(`missing-${uid()}`, 1, steps), 'COMMAND_NOT_FOUND');
      await expectCode(store.commands.transitionSteps(command.id, next!.version, []), 'COMMAND_INVALID');
    });

    it('tells the leaser whether a newer sibling is verified (later source timestamp, else higher generation)', async () => {
      const tenant = await store.tenants.create(newTenant());
      const older = (await store.commands.insert(newCommand(tenant.id, { businessKey: 'ord', sourceTimestamp: 10 }), 'api:t')).command;
      const newer = (await store.commands.insert(newCommand(tenant.id, { businessKey: 'ord', sourceTimestamp: 20 }), 'api:t')).command;
      const [first] = await store.commands.lease({ owner: 'w', now, leaseMs: 1_000, tenantId: tenant.id });
      expect(first).toMatchObject({ id: older.id, newerSiblingVerified: false });
      await store.commands.transition(older.id, first!.version, { state: 'retry_wait', leaseOwner: null, leaseExpiresAt: null });
      // Make the newer one verified, then lease the older one again: it must learn that it is superseded.
      const newerRow = (await store.commands.get(newer.id))!;
      await store.commands.transition(newer.id, newerRow.version, { state: 'verified' });
      const [again] = await store.commands.lease({ owner: 'w', now, leaseMs: 1_000, tenantId: tenant.id });
      expect(again).toMatchObject({ id: older.id, newerSiblingVerified: true });
    });

    it('takes a submit lease in the insert when no other command of the key is open, and never otherwise', async () => {
      const tenant = await store.tenants.create(newTenant());
      const lease = { owner: 'w-submit', now: now + 5, leaseMs: 2_000 };
      // Alone: stored in_flight under the lease (attempt 1), with the submitted event; no lease query returns it.
      const first = await store.commands.insert(newCommand(tenant.id, { businessKey: 'hand' }), 'api:t', lease);
      expect(first.leased).toMatchObject({ state: 'in_flight', leaseOwner: 'w-submit', leaseExpiresAt: now + 2_005, attempts: 1, attemptSeq: 1, generation: 1, newerSiblingVerified: false });
      expect(first.command).toEqual(first.leased);
      expect(await store.commands.get(first.command.id)).toEqual(expect.objectContaining({ state: 'in_flight', leaseOwner: 'w-submit', version: first.command.version }));
      expect((await store.commands.events(first.command.id)).map((e) => [e.kind, e.fromState, e.toState])).toEqual([['submitted', null, 'queued']]);
      expect(await store.commands.lease({ owner: 'w2', now: now + 10, leaseMs: 1_000, tenantId: tenant.id, limit: 10 })).toEqual([]);
      // A sibling while the first is open (here: leased): stored queued, not leased; the key rule holds.
      const second = await store.commands.insert(newCommand(tenant.id, { businessKey: 'hand' }), 'api:t', lease);
      expect(second.leased).toBeUndefined();
      expect(second.command).toMatchObject({ state: 'queued', leaseOwner: null, attempts: 0, generation: 2 });
      // Only the deliberately broken engine (sensitivity testing) takes it all the same.
      const broken = await store.commands.insert(newCommand(tenant.id, { businessKey: 'hand' }), 'api:t', { ...lease, unsafeIgnoreKeyLock: true });
      expect(broken.leased).toMatchObject({ state: 'in_flight', generation: 3 });
      // Open means any non-terminal state: a rejected or needs_review sibling can still be retried by an operator.
      await store.commands.transition(first.command.id, first.command.version, { state: 'rejected', leaseOwner: null, leaseExpiresAt: null });
      const whileRejected = await store.commands.insert(newCommand(tenant.id, { businessKey: 'hand2' }), 'api:t');
      expect(whileRejected.leased).toBeUndefined();
      await store.commands.transition(whileRejected.command.id, whileRejected.command.version, { state: 'needs_review' });
      expect((await store.commands.insert(newCommand(tenant.id, { businessKey: 'hand2' }), 'api:t', lease)).leased).toBeUndefined();
      // Only terminal siblings (verified, superseded, cancelled): leased, and told when a newer one is verified.
      const other = await store.tenants.create(newTenant());
      const done = (await store.commands.insert(newCommand(other.id, { businessKey: 'k', sourceTimestamp: 50 }), 'api:t')).command;
      await store.commands.transition(done.id, done.version, { state: 'verified' });
      const late = await store.commands.insert(newCommand(other.id, { businessKey: 'k', sourceTimestamp: 40 }), 'api:t', lease);
      expect(late.leased).toMatchObject({ generation: 2, state: 'in_flight', newerSiblingVerified: true });
      // An idempotent replay is never leased (the original stays as it is).
      const keyed = newCommand(other.id, { idempotencyKey: 'idem-lease' });
      const original = await store.commands.insert(keyed, 'api:t');
      const replay = await store.commands.insert({ ...keyed, id: `cmd-${uid()}` }, 'api:t', lease);
      expect(replay).toEqual({ command: original.command, created: false });
      // An invalid lease is refused before anything is written.
      await expectCode(store.commands.insert(newCommand(other.id), 'api:t', { owner: '', now, leaseMs: 1_000 }), 'COMMAND_INVALID');
    });

    it('inserts with a tenant check only while the tenant is active at that version, and writes nothing otherwise', async () => {
      const tenant = await store.tenants.create(newTenant());
      const at = { version: tenant.version };
      const checked = newCommand(tenant.id, { businessKey: 'checked', idempotencyKey: 'idem-checked' });
      const first = await store.commands.insert(checked, 'api:t', undefined, at);
      expect(first).toMatchObject({ created: true, command: { state: 'queued', generation: 1 } });
      // With a submit lease, as the service submits.
      const leased = await store.commands.insert(newCommand(tenant.id, { businessKey: 'checked-2' }), 'api:t', { owner: 'w', now, leaseMs: 1_000 }, at);
      expect(leased).toMatchObject({ created: true, leased: { state: 'in_flight', leaseOwner: 'w' } });

      // The tenant changes (here: re-scoped; version 2): an insert checked against version 1 writes nothing, not even
      // an idempotent replay; checked against the new version it goes through.
      const changed = await store.tenants.update(tenant.id, { scopes: 'system/Observation.rs' });
      expect(changed?.version).toBe(tenant.version + 1);
      const stale = newCommand(tenant.id, { businessKey: 'checked' });
      expect(await store.commands.insert(stale, 'api:t', undefined, at)).toEqual({ tenantChanged: true });
      expect(await store.commands.get(stale.id)).toBeUndefined();
      expect(await store.commands.events(stale.id)).toEqual([]);
      const replay = newCommand(tenant.id, { businessKey: 'checked', idempotencyKey: 'idem-checked' });
      expect(await store.commands.insert({ ...replay, payloadHash: checked.payloadHash }, 'api:t', undefined, at)).toEqual({ tenantChanged: true });
      expect(await store.commands.insert(stale, 'api:t', undefined, { version: changed!.version })).toMatchObject({ created: true, command: { generation: 2 } });

      // Paused at the version the submitter holds: refused too; an unknown tenant likewise (no row to match).
      const paused = await store.tenants.update(tenant.id, { state: 'auth_paused', stateReason: 'refresh token revoked' });
      expect(await store.commands.insert(newCommand(tenant.id), 'api:t', undefined, { version: paused!.version })).toEqual({ tenantChanged: true });
      expect(await store.commands.insert(newCommand(`missing-${uid()}`), 'api:t', undefined, { version: 1 })).toEqual({ tenantChanged: true });
      // Without a check, the insert does not look at the tenant's state (the caller checked it).
      expect(await store.commands.insert(newCommand(tenant.id), 'api:t')).toMatchObject({ created: true });
      await expectCode(store.commands.insert(newCommand(tenant.id), 'api:t', undefined, { version: -1 }), 'CONFIG_INVALID');
    });

    it('gives one submit lease per key when submissions of one key race', async () => {
      const tenant = await store.tenants.create(newTenant());
      const results = await Promise.all(
        Array.from({ length: 8 }, (_, i) => store.commands.insert(newCommand(tenant.id, { businessKey: 'race' }), 'api:t', { owner: `w${i}`, now, leaseMs: 60_000 })),
      );
      expect(results.filter((r) => r.leased !== undefined)).toHaveLength(1);
      expect(results.map((r) => r.command.generation).sort((a, b) => a - b)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
      // And the lease query respects it: nothing else of the key can be leased while it is live.
      expect(await store.commands.lease({ owner: 'w', now, leaseMs: 1_000, tenantId: tenant.id, limit: 10 })).toEqual([]);
    });

    it('leases two commands of one key at once only when the key rule is deliberately off (sensitivity testing)', async () => {
      const tenant = await store.tenants.create(newTenant());
      for (let i = 0; i < 2; i++) await store.commands.insert(newCommand(tenant.id, { businessKey: 'twins' }), 'api:t');
      expect(await store.commands.lease({ owner: 'w', now, leaseMs: 1_000, tenantId: tenant.id, limit: 5 })).toHaveLength(1);
      const broken = await store.commands.lease({ owner: 'w2', now, leaseMs: 1_000, tenantId: tenant.id, limit: 5, unsafeIgnoreKeyLock: true });
      expect(broken).toHaveLength(1);
      expect((await store.commands.list({ tenantId: tenant.id, states: ['in_flight'] })).filter((c) => c.leaseOwner !== null)).toHaveLength(2);
    });

    it('lets exactly one of 10 concurrent transitions from one version win', async () => {
      const tenant = await store.tenants.create(newTenant());
      const { command } = await store.commands.insert(newCommand(tenant.id), 'api:t');
      const results = await Promise.all(
        Array.from({ length: 10 }, (_, i) => store.commands.transition(command.id, 1, { stateReason: `r${i}` }, { kind: 'transition', actor: `w${i}`, reason: null })),
      );
      expect(results.filter((r) => r !== undefined)).toHaveLength(1);
      expect(await store.commands.events(command.id)).toHaveLength(2);
    });

    it('appends attempts once per number and lists the timeline in order', async () => {
      const tenant = await store.tenants.create(newTenant());
      const { command } = await store.commands.insert(newCommand(tenant.id), 'api:t');
      const attempt = {
        commandId: command.id,
        n: 2,
        worker: 'w1',
        startedAt: now,
        endedAt: now + 50,
        outcome: 'unknown' as const,
        errorCode: 'EHR_OUTCOME_UNKNOWN',
        errorCategory: 'ambiguous',
        ehrStatus: null,
        verification: 'verified' as const,
        correlationId: 'corr-1',
        steps: 'create:unknown search:200 read:200',
        patientFailure: false,
      };
      expect(await store.commands.appendAttempt(attempt)).toBe(true);
      expect(await store.commands.appendAttempt({ ...attempt, outcome: 'applied' })).toBe(false);
      expect(await store.commands.appendAttempt({ ...attempt, n: 1, outcome: 'abandoned', endedAt: null, errorCode: null, errorCategory: null, verification: null, steps: null })).toBe(true);
      const timeline = await store.commands.attempts(command.id);
      expect(timeline.map((a) => [a.n, a.outcome])).toEqual([
        [1, 'abandoned'],
        [2, 'unknown'],
      ]);
      expect(timeline[1]).toEqual(attempt);
      await expectCode(store.commands.appendAttempt({ ...attempt, commandId: `missing-${uid()}` }), 'COMMAND_NOT_FOUND');
    });

    it('lists by tenant, state and business key, oldest first', async () => {
      const tenant = await store.tenants.create(newTenant());
      const a = (await store.commands.insert(newCommand(tenant.id, { businessKey: 'b1' }), 'api:t')).command;
      now += 1;
      const b = (await store.commands.insert(newCommand(tenant.id, { businessKey: 'b2' }), 'api:t')).command;
      await store.commands.transition(b.id, 1, { state: 'needs_review' });
      expect((await store.commands.list({ tenantId: tenant.id })).map((c) => c.id)).toEqual([a.id, b.id]);
      expect((await store.commands.list({ tenantId: tenant.id, states: ['needs_review'] })).map((c) => c.id)).toEqual([b.id]);
      expect((await store.commands.list({ tenantId: tenant.id, businessKey: 'b1' })).map((c) => c.id)).toEqual([a.id]);
      expect(await store.commands.list({ tenantId: tenant.id, limit: 1 })).toHaveLength(1);
      await expectCode(store.commands.list({ limit: 0 }), 'COMMAND_INVALID');
    });

    it('keeps the patient reference, and counts a patient’s failures in the window since its latest operator retry', async () => {
      const tenant = await store.tenants.create(newTenant());
      const other = await store.tenants.create(newTenant());
      const start = now;
      const patient = `Patient/p-${uid()}`;
      const cmd = async (tenantId: string, patientRef: string | null) => {
        const { command } = await store.commands.insert(newCommand(tenantId, { patientRef }), 'api:t');
        return command;
      };
      const p1 = await cmd(tenant.id, patient);
      const p2 = await cmd(tenant.id, patient);
      const elsewhere = await cmd(other.id, patient); // same reference, another tenant: another patient
      const otherPatient = await cmd(tenant.id, `Patient/q-${uid()}`);
      const nobody = await cmd(tenant.id, null);
      expect(p1.patientRef).toBe(patient);
      expect(await store.commands.get(p1.id)).toMatchObject({ patientRef: patient });
      const listed = new Map((await store.commands.list({ tenantId: tenant.id })).map((c) => [c.id, c.patientRef]));
      expect(listed).toEqual(new Map([[p1.id, patient], [p2.id, patient], [otherPatient.id, otherPatient.patientRef], [nobody.id, null]]));
      expect(nobody.patientRef).toBeNull();
      expect((await store.commands.list({ tenantId: tenant.id, patientRef: patient })).map((c) => c.id).sort()).toEqual([p1.id, p2.id].sort());
      expect((await store.commands.list({ patientRef: patient })).map((c) => c.id).sort()).toEqual([p1.id, p2.id, elsewhere.id].sort());
      const [leased] = await store.commands.lease({ owner: 'w', now, leaseMs: 1_000, tenantId: other.id });
      expect(leased).toMatchObject({ id: elsewhere.id, patientRef: patient });

      const attempt = (commandId: string, n: number, startedAt: number, patientFailure: boolean) => ({
        commandId, n, worker: 'w', startedAt, endedAt: startedAt + 5, outcome: 'rejected' as const, errorCode: 'EHR_VALIDATION',
        errorCategory: 'validation', ehrStatus: 422, verification: null, correlationId: null, steps: 'create:422', patientFailure,
      });
      await store.commands.appendAttempt(attempt(p1.id, 1, start + 10, true));
      await store.commands.appendAttempt(attempt(p1.id, 2, start + 20, true));
      await store.commands.appendAttempt(attempt(p1.id, 3, start + 30, false)); // not a patient failure
      await store.commands.appendAttempt(attempt(p2.id, 1, start + 40, true));
      await store.commands.appendAttempt(attempt(elsewhere.id, 1, start + 50, true));
      await store.commands.appendAttempt(attempt(otherPatient.id, 1, start + 60, true));
      await store.commands.appendAttempt(attempt(nobody.id, 1, start + 70, true));
      expect((await store.commands.attempts(p1.id)).map((a) => a.patientFailure)).toEqual([true, true, false]);

      // Both commands of the patient, in this tenant only; the window is inclusive of `since`.
      expect(await store.commands.patientFailures(tenant.id, patient, start)).toBe(3);
      expect(await store.commands.patientFailures(tenant.id, patient, start + 20)).toBe(2);
      expect(await store.commands.patientFailures(tenant.id, patient, start + 41)).toBe(0);
      expect(await store.commands.patientFailures(other.id, patient, start)).toBe(1);
      expect(await store.commands.patientFailures(tenant.id, `Patient/none-${uid()}`, start)).toBe(0);

      // An operator retry of any command of the patient resets its count: only later failures count.
      now = start + 100;
      const p2Row = (await store.commands.get(p2.id))!;
      await store.commands.transition(p2.id, p2Row.version, { state: 'needs_review' });
      await store.commands.transition(p2.id, p2Row.version + 1, { state: 'queued', stateReason: 'operator_retry' }, { kind: 'operator:retry', actor: 'operator:o', reason: 'checked' });
      expect(await store.commands.patientFailures(tenant.id, patient, start)).toBe(0);
      await store.commands.appendAttempt(attempt(p1.id, 4, start + 150, true));
      expect(await store.commands.patientFailures(tenant.id, patient, start)).toBe(1);
      // A retry of another patient's command, or a retry before the window, changes nothing.
      expect(await store.commands.patientFailures(other.id, patient, start)).toBe(1);
      expect(await store.commands.patientFailures(tenant.id, otherPatient.patientRef!, start)).toBe(1);
      now = start + 200;

      // Invalid arguments: COMMAND_INVALID naming the field, never echoing the reference.
      const error = await store.commands.patientFailures(tenant.id, 'x'.repeat(300), start).catch((e: unknown) => e);
      expect(error).toMatchObject({ code: 'COMMAND_INVALID' });
      expect(String((error as Error).message)).not.toContain('xxxxxxxx');
      await expectCode(store.commands.patientFailures(tenant.id, '', start), 'COMMAND_INVALID');
      await expectCode(store.commands.insert(newCommand(tenant.id, { patientRef: 'P'.repeat(300) }), 'api:t'), 'COMMAND_INVALID');
    });

    it('round-trips the resource JSON exactly (nested objects, arrays, unicode, decimals)', async () => {
      const tenant = await store.tenants.create(newTenant());
      const resource = { resourceType: 'Observation', note: [{ text: 'Zoë ✓ "quoted" \\ back' }], valueQuantity: { value: 0.1 }, component: [{ a: [1, 2, { b: null }] }] };
      const { command } = await store.commands.insert(newCommand(tenant.id, { resource }), 'api:t');
      expect((await store.commands.get(command.id))?.resource).toEqual(resource);
    });
  });

  describe('command stats', () => {
    it('counts commands per tenant and state with the oldest, verified per minute, and attempts by category', async () => {
      const tenant = await store.tenants.create(newTenant());
      const first = now;
      const a = (await store.commands.insert(newCommand(tenant.id), 'api:t')).command;
      now += 1_000;
      await store.commands.insert(newCommand(tenant.id), 'api:t');
      const leased = await store.commands.lease({ owner: 'w1', now, leaseMs: 10_000, tenantId: tenant.id, limit: 1 });
      expect(leased.map((c) => c.id)).toEqual([a.id]);
      await store.commands.appendAttempt({
        commandId: a.id, n: 1, worker: 'w1', startedAt: now, endedAt: now + 5, outcome: 'applied', errorCode: null, errorCategory: null,
        ehrStatus: 201, verification: 'verified', correlationId: `${a.id}.1`, steps: 'create:201', patientFailure: false,
      });
      await store.commands.transition(a.id, leased[0]!.version, { state: 'verified', leaseOwner: null, leaseExpiresAt: null });

      const queue = (await store.commandStats.queue()).filter((q) => q.tenantId === tenant.id);
      expect(queue).toEqual([
        { tenantId: tenant.id, state: 'queued', count: 1, oldestCreatedAt: first + 1_000 },
        { tenantId: tenant.id, state: 'verified', count: 1, oldestCreatedAt: first },
      ]);
      const perMinute = (await store.commandStats.verifiedPerMinute(now - 60_000)).filter((v) => v.tenantId === tenant.id);
      expect(perMinute).toEqual([{ tenantId: tenant.id, minuteStart: Math.floor(now / 60_000) * 60_000, count: 1 }]);
      expect((await store.commandStats.verifiedPerMinute(now + 60_000)).filter((v) => v.tenantId === tenant.id)).toEqual([]);
      const categories = (await store.commandStats.attemptCategories(now - 1)).filter((c) => c.tenantId === tenant.id);
      expect(categories).toEqual([{ tenantId: tenant.id, outcome: 'applied', errorCategory: null, count: 1 }]);
    });
  });

  describe('api keys', () => {
    const hash = () => randomBytes(32).toString('hex');

    it('creates a key, finds it by hash, lists it, records use, revokes it once', async () => {
      const keyHash = hash();
      const created = await store.apiKeys.create({ id: `key-${uid()}`, name: 'ops', prefix: 'tk_ab12', keyHash, role: 'operator', tenants: ['t1', 't2'], createdBy: 'bootstrap' });
      expect(created).toMatchObject({ role: 'operator', tenants: ['t1', 't2'], createdAt: now, revokedAt: null, lastUsedAt: null });
      expect(await store.apiKeys.findByHash(keyHash)).toEqual(created);
      expect(await store.apiKeys.findByHash(hash())).toBeUndefined();
      expect((await store.apiKeys.list()).map((k) => k.id)).toContain(created.id);
      await store.apiKeys.touch(created.id, now + 5);
      expect((await store.apiKeys.get(created.id))?.lastUsedAt).toBe(now + 5);
      expect(await store.apiKeys.revoke(created.id)).toBe(true);
      expect(await store.apiKeys.revoke(created.id)).toBe(false);
      expect((await store.apiKeys.get(created.id))?.revokedAt).toBe(now);
    });

    it('keeps a null tenant list (every tenant) distinct from an empty one', async () => {
      const all = await store.apiKeys.create({ id: `key-${uid()}`, name: 'admin', prefix: 'tk_x', keyHash: hash(), role: 'admin', tenants: null, createdBy: 'bootstrap' });
      const none = await store.apiKeys.create({ id: `key-${uid()}`, name: 'nobody', prefix: 'tk_y', keyHash: hash(), role: 'viewer', tenants: [], createdBy: 'bootstrap' });
      expect((await store.apiKeys.get(all.id))?.tenants).toBeNull();
      expect((await store.apiKeys.get(none.id))?.tenants).toEqual([]);
    });

    it('refuses an unknown role, a malformed hash and a reused hash', async () => {
      const base = { name: 'x', prefix: 'tk', tenants: null, createdBy: 'b' } as const;
      await expectCode(store.apiKeys.create({ ...base, id: `key-${uid()}`, keyHash: hash(), role: 'root' as never }), 'CONFIG_INVALID');
      await expectCode(store.apiKeys.create({ ...base, id: `key-${uid()}`, keyHash: 'not-a-hash', role: 'viewer' }), 'CONFIG_INVALID');
      const keyHash = hash();
      await store.apiKeys.create({ ...base, id: `key-${uid()}`, keyHash, role: 'viewer' });
      await expect(store.apiKeys.create({ ...base, id: `key-${uid()}`, keyHash, role: 'viewer' })).rejects.toMatchObject({ name: 'TetherError' });
      expect((await store.apiKeys.list()).filter((k) => k.keyHash === keyHash)).toHaveLength(1);
    });
  });

  describe('audit', () => {
    const entry = (overrides: Partial<AuditEntry> = {}): AuditEntry => ({
      at: now,
      actor: 'operator:key-1',
      action: 'tenant.resumed',
      tenantId: 'acme',
      subjectType: 'tenant',
      subjectId: 'acme',
      outcome: 'success',
      details: { reason: 'operator_resumed', n: 1, nested: { ok: true, list: [1, 'two', null] } },
      ...overrides,
    });
    const toEntry = (e: AuditCommandEvent): AuditEntry => ({
      at: e.at,
      actor: e.actor,
      action: `command.${e.kind}`,
      tenantId: e.tenantId,
      subjectType: 'command',
      subjectId: e.commandId,
      outcome: 'success',
      details: { eventSeq: e.seq, from: e.fromState, to: e.toState, resourceType: e.resourceType, vendor: e.vendor, ehrId: e.ehrId },
    });
    /**
     * Copies until the tailer is caught up, and at least until `until` holds for what was copied; returns it all.
     * (On PostgreSQL an event is copied only once every older transaction on the server has ended, so a write
     * transaction of a test running in parallel can hold our events back for a moment.)
     */
    const drain = async (until: (copied: AuditRecord[]) => boolean | Promise<boolean> = () => true): Promise<AuditRecord[]> => {
      const all: AuditRecord[] = [];
      const deadline = Date.now() + 10_000;
      for (;;) {
        const copied = await store.audit.copyCommandEvents(toEntry, 50);
        all.push(...copied);
        if (copied.length === 0) {
          if ((await until(all)) || Date.now() > deadline) return all;
          await sleep(20);
        }
      }
    };
    const everything = async (): Promise<AuditRecord[]> => {
      const all: AuditRecord[] = [];
      for (;;) {
        const page = await store.audit.list({ afterSeq: all[all.length - 1]?.seq ?? 0, limit: 1000 });
        if (page.length === 0) return all;
        all.push(...page);
      }
    };

    it('appends entries as records chained onto the head, and moves the head', async () => {
      const before = await store.audit.head();
      expect(before).toBeDefined();
      const records = await store.audit.append([entry(), entry({ action: 'token.refreshed', subjectType: 'token', subjectId: 'system' })]);
      expect(records.map((r) => r.seq)).toEqual([before!.seq + 1, before!.seq + 2]);
      expect(records[0]?.prevHash).toBe(before!.hash);
      expect(await store.audit.head()).toEqual({ seq: records[1]!.seq, hash: records[1]!.hash });
      // What comes back from the database hashes to what was written (details round-trip exactly).
      expect(await store.audit.list({ afterSeq: before!.seq })).toEqual(records);
      expect(verifyAuditChain(await everything(), { head: await store.audit.head() })).toMatchObject({ ok: true });
      expect(await store.audit.append([])).toEqual([]);
    });

    it('refuses a malformed entry and appends nothing of the batch', async () => {
      const before = await store.audit.head();
      await expectCode(store.audit.append([entry(), entry({ actor: '' })]), 'CONFIG_INVALID');
      await expectCode(store.audit.append([entry({ details: { at: Number.NaN } })]), 'CONFIG_INVALID');
      await expectCode(store.audit.append([entry({ action: 'Has Spaces' })]), 'CONFIG_INVALID');
      await expectCode(store.audit.append([entry({ details: { big: 'x'.repeat(20_000) } })]), 'CONFIG_INVALID');
      expect(await store.audit.head()).toEqual(before);
    });

    it('copies every command event once, in order, with the command facts', async () => {
      await drain();
      const tenant = await store.tenants.create(newTenant({ vendor: 'oracle' }));
      const { command } = await store.commands.insert(newCommand(tenant.id), 'api:key-7');
      const moved = await store.commands.transition(command.id, 1, { state: 'in_flight' }, { kind: 'transition', actor: 'worker:w1', reason: null });
      await store.commands.transition(command.id, moved!.version, { state: 'acknowledged', ehrId: 'obs-1', ehrVersion: '1' }, { kind: 'transition', actor: 'worker:w1', reason: 'ehr_has_it' });
      const copied = await drain((c) => c.length >= 3);
      expect(copied.map((r) => [r.actor, r.action, r.subjectId, r.details['from'], r.details['to']])).toEqual([
        ['api:key-7', 'command.submitted', command.id, null, 'queued'],
        ['worker:w1', 'command.transition', command.id, 'queued', 'in_flight'],
        ['worker:w1', 'command.transition', command.id, 'in_flight', 'acknowledged'],
      ]);
      expect(copied[2]).toMatchObject({ tenantId: tenant.id, details: { resourceType: 'Observation', vendor: 'oracle', ehrId: 'obs-1' } });
      const seqs = (await store.commands.events(command.id)).map((e) => e.seq);
      expect(copied.map((r) => r.details['eventSeq'])).toEqual(seqs);
      // Caught up: nothing more, however often it is asked.
      expect(await store.audit.copyCommandEvents(toEntry)).toEqual([]);
      expect(verifyAuditChain(await everything(), { head: await store.audit.head() }).ok).toBe(true);
    });

    it('never forks the chain under concurrent appends and copies', async () => {
      await drain();
      const tenant = await store.tenants.create(newTenant());
      const inserts = Array.from({ length: 10 }, () => store.commands.insert(newCommand(tenant.id), 'api:t'));
      const appends = Array.from({ length: 20 }, (_, i) => store.audit.append([entry({ details: { i } }), entry({ details: { i, second: true } })]));
      const copies = Array.from({ length: 5 }, () => store.audit.copyCommandEvents(toEntry, 3));
      await Promise.all([...inserts, ...appends, ...copies]);
      const submittedHere = (records: AuditRecord[]) => records.filter((r) => r.action === 'command.submitted' && r.tenantId === tenant.id).length;
      const copied = await drain(async () => submittedHere(await everything()) >= 10);
      const all = await everything();
      expect(verifyAuditChain(all, { head: await store.audit.head() })).toMatchObject({ ok: true, problems: [] });
      expect(all.map((r) => r.seq)).toEqual(all.map((_, i) => i + 1));
      // Each of the 10 submissions is in the chain exactly once.
      const submitted = all.filter((r) => r.action === 'command.submitted' && r.tenantId === tenant.id);
      expect(new Set(submitted.map((r) => r.subjectId)).size).toBe(10);
      expect(submitted).toHaveLength(10);
      expect(copied.length).toBeLessThanOrEqual(10);
    });

    it('lists by tenant, actor, action (exact or family), subject and time, in seq order', async () => {
      const tenantId = `t-${uid()}`;
      const appended = await store.audit.append([
        entry({ tenantId, action: 'token.refreshed', actor: 'system', at: now + 1 }),
        entry({ tenantId, action: 'token.refresh_failed', actor: 'system', at: now + 2 }),
        entry({ tenantId, action: 'tenant.paused', actor: 'system', subjectId: 'x', at: now + 3 }),
        entry({ tenantId: `t-${uid()}`, action: 'token.refreshed', actor: 'system', at: now + 1 }),
      ]);
      const actions = async (filter: AuditFilter) => (await store.audit.list({ tenantId, ...filter })).map((r) => r.action);
      expect(await actions({})).toEqual(['token.refreshed', 'token.refresh_failed', 'tenant.paused']);
      expect(await actions({ action: 'token.' })).toEqual(['token.refreshed', 'token.refresh_failed']);
      expect(await actions({ action: 'token.refreshed' })).toEqual(['token.refreshed']);
      expect(await actions({ action: 'token_' })).toEqual([]);
      expect(await actions({ subjectType: 'tenant', subjectId: 'x' })).toEqual(['tenant.paused']);
      expect(await actions({ from: now + 2, to: now + 3 })).toEqual(['token.refresh_failed']);
      expect(await actions({ actor: 'operator:key-1' })).toEqual([]);
      expect(await actions({ afterSeq: appended[1]!.seq })).toEqual(['tenant.paused']);
      expect(await actions({ limit: 1 })).toEqual(['token.refreshed']);
      await expectCode(store.audit.list({ limit: 0 }), 'CONFIG_INVALID');
      await expectCode(store.audit.list({ limit: 1001 }), 'CONFIG_INVALID');
    });
  });

  describe('migrations', () => {
    it('is idempotent, also when called concurrently', async () => {
      await store.migrate();
      await Promise.all([store.migrate(), store.migrate()]);
      expect((await store.tenants.create(newTenant())).version).toBe(1);
    });

    it('refuses to start when an applied migration was edited, and leaves the data alone', async () => {
      const openScratch = await backend.database();
      const first = openScratch();
      await first.migrate();
      const tenant = await first.tenants.create(newTenant());
      await first.close();

      const [init, ...rest] = backend.migrations;
      if (!init) throw new Error('no migrations');
      const edited = openScratch({ migrations: [{ ...init, sql: `${init.sql}\n-- a harmless-looking edit` }, ...rest] });
      const error = await edited.migrate().catch((e: unknown) => e);
      await edited.close();
      expect(error).toMatchObject({ code: 'STORE_MIGRATION_FAILED', details: { version: 1 } });
      expect(String((error as Error).message)).toContain('checksum');

      const again = openScratch();
      await again.migrate();
      expect(await again.tenants.get(tenant.id)).toEqual(tenant);
      await again.close();
    });

    it('refuses a database migrated by a newer build', async () => {
      const openScratch = await backend.database();
      const newer = openScratch({ migrations: [...backend.migrations, { version: backend.migrations.length + 1, name: 'from_the_future', sql: 'CREATE TABLE future_things (id integer PRIMARY KEY)' }] });
      await newer.migrate();
      await newer.close();
      const older = openScratch();
      await expectCode(older.migrate(), 'STORE_MIGRATION_FAILED');
      await older.close();
    });

    it('applies a failing migration not at all, and records nothing for it', async () => {
      const openScratch = await backend.database();
      const version = backend.migrations.length + 1;
      const broken = openScratch({
        migrations: [...backend.migrations, { version, name: 'broken', sql: 'CREATE TABLE half_done (id integer); CREATE TABLE nope (' }],
      });
      await expectCode(broken.migrate(), 'STORE_MIGRATION_FAILED');
      await broken.close();
      // half_done was rolled back with the failed statement: creating it again succeeds.
      const fixed = openScratch({ migrations: [...backend.migrations, { version, name: 'fixed', sql: 'CREATE TABLE half_done (id integer)' }] });
      await fixed.migrate();
      await fixed.close();
    });
  });

  describe('lifecycle', () => {
    it('answers STORE_UNAVAILABLE after close, and close is idempotent', async () => {
      const scratch = open();
      await scratch.close();
      await scratch.close();
      await expectCode(scratch.tenants.list(), 'STORE_UNAVAILABLE');
      await expectCode(scratch.tokens.withLock('t', 'system', async () => 1), 'STORE_UNAVAILABLE');
    });
  });
});
