/**
 * The audit log service against a real SQLite file and the real PostgreSQL: what is recorded (and what never is),
 * the command_events tailer, verification of a tampered chain, and the FHIR AuditEvent export.
 */
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import Database from 'better-sqlite3';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { TypedEmitter, verifyAuditChain, type AuditRecord } from '@tether/core';
import type { AuthEventMap } from '../auth/index.js';
import { newTenant, uid } from '../store/__fixtures__/records.js';
import { PgTestDatabases, pgQuery, SqliteTestFiles } from '../store/__fixtures__/test-databases.js';
import { PostgresStore, SqliteStore, type NewCommand, type Store } from '../store/index.js';
import { AuditLog, DEFAULT_MAPPING_VERSION, toAuditEvent } from './index.js';

/** Planted PHI: must never reach a record or an export. */
const CANARY_NOTE = 'Called Jane CANARYDOE (MRN 4417-CANARY) about it';
const CANARY_PATIENT = 'patient:PAT-CANARY-9912';
const CANARY_RE = /CANARY/i;

interface Backend {
  readonly kind: 'sqlite' | 'postgres';
  /** A new empty database: a function opening (migrated) stores on it, and raw SQL against it (store closed). */
  database(): Promise<{ open: () => Promise<Store>; raw: (sql: string) => Promise<void>; url: string }>;
  cleanup(): Promise<void>;
}

const sqliteFiles = new SqliteTestFiles();
const pgDatabases = new PgTestDatabases();

const backends: Backend[] = [
  {
    kind: 'sqlite',
    async database() {
      const path = sqliteFiles.path();
      return {
        url: path,
        open: async () => {
          const store = new SqliteStore({ kind: 'sqlite', path });
          await store.migrate();
          return store;
        },
        raw: async (sql) => {
          const db = new Database(path);
          db.exec(sql);
          db.close();
        },
      };
    },
    cleanup: async () => sqliteFiles.remove(),
  },
  {
    kind: 'postgres',
    async database() {
      const url = await pgDatabases.create();
      return {
        url,
        open: async () => {
          const store = new PostgresStore({ kind: 'postgres', connectionString: url });
          await store.migrate();
          return store;
        },
        raw: async (sql) => {
          await pgQuery(url, sql);
        },
      };
    },
    cleanup: () => pgDatabases.dropAll(),
  },
];

afterAll(async () => {
  for (const b of backends) await b.cleanup();
});


const newCommand = (tenantId: string, overrides: Partial<NewCommand> = {}): NewCommand => ({
  id: `cmd-${uid()}${uid()}`,
  tenantId,
  context: CANARY_PATIENT,
  action: 'create',
  resourceType: 'Observation',
  businessKey: `CANARY-bk-${uid()}`,
  idempotencyKey: null,
  payloadHash: randomBytes(32).toString('hex'),
  resource: { resourceType: 'Observation', status: 'final', subject: { display: 'Jane CANARYDOE' } },
  priority: 'interactive',
  ehrVersion: null,
  sourceTimestamp: null,
  requestedBy: 'api:key-7',
  deadlineAt: null,
  ...overrides,
});

/** Submission → in_flight → acknowledged → verified, as a worker does it; returns the command id. */
async function deliver(store: Store, tenantId: string): Promise<string> {
  const { command } = await store.commands.insert(newCommand(tenantId), 'api:key-7');
  let c = await store.commands.transition(command.id, command.version, { state: 'in_flight' }, { kind: 'transition', actor: 'worker:w1', reason: null });
  c = await store.commands.transition(command.id, c!.version, { state: 'acknowledged', ehrId: 'obs-1', ehrVersion: '1' }, { kind: 'transition', actor: 'worker:w1', reason: 'ehr_has_it' });
  await store.commands.transition(command.id, c!.version, { state: 'verified', ehrVersion: '2' }, { kind: 'transition', actor: 'worker:w1', reason: null });
  return command.id;
}

/** Copies until the records `until` wants are there (PostgreSQL holds events back while older transactions run). */
async function copyUntil(audit: AuditLog, until: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    await audit.copyCommandEvents();
    if ((await until()) || Date.now() > deadline) return;
    await sleep(20);
  }
}

