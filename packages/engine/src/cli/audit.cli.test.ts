/**
 * `tether audit verify` end to end: the built CLI (`npm test` builds first) against a real SQLite file and the
 * real PostgreSQL, tampered with through plain SQL as an intruder would.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuditLog } from '../audit/index.js';
import { PgTestDatabases, pgQuery } from '../store/__fixtures__/test-databases.js';
import { PostgresStore, SqliteStore, type Store } from '../store/index.js';
import { startTestService } from '../service/__fixtures__/service.js';

const BIN = fileURLToPath(new URL('../../bin/tether.js', import.meta.url));

function run(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((done) => {
    // A clean environment for the store settings, so the developer's own TETHER_* variables cannot interfere.
    const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('TETHER_')));
    const child = spawn(process.execPath, [BIN, ...args], { env: { ...base, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => done({ code, stdout, stderr }));
  });
}

/** Fills a store with 6 records: the 2 events of a command, then 4 operator records. */
async function fill(store: Store): Promise<void> {
  await store.migrate();
  const tenant = await store.tenants.create({
    id: `t-${randomBytes(3).toString('hex')}`,
    vendor: 'generic',
    fhirBaseUrl: 'https://ehr.example.test/fhir',
    environment: 'sandbox',
    authMethod: 'backend-services',
    clientId: 'c',
    scopes: 'system/Observation.c',
    tokenEndpoint: null,
    dataKeyWrapped: randomBytes(40),
    credentialsCiphertext: null,
  });
  const { command } = await store.commands.insert(
    {
      id: `cmd-${randomBytes(6).toString('hex')}`,
      tenantId: tenant.id,
      context: 'system',
      action: 'create',
      resourceType: 'Observation',
      businessKey: 'bk-1',
      idempotencyKey: null,
      payloadHash: randomBytes(32).toString('hex'),
      resource: { resourceType: 'Observation', status: 'final' },
      priority: 'batch',
      ehrVersion: null,
      sourceTimestamp: null,
      requestedBy: 'api:key-1',
      deadlineAt: null,
    },
    'api:key-1',
  );
  await store.commands.transition(command.id, command.version, { state: 'cancelled' }, { kind: 'operator:cancel', actor: 'operator:key-2', reason: 'duplicate order' });
  const audit = new AuditLog({ store });
  const deadline = Date.now() + 10_000;
  while ((await store.audit.head())!.seq < 2 && Date.now() < deadline) await audit.copyCommandEvents();
  for (let i = 0; i < 4; i++) await audit.record({ actor: 'operator:key-2', action: 'tenant.resumed', tenantId: tenant.id, subjectType: 'tenant', subjectId: tenant.id, outcome: 'success', details: { i } });
  await store.close();
}