describe.each(backends)('audit log ($kind)', (backend) => {
  it('copies submission, transitions and operator actions, with their facts and without PHI', async () => {
    const { open } = await backend.database();
    const store = await open();
    const audit = new AuditLog({ store, clock: () => 1_700_000_000_000 });
    const tenant = await store.tenants.create(newTenant());
    const id = await deliver(store, tenant.id);
    // The exception queue writes operator actions as command events, with the operator's note as the reason.
    const { command: other } = await store.commands.insert(newCommand(tenant.id), 'api:key-7');
    await store.commands.transition(other.id, other.version, { state: 'cancelled' }, { kind: 'operator:cancel', actor: 'operator:key-2', reason: CANARY_NOTE });

    await copyUntil(audit, async () => (await audit.query({ tenantId: tenant.id })).length >= 6);
    const records = await audit.query({ tenantId: tenant.id });
    expect(records.map((r) => [r.actor, r.action, r.subjectId, r.details['to'], r.outcome])).toEqual([
      ['api:key-7', 'command.submitted', id, 'queued', 'success'],
      ['worker:w1', 'command.transition', id, 'in_flight', 'success'],
      ['worker:w1', 'command.transition', id, 'acknowledged', 'success'],
      ['worker:w1', 'command.transition', id, 'verified', 'success'],
      ['api:key-7', 'command.submitted', other.id, 'queued', 'success'],
      ['operator:key-2', 'command.operator.cancel', other.id, 'cancelled', 'success'],
    ]);
    expect(records[2]?.details).toMatchObject({ reason: 'ehr_has_it', ehr: { id: 'obs-1', version: '2' }, context: 'patient', vendor: 'epic' });
    expect(records[0]?.details).toMatchObject({ resourceType: 'Observation', commandAction: 'create', requestedBy: 'api:key-7', mappingVersion: DEFAULT_MAPPING_VERSION });
    expect(records[5]?.details).toMatchObject({ note: true });
    expect(records[5]?.details).not.toHaveProperty('reason');

    const everything = JSON.stringify([records, records.map(toAuditEvent)]);
    expect(everything).not.toMatch(CANARY_RE);
    expect((await audit.verify()).ok).toBe(true);
    // Caught up: a second pass copies nothing.
    expect(await audit.copyCommandEvents()).toBe(0);
    await store.close();
  });

  it('records token events from the auth broker, in order, with the context kind only', async () => {
    const { open } = await backend.database();
    const store = await open();
    const audit = new AuditLog({ store, clock: () => 1_700_000_000_000 });
    const events = new TypedEmitter<AuthEventMap>();
    const detach = audit.attachBroker({ events });
    events.emit('token:refreshed', { tenantId: 't1', context: 'system', reason: 'proactive', expiresInSeconds: 300, rotated: false });
    events.emit('token:refreshed', { tenantId: 't1', context: CANARY_PATIENT, reason: 'initial', expiresInSeconds: 300, rotated: true });
    events.emit('token:refresh-failed', { tenantId: 't1', context: 'provider:DR-CANARY', code: 'AUTH_GRANT_INVALID', retryInMs: null });
    events.emit('tenant:paused', { tenantId: 't1', reason: 'token endpoint refused the client credentials (invalid_client)' });
    events.emit('tenant:resumed', { tenantId: 't1' });
    await audit.flush();
    detach();
    events.emit('tenant:resumed', { tenantId: 't1' });
    await audit.flush();

    const records = await audit.query({ tenantId: 't1' });
    expect(records.map((r) => [r.actor, r.action, r.subjectType, r.subjectId, r.outcome])).toEqual([
      ['system', 'token.refreshed', 'token', 'system', 'success'],
      ['system', 'token.refreshed', 'token', 'patient', 'success'],
      ['system', 'token.refresh_failed', 'token', 'provider', 'failure'],
      ['system', 'tenant.paused', 'tenant', 't1', 'success'],
      ['system', 'tenant.resumed', 'tenant', 't1', 'success'],
    ]);
    expect(records[2]?.details).toEqual({ context: 'provider', code: 'AUTH_GRANT_INVALID', retryInMs: null });
    expect(records[3]?.details).toEqual({ cause: 'token_endpoint_refused', oauthError: 'invalid_client' });
    expect(JSON.stringify(records)).not.toMatch(CANARY_RE);
    expect(toAuditEvent(records[0] as AuditRecord).type.code).toBe('110114');
    await store.close();
  });

  it('records operator actions with record(), and refuses an unknown actor form or PHI-shaped fields', async () => {
    const { open } = await backend.database();
    const store = await open();
    const audit = new AuditLog({ store, clock: () => 1_700_000_000_000 });
    const r = await audit.record({ actor: 'operator:key-2', action: 'api_key.revoked', tenantId: null, subjectType: 'api_key', subjectId: 'key-9', outcome: 'success' });
    expect(r).toMatchObject({ seq: 1, at: 1_700_000_000_000, details: {} });
    await expect(audit.record({ actor: 'Jane Doe', action: 'x.y', tenantId: null, subjectType: null, subjectId: null, outcome: 'success' })).rejects.toMatchObject({ code: 'CONFIG_INVALID' });
    await expect(audit.record({ actor: 'system', action: 'x.y', tenantId: null, subjectType: null, subjectId: null, outcome: 'success', details: { when: new Date() as never } })).rejects.toMatchObject({
      code: 'CONFIG_INVALID',
    });
    expect((await store.audit.head())?.seq).toBe(1);
    await store.close();
  });

  it('neither skips nor doubles an event when a copy fails half-way', async () => {
    const { open } = await backend.database();
    const store = await open();
    const audit = new AuditLog({ store, batchSize: 2 });
    const tenant = await store.tenants.create(newTenant());
    for (let i = 0; i < 3; i++) await deliver(store, tenant.id); // 12 events
    let calls = 0;
    await expect(
      store.audit.copyCommandEvents(() => {
        if (++calls === 2) throw new Error('crash in the middle of a batch');
        return { at: 1, actor: 'system', action: 'x.y', tenantId: null, subjectType: null, subjectId: null, outcome: 'success', details: {} };
      }, 5),
    ).rejects.toThrow();
    expect(await store.audit.head()).toMatchObject({ seq: 0 });
    await copyUntil(audit, async () => (await audit.query({ action: 'command.' , limit: 1000 })).length >= 12);
    const records = await audit.query({ limit: 1000 });
    expect(records).toHaveLength(12);
    expect(records.map((r) => r.details['eventSeq'])).toEqual([...new Set(records.map((r) => r.details['eventSeq']))]);
    expect((await audit.verify()).ok).toBe(true);
    await store.close();
  });

  it('runs as a background tailer until stopped', async () => {
    const { open } = await backend.database();
    const store = await open();
    const audit = new AuditLog({ store, tailIntervalMs: 10 });
    audit.start();
    audit.start(); // idempotent
    const tenant = await store.tenants.create(newTenant());
    const id = await deliver(store, tenant.id);
    const deadline = Date.now() + 10_000;
    while ((await audit.query({ subjectId: id })).length < 4 && Date.now() < deadline) await sleep(10);
    await audit.stop();
    expect(await audit.query({ subjectId: id })).toHaveLength(4);
    await store.close();
  });

  describe('verify', () => {
    /** A database with a chain of 8 records (4 events of a command, 4 operator records); returns its tools. */
    async function chained() {
      const db = await backend.database();
      const store = await db.open();
      const audit = new AuditLog({ store });
      const tenant = await store.tenants.create(newTenant());
      await deliver(store, tenant.id);
      await copyUntil(audit, async () => (await store.audit.head())!.seq >= 4);
      for (let i = 0; i < 4; i++) await audit.record({ actor: 'operator:key-2', action: 'tenant.resumed', tenantId: tenant.id, subjectType: 'tenant', subjectId: tenant.id, outcome: 'success', details: { i } });
      expect((await audit.verify()).ok).toBe(true);
      await store.close();
      /** Tampers with the closed database, then verifies through a new store. */
      const tamperAndVerify = async (sql: string) => {
        await db.raw(sql);
        const again = await db.open();
        try {
          return await new AuditLog({ store: again }).verify();
        } finally {
          await again.close();
        }
      };
      return { tamperAndVerify };
    }

    it('finds a modified record', async () => {
      const { tamperAndVerify } = await chained();
      const result = await tamperAndVerify("UPDATE audit_log SET actor = 'operator:mallory' WHERE seq = 3");
      expect(result).toMatchObject({ ok: false, checked: 8, problems: [{ seq: 3, kind: 'modified' }] });
    });

    it('finds a deleted record, and deleted newest records', async () => {
      expect((await (await chained()).tamperAndVerify('DELETE FROM audit_log WHERE seq = 5')).problems).toEqual([{ seq: 5, kind: 'deleted', count: 1 }]);
      expect((await (await chained()).tamperAndVerify('DELETE FROM audit_log WHERE seq >= 7')).problems).toEqual([{ seq: 7, kind: 'deleted', count: 2 }]);
    });

    it('finds two swapped records', async () => {
      const { tamperAndVerify } = await chained();
      const result = await tamperAndVerify(
        'UPDATE audit_log SET seq = seq + 1000000 WHERE seq IN (3, 4); UPDATE audit_log SET seq = 1000007 - seq WHERE seq IN (1000003, 1000004);',
      );
      expect(result.problems).toEqual([
        { seq: 3, kind: 'reordered' },
        { seq: 4, kind: 'reordered' },
      ]);
    });

    it('catches a rewritten tail only against an exported anchor', async () => {
      const db = await backend.database();
      const store = await db.open();
      const audit = new AuditLog({ store });
      for (let i = 0; i < 5; i++) await audit.record({ actor: 'system', action: 'tenant.resumed', tenantId: 't', subjectType: null, subjectId: null, outcome: 'success', details: { i } });
      const anchor = (await store.audit.head())!;
      // Someone with write access deletes the last record and moves the head back: the chain alone looks intact.
      await store.close();
      await db.raw(`DELETE FROM audit_log WHERE seq = 5; UPDATE audit_head SET last_seq = 4, last_hash = (SELECT hash FROM audit_log WHERE seq = 4) WHERE id = 1;`);
      const again = await db.open();
      const verifier = new AuditLog({ store: again });
      expect((await verifier.verify()).ok).toBe(true);
      expect((await verifier.verify({ anchors: [anchor] })).problems).toEqual([{ seq: 5, kind: 'anchor_mismatch' }]);
      await again.close();
    });
  });
});

describe('audit log on PostgreSQL with several processes', () => {
  it('never skips an event whose transaction ends after a later one', async () => {
    const url = await pgDatabases.create();
    const store = new PostgresStore({ kind: 'postgres', connectionString: url });
    await store.migrate();
    const audit = new AuditLog({ store });
    const tenant = await store.tenants.create(newTenant());
    const { command: slow } = await store.commands.insert(newCommand(tenant.id), 'api:key-7');
    const { command: fast } = await store.commands.insert(newCommand(tenant.id), 'api:key-7');
    await copyUntil(audit, async () => (await store.audit.head())!.seq >= 2);

    // A transaction takes a command_events seq and stays open...
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    await client.query('BEGIN');
    await client.query("INSERT INTO command_events (command_id, at, kind, actor, from_state, to_state, reason) VALUES ($1, 1, 'transition', 'worker:slow', 'queued', 'cancelled', NULL)", [slow.id]);
    // ...while a later event (higher seq) commits.
    await store.commands.transition(fast.id, fast.version, { state: 'cancelled' }, { kind: 'transition', actor: 'worker:fast', reason: null });
    await audit.copyCommandEvents();
    expect((await audit.query({ afterSeq: 2 })).map((r) => r.actor)).toEqual([]); // held back, not passed over
    await client.query('COMMIT');
    await client.end();

    await copyUntil(audit, async () => (await audit.query({ afterSeq: 2 })).length >= 2);
    const copied = await audit.query({ afterSeq: 2 });
    expect(copied.map((r) => r.actor)).toEqual(['worker:slow', 'worker:fast']);
    expect((await audit.verify()).ok).toBe(true);
    await store.close();
  });

  it('keeps one chain when several processes tail and record at once', async () => {
    const url = await pgDatabases.create();
    const stores = [0, 1, 2].map(() => new PostgresStore({ kind: 'postgres', connectionString: url }));
    for (const s of stores) await s.migrate();
    const logs = stores.map((store) => new AuditLog({ store, tailIntervalMs: 5, batchSize: 3 }));
    const tenant = await stores[0]!.tenants.create(newTenant());
    logs.forEach((l) => l.start());
    const work = stores.flatMap((s, i) => [
      ...Array.from({ length: 5 }, () => deliver(s, tenant.id)),
      ...Array.from({ length: 10 }, (_, j) => logs[i]!.record({ actor: 'operator:key-2', action: 'tenant.resumed', tenantId: tenant.id, subjectType: null, subjectId: null, outcome: 'success', details: { i, j } })),
    ]);
    await Promise.all(work);
    const expected = 3 * 5 * 4 + 3 * 10;
    const deadline = Date.now() + 15_000;
    while ((await stores[0]!.audit.head())!.seq < expected && Date.now() < deadline) await sleep(20);
    await Promise.all(logs.map((l) => l.stop()));
    const all = await logs[0]!.query({ limit: 1000 });
    expect(all).toHaveLength(expected);
    expect(verifyAuditChain(all, { head: (await stores[0]!.audit.head())! }).ok).toBe(true);
    const eventSeqs = all.filter((r) => r.action.startsWith('command.')).map((r) => r.details['eventSeq']);
    expect(new Set(eventSeqs).size).toBe(3 * 5 * 4);
    for (const s of stores) await s.close();
  });
});