describe('tether audit verify (SQLite, default data dir layout)', () => {
  let dir: string;
  let dataDir: string;
  const sql = (statement: string) => {
    const db = new Database(join(dataDir, 'tether.db'));
    db.exec(statement);
    db.close();
  };

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'tether-audit-cli-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /** A fresh data dir with a filled database. */
  async function fresh(): Promise<void> {
    dataDir = join(dir, randomBytes(4).toString('hex'), '.tether');
    mkdirSync(dataDir, { recursive: true });
    await fill(new SqliteStore({ kind: 'sqlite', path: join(dataDir, 'tether.db') }));
  }

  it('exits 0 on an intact log, found through TETHER_DATA_DIR, --data-dir or --sqlite-path', async () => {
    await fresh();
    const viaEnv = await run(['audit', 'verify'], { TETHER_DATA_DIR: dataDir });
    expect(viaEnv).toMatchObject({ code: 0, stderr: '' });
    expect(viaEnv.stdout).toMatch(/^Audit log intact: 6 records checked, head 6:[0-9a-f]{64}\.\n$/);
    expect((await run(['audit', 'verify', '--data-dir', dataDir])).code).toBe(0);
    const json = await run(['audit', 'verify', '--sqlite-path', join(dataDir, 'tether.db'), '--json']);
    expect(json.code).toBe(0);
    expect(JSON.parse(json.stdout)).toMatchObject({ ok: true, checked: 6, problems: [], head: { seq: 6 } });
  });

  it('exports the records as FHIR AuditEvent NDJSON, after a seq, up to a limit', async () => {
    await fresh();
    const all = await run(['audit', 'export', '--data-dir', dataDir]);
    expect(all.code).toBe(0);
    const events = all.stdout.trim().split('\n').map((line) => JSON.parse(line) as { resourceType: string; id: string; action: string });
    expect(events.map((e) => e.id)).toEqual([1, 2, 3, 4, 5, 6].map((n) => `tether-audit-${n}`));
    expect(events[0]).toMatchObject({ resourceType: 'AuditEvent', action: 'C' });
    const some = await run(['audit', 'export', '--data-dir', dataDir, '--after', '2', '--limit', '3']);
    expect(some.stdout.trim().split('\n').map((line) => (JSON.parse(line) as { id: string }).id)).toEqual(['tether-audit-3', 'tether-audit-4', 'tether-audit-5']);
    expect((await run(['audit', 'export', '--data-dir', dataDir, '--limit', '0'])).code).toBe(2);
  });

  it('exits 1 and names a modified record', async () => {
    await fresh();
    sql("UPDATE audit_log SET outcome = 'failure' WHERE seq = 2");
    const res = await run(['audit', 'verify', '--data-dir', dataDir]);
    expect(res.code).toBe(1);
    expect(res.stdout).toBe('Audit log TAMPERED: 1 problem in 6 records.\n  seq 2: modified\n');
    // Only seqs and kinds: nothing of the record itself is printed.
    expect(res.stdout).not.toMatch(/failure|operator|tenant/);
  });

  it('exits 1 for a deleted record and for deleted newest records', async () => {
    await fresh();
    sql('DELETE FROM audit_log WHERE seq = 3');
    const middle = await run(['audit', 'verify', '--data-dir', dataDir, '--json']);
    expect(middle.code).toBe(1);
    expect(JSON.parse(middle.stdout)).toMatchObject({ ok: false, problems: [{ seq: 3, kind: 'deleted', count: 1 }] });
    await fresh();
    sql('DELETE FROM audit_log WHERE seq > 4');
    const newest = await run(['audit', 'verify', '--data-dir', dataDir]);
    expect(newest).toMatchObject({ code: 1, stdout: 'Audit log TAMPERED: 1 problem in 4 records.\n  seq 5: deleted (2 records missing)\n' });
  });

  it('exits 1 for two swapped records', async () => {
    await fresh();
    sql('UPDATE audit_log SET seq = seq + 1000 WHERE seq IN (4, 5); UPDATE audit_log SET seq = 1009 - seq WHERE seq IN (1004, 1005);');
    const res = await run(['audit', 'verify', '--data-dir', dataDir, '--json']);
    expect(res.code).toBe(1);
    expect(JSON.parse(res.stdout).problems).toEqual([
      { seq: 4, kind: 'reordered' },
      { seq: 5, kind: 'reordered' },
    ]);
  });

  it('checks anchors: a cut-back log with a moved head passes alone, fails against the exported head', async () => {
    await fresh();
    const before = JSON.parse((await run(['audit', 'verify', '--data-dir', dataDir, '--json'])).stdout) as { head: { seq: number; hash: string } };
    sql('DELETE FROM audit_log WHERE seq = 6; UPDATE audit_head SET last_seq = 5, last_hash = (SELECT hash FROM audit_log WHERE seq = 5);');
    expect((await run(['audit', 'verify', '--data-dir', dataDir])).code).toBe(0);
    const anchored = await run(['audit', 'verify', '--data-dir', dataDir, '--anchor', `${before.head.seq}:${before.head.hash}`]);
    expect(anchored).toMatchObject({ code: 1, stdout: expect.stringContaining('seq 6: anchor_mismatch') });
  });

  it('exits 2 when it cannot verify: no database, bad flags, a bad anchor', async () => {
    const missing = await run(['audit', 'verify', '--data-dir', join(dir, 'nowhere')]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('no SQLite database');
    expect((await run(['audit', 'verify', '--data-dir', dir, '--sqlite-path', join(dir, 'x.db')])).code).toBe(2);
    expect((await run(['audit', 'verify', '--anchor', 'nonsense'])).code).toBe(2);
    expect((await run(['audit', 'verify', '--store', 'mysql'])).code).toBe(2);
    expect((await run(['audit', 'verify', '--store', 'postgres'])).code).toBe(2);
  });
});

describe('tether audit verify against a running service', () => {
  it('falls back to the API when the service holds the SQLite store, and takes --url, --key and anchors', async () => {
    const t = await startTestService({ worker: { enabled: false } });
    try {
      await t.api('POST', '/v1/tenants/demo/resume', { body: { reason: 'audit test' } });
      const dataDir = join(t.dir, '.tether');
      const env = { TETHER_API_KEY: t.adminKey, TETHER_URL: t.svc.url };
      const fallback = await run(['audit', 'verify', '--data-dir', dataDir, '--json'], env);
      expect(fallback.stderr).toContain('held by a running service; verifying through its API');
      expect(fallback.code).toBe(0);
      const verdict = JSON.parse(fallback.stdout) as { ok: boolean; checked: number; head: { seq: number; hash: string } };
      expect(verdict).toMatchObject({ ok: true });
      expect(verdict.checked).toBeGreaterThan(0);
      // The head printed now is an anchor later; a wrong hash for that seq is reported as tampering (exit 1).
      const anchor = `${verdict.head.seq}:${verdict.head.hash}`;
      expect((await run(['audit', 'verify', '--url', t.svc.url, '--key', t.adminKey, '--anchor', anchor])).code).toBe(0);
      const forged = `${verdict.head.seq}:${'0'.repeat(64)}`;
      const bad = await run(['audit', 'verify', '--url', t.svc.url, '--key', t.adminKey, '--anchor', forged]);
      expect(bad.code).toBe(1);
      expect(bad.stdout).toContain('TAMPERED');
      // A wrong key is not a verdict: exit 2.
      const denied = await run(['audit', 'verify', '--url', t.svc.url, '--key', 'tk_wrong']);
      expect(denied.code).toBe(2);
      expect(denied.stderr).toContain('API_UNAUTHENTICATED');
    } finally {
      await t.close();
    }
  });
});

describe('tether audit verify (PostgreSQL)', () => {
  const databases = new PgTestDatabases();
  afterAll(() => databases.dropAll());

  it('exits 0 when intact and 1 with the kind after tampering, via --postgres-url or TETHER_POSTGRES_URL', async () => {
    const url = await databases.create();
    await fill(new PostgresStore({ kind: 'postgres', connectionString: url }));
    expect((await run(['audit', 'verify', '--postgres-url', url])).code).toBe(0);
    expect((await run(['audit', 'verify'], { TETHER_POSTGRES_URL: url })).code).toBe(0);
    await pgQuery(url, "UPDATE audit_log SET details = '{}' WHERE seq = 5");
    const res = await run(['audit', 'verify', '--store', 'postgres', '--postgres-url', url, '--json']);
    expect(res.code).toBe(1);
    expect(JSON.parse(res.stdout).problems).toEqual([{ seq: 5, kind: 'modified' }]);
  });

  it('exits 2 when the database cannot be reached', async () => {
    const res = await run(['audit', 'verify', '--postgres-url', 'postgres://postgres@127.0.0.1:1/nothing']);
    expect(res.code).toBe(2);
    expect(res.stderr).toContain('STORE_UNAVAILABLE');
  });
});