describe('toAuditEvent', () => {
  const base: Omit<AuditRecord, 'hash' | 'prevHash' | 'seq'> = {
    at: Date.UTC(2026, 0, 2, 3, 4, 5),
    actor: 'api:key-7',
    action: 'command.submitted',
    tenantId: 'acme',
    subjectType: 'command',
    subjectId: 'cmd-1',
    outcome: 'success',
    details: { from: null, to: 'queued', resourceType: 'Observation', commandAction: 'create', context: 'patient' },
  };
  const record = (overrides: Partial<AuditRecord> = {}): AuditRecord => ({ ...base, seq: 7, prevHash: 'a'.repeat(64), hash: 'b'.repeat(64), ...overrides });

  it('maps a submission to a RESTful create by a human requestor, with the command and the tenant', () => {
    const event = toAuditEvent(record());
    expect(event).toMatchObject({
      resourceType: 'AuditEvent',
      id: 'tether-audit-7',
      type: { code: 'rest' },
      subtype: [{ code: 'command.submitted' }, { system: 'http://hl7.org/fhir/restful-interaction', code: 'create' }],
      action: 'C',
      recorded: '2026-01-02T03:04:05.000Z',
      outcome: '0',
      outcomeDesc: '∅ → queued',
      agent: [{ who: { identifier: { value: 'api:key-7' } }, requestor: true, type: { coding: [{ code: 'humanuser' }] } }],
      source: { site: 'acme', observer: { display: 'Tether engine' } },
    });
    expect(event.entity.map((e) => e.what.identifier?.value)).toEqual(['cmd-1', 'acme']);
    expect(event.entity[0]?.detail).toContainEqual({ type: 'to', valueString: 'queued' });
    expect(event.extension[0]?.extension).toEqual([
      { url: 'seq', valueString: '7' },
      { url: 'prevHash', valueString: 'a'.repeat(64) },
      { url: 'hash', valueString: 'b'.repeat(64) },
    ]);
  });

  it('maps a worker transition to E, a failure to 4, and names the EHR resource once acknowledged', () => {
    const event = toAuditEvent(
      record({ actor: 'worker:w1', action: 'command.transition', outcome: 'failure', details: { ...base.details, from: 'in_flight', to: 'verified', reason: 'ehr_has_it', ehr: { id: 'obs-1', version: '2' } } }),
    );
    expect(event).toMatchObject({ action: 'E', outcome: '4', outcomeDesc: 'in_flight → verified ehr_has_it', agent: [{ requestor: false }] });
    expect(event.entity.map((e) => e.what.reference)).toContain('Observation/obs-1/_history/2');
    expect(toAuditEvent(record({ action: 'command.submitted', details: { ...base.details, commandAction: 'upsert' } })).action).toBe('U');
    expect(toAuditEvent(record({ action: 'command.submitted', details: { ...base.details, commandAction: 'delete' } })).action).toBe('D');
    expect(toAuditEvent(record({ action: 'tenant.paused', subjectType: 'tenant', subjectId: 'acme', actor: 'system' })).type.code).toBe('110100');
  });
});
