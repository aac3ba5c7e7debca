/**
 * The service end to end: the real API on a socket, the embedded SQLite store, workers, and the embedded sandbox
 * EHR (tenant `demo`) with its OAuth server and fault injection.
 */
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { canaryObservation, startTestService, type TestService } from './__fixtures__/service.js';

const CANARY = 'CANARY-SVC-9e41';
let t: TestService;

beforeAll(async () => {
  t = await startTestService({ worker: { pollIntervalMs: 20, verifyWindowMs: 500, backoffBaseMs: 50, backoffMaxMs: 200, maxAttempts: 2 } });
}, 60_000);

afterAll(async () => {
  await t?.close();
});

const command = (businessKey: string, extra: Record<string, unknown> = {}) => ({
  tenantId: 'demo',
  context: 'system',
  action: 'create',
  resourceType: 'Observation',
  resource: canaryObservation(CANARY),
  businessKey,
  ...extra,
});

describe('first start', () => {
  it('writes the admin key with mode 600, registers the demo tenant, and is healthy and ready', async () => {
    expect(statSync(join(t.dir, '.tether', 'admin-api-key')).mode & 0o777).toBe(0o600);
    expect(statSync(join(t.dir, '.tether', 'master-key')).mode & 0o777).toBe(0o600);
    expect((await t.api('GET', '/healthz', { key: null })).status).toBe(200);
    const ready = await t.api('GET', '/readyz', { key: null });
    expect(ready).toMatchObject({ status: 200, body: { status: 'ready', checks: { store: 'ok', workers: 'running', draining: 'no' } } });
    const demo = await t.api('GET', '/v1/tenants/demo');
    expect(demo.body).toMatchObject({ id: 'demo', environment: 'sandbox', state: 'active', hasPrivateKey: true });
    expect(JSON.stringify(demo.body)).not.toContain('"d"');
  });

  it('serves the OpenAPI document and its UI at /docs', async () => {
    const doc = await t.api('GET', '/docs/json', { key: null });
    expect(doc.status).toBe(200);
    expect(Object.keys(doc.body.paths)).toEqual(expect.arrayContaining(['/v1/commands', '/v1/commands/{id}', '/v1/exceptions/{id}/retry', '/v1/tenants/{id}/health']));
    expect(doc.body.paths['/v1/commands'].post.requestBody.content['application/json'].schema.properties).toHaveProperty('businessKey');
    expect((await t.api('GET', '/docs', { key: null })).status).toBeLessThan(400);
  });
});

describe('commands over HTTP', () => {
  it('accepts a command with 202 once durable, and it reaches verified in the sandbox EHR with its timeline', async () => {
    const res = await t.api('POST', '/v1/commands', { body: command('svc:obs-1') });
    expect(res.status).toBe(202);
    expect(res.headers['location']).toBe(`/v1/commands/${res.body.id}`);
    // The service's worker had a free slot: it took the command at submission (stored in_flight, leased to it).
    expect(res.body).toMatchObject({ state: 'in_flight', created: true, saved: 'in_flight: durable, a worker is sending it to the EHR now' });
    const done = await t.waitFor(res.body.id, (s) => s === 'verified');
    expect(done.command).toMatchObject({ state: 'verified', tenantId: 'demo', businessKey: 'svc:obs-1', ehrId: expect.any(String) });
    expect(done.attempts.length).toBeGreaterThanOrEqual(1);
    expect(done.attempts[0]).toMatchObject({ outcome: 'applied', ehrStatus: 201 });
    expect(done.events.map((e: { kind: string }) => e.kind)).toContain('submitted');
    const log = await t.sandboxAdmin('/_admin/write-log');
    const creates = log.filter((e: { op: string; id: string }) => e.op === 'create' && e.id === done.command.ehrId);
    expect(creates).toHaveLength(1);
    // One correlation id from the API through the worker to the EHR: the command id is answered in
    // X-Correlation-Id, recorded on the attempt, sent to the EHR (its write log keeps it), and in our log lines.
    const id = res.body.id as string;
    expect(res.headers['x-correlation-id']).toBe(id);
    expect(done.attempts[0].correlationId).toMatch(new RegExp(`^${id}\\.\\d+$`));
    expect(creates[0].requestId).toBe(done.attempts[0].correlationId);
    const lines = t.logs.map((l) => JSON.parse(l) as { commandId?: string; msg?: string });
    expect(lines.filter((l) => l.commandId === id).map((l) => l.msg)).toEqual(expect.arrayContaining(['command accepted', 'writeback']));
  });

  it('honours Idempotency-Key: same payload returns the original, another payload is 422', async () => {
    const body = command('svc:idem-1');
    const first = await t.api('POST', '/v1/commands', { body, headers: { 'idempotency-key': 'k-1' } });
    const again = await t.api('POST', '/v1/commands', { body, headers: { 'idempotency-key': 'k-1' } });
    expect(first.status).toBe(202);
    expect(again).toMatchObject({ status: 202, body: { id: first.body.id, created: false } });
    expect(again.headers['idempotent-replayed']).toBe('true');
    const other = await t.api('POST', '/v1/commands', { body: command('svc:idem-2'), headers: { 'idempotency-key': 'k-1' } });
    expect(other.status).toBe(422);
    expect(other.body).toMatchObject({ resourceType: 'OperationOutcome' });
    expect(JSON.stringify(other.body)).toContain('IDEMPOTENCY_KEY_REUSED');
  });

  it('answers bad input with a typed OperationOutcome and stores nothing', async () => {
    const before = (await t.api('GET', '/v1/commands?tenant=demo&limit=1000')).body.commands.length;
    const cases: [string, Parameters<TestService['api']>[2], number, string][] = [
      ['missing field', { body: { ...command('svc:bad-1'), resourceType: undefined } }, 400, 'REQUEST_INVALID'],
      ['resourceType mismatch', { body: command('svc:bad-2', { resourceType: 'Condition' }) }, 400, 'COMMAND_INVALID'],
      ['bad business key', { body: command('svc|bad') }, 400, 'REQUEST_INVALID'],
      ['malformed JSON', { body: '{"tenantId": ', headers: { 'content-type': 'application/json' } }, 400, 'REQUEST_INVALID'],
      ['wrong media type', { body: 'tenantId=demo', headers: { 'content-type': 'application/x-www-form-urlencoded' } }, 415, 'UNSUPPORTED_MEDIA_TYPE'],
      ['too large', { body: command('svc:bad-3', { resource: { ...canaryObservation(CANARY), note: [{ text: 'x'.repeat(2_000_000) }] } }) }, 413, 'REQUEST_TOO_LARGE'],
      ['unknown tenant', { body: command('svc:bad-4', { tenantId: 'nope' }) }, 404, 'TENANT_NOT_FOUND'],
      ['scope the tenant lacks', { body: command('svc:bad-5', { context: 'patient:p1' }) }, 403, 'EHR_SCOPE_MISSING'],
    ];
    for (const [name, options, status, code] of cases) {
      const res = await t.api('POST', '/v1/commands', options);
      expect({ name, status: res.status }).toEqual({ name, status });
      expect(res.body).toMatchObject({ resourceType: 'OperationOutcome' });
      expect(JSON.stringify(res.body)).toContain(code);
      expect(JSON.stringify(res.body)).not.toContain(CANARY);
    }
    expect((await t.api('GET', '/v1/commands?tenant=demo&limit=1000')).body.commands.length).toBe(before);
    const missing = await t.api('GET', '/v1/nothing-here');
    expect(missing.status).toBe(404);
    expect(JSON.stringify(missing.body)).toContain('API_NOT_FOUND');
  });
});

describe('exception queue through a sandbox fault', () => {
  it('a create the EHR keeps failing lands in needs_review; after the fault is cleared, an operator retry verifies it', async () => {
    const set = await t.api('POST', '/v1/sandbox/faults', { body: { faults: [{ id: 'creates-fail', kind: 'error-before', status: 503, match: { interactions: ['create'] } }] } });
    expect(set.status).toBe(200);
    try {
      const res = await t.api('POST', '/v1/commands', { body: command('svc:exc-1') });
      const stuck = await t.waitFor(res.body.id, (s) => s === 'needs_review');
      expect(stuck.command.stateReason).toBe('attempts_exhausted');
      const list = await t.api('GET', '/v1/exceptions?tenant=demo');
      expect(list.body.exceptions.map((c: { id: string }) => c.id)).toContain(res.body.id);
      const detail = await t.api('GET', `/v1/exceptions/${res.body.id}`);
      expect(detail.body).toMatchObject({ ehrState: { status: 'absent' }, lastEhrResponse: { status: 503 } });
      expect((await t.api('POST', '/v1/sandbox/faults', { body: { faults: [] } })).status).toBe(200);
      const retried = await t.api('POST', `/v1/exceptions/${res.body.id}/retry`, { body: { reason: 'EHR back up' } });
      expect(retried).toMatchObject({ status: 200, body: { command: { state: 'queued' } } });
      const done = await t.waitFor(res.body.id, (s) => s === 'verified');
      expect(done.events.map((e: { kind: string }) => e.kind)).toContain('operator:retry');
      // An action the state does not allow is a typed 409.
      const again = await t.api('POST', `/v1/exceptions/${res.body.id}/resolve`, { body: { reason: 'twice' } });
      expect(again.status).toBe(409);
      expect(JSON.stringify(again.body)).toContain('COMMAND_NOT_RETRYABLE');
    } finally {
      await t.sandboxAdmin('/_admin/faults', { faults: [] });
    }
  });
});

describe('the embedded sandbox through the API', () => {
  it('accepts the README walkthrough fault profiles (examples/faults/*.json)', async () => {
    for (const name of ['creates-fail.json', 'reject-notes.json']) {
      const profile = JSON.parse(readFileSync(new URL(`../../../../examples/faults/${name}`, import.meta.url), 'utf8'));
      expect({ name, status: (await t.api('POST', '/v1/sandbox/faults', { body: profile })).status }).toEqual({ name, status: 200 });
    }
    await t.api('POST', '/v1/sandbox/faults', { body: { faults: [] } });
  });

  it('shows its fault profile and stats, and refuses an invalid profile with a typed error', async () => {
    const info = await t.api('GET', '/v1/sandbox');
    expect(info.body).toMatchObject({ fhirBaseUrl: t.svc.sandbox?.fhirBaseUrl, faults: { faults: [] } });
    const bad = await t.api('POST', '/v1/sandbox/faults', { body: { faults: [{ kind: 'reset', probabilty: 0.5 }] } });
    expect(bad.status).toBe(400);
    expect(JSON.stringify(bad.body)).toContain('REQUEST_INVALID');
  });

  it('a command the EHR rejects (422, schema drift) is rejected at once and listed in the exception queue', async () => {
    const set = await t.api('POST', '/v1/sandbox/faults', { body: { faults: [{ id: 'no-notes', kind: 'schema-drift', elements: ['Observation.note'] }] } });
    expect(set.status).toBe(200);
    try {
      const res = await t.api('POST', '/v1/commands', { body: command('svc:rej-1') });
      const done = await t.waitFor(res.body.id, (s) => s === 'rejected');
      expect(done.attempts.at(-1)).toMatchObject({ outcome: 'rejected', errorCategory: 'validation', ehrStatus: 422 });
      const list = await t.api('GET', '/v1/exceptions?tenant=demo');
      expect(list.body.exceptions.map((c: { id: string }) => c.id)).toContain(res.body.id);
      expect((await t.api('POST', `/v1/exceptions/${res.body.id}/cancel`, { body: { reason: 'bad mapping' } })).body.command.state).toBe('cancelled');
    } finally {
      await t.api('POST', '/v1/sandbox/faults', { body: { faults: [] } });
    }
  });
});

describe('tenant health, stats and metrics', () => {
  it('reports auth state, granted scopes, breaker and queue for the demo tenant', async () => {
    const health = await t.api('GET', '/v1/tenants/demo/health');
    expect(health.status).toBe(200);
    expect(health.body).toMatchObject({ tenant: 'demo', auth: { state: 'active', grantedScopes: expect.stringContaining('system/') }, breaker: 'closed' });
    expect(health.body.queue.byState.verified).toBeGreaterThanOrEqual(1);
    const stats = await t.api('GET', '/v1/stats');
    expect(stats.body.tenants).toEqual([expect.objectContaining({ id: 'demo' })]);
    expect(stats.body.verifiedPerMinute.reduce((n: number, v: { count: number }) => n + v.count, 0)).toBeGreaterThanOrEqual(1);
  });

  it('exposes Prometheus metrics (key required) labelled by tenant, never by PHI', async () => {
    expect((await t.api('GET', '/metrics', { key: null })).status).toBe(401);
    const res = await t.api('GET', '/metrics');
    expect(res.status).toBe(200);
    const text = String(res.body);
    expect(text).toMatch(/tether_ehr_requests_total\{tenant="demo",vendor="generic",resource="Observation",interaction="create",outcome="applied",category="none"\} \d+/);
    expect(text).toMatch(/tether_queue_depth\{tenant="demo",state="verified"\} \d+/);
    expect(text).toMatch(/tether_commands_settled_total\{tenant="demo",vendor="generic",state="verified"\} \d+/);
    expect(text).toMatch(/tether_time_to_verified_seconds_count\{tenant="demo",vendor="generic"\} \d+/);
    expect(text).toContain('tether_tenant_auth_paused{tenant="demo"} 0');
    expect(text).not.toContain(CANARY);
  });

  it('the example alert rules (docs/alerts.yml) use only metrics the service exports', async () => {
    const text = String((await t.api('GET', '/metrics')).body);
    const rules = readFileSync(new URL('../../../../docs/alerts.yml', import.meta.url), 'utf8');
    const used = [...new Set(rules.match(/tether_[a-z_]+/g) ?? [])];
    expect(used.length).toBeGreaterThanOrEqual(5);
    for (const name of used) expect({ name, exported: text.includes(`# HELP ${name} `) }).toEqual({ name, exported: true });
  });
});

describe('audit', () => {
  it('chains command events, operator actions and token events; verifies; exports FHIR AuditEvent; no PHI', async () => {
    await t.api('PATCH', '/v1/tenants/demo', { body: { scopes: 'system/*.cruds' } });
    let records: { action: string; actor: string; subjectId: string | null; details: Record<string, unknown> }[] = [];
    const end = Date.now() + 10_000;
    while (Date.now() < end) {
      records = (await t.api('GET', '/v1/audit?limit=1000')).body.records;
      if (records.some((r) => r.action.startsWith('command.operator')) && records.some((r) => r.action === 'tenant.updated')) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    const actions = new Set(records.map((r) => r.action));
    expect([...actions]).toEqual(expect.arrayContaining(['command.submitted', 'tenant.updated', 'sandbox.faults_changed']));
    expect([...actions].some((a) => a.startsWith('command.operator'))).toBe(true);
    expect([...actions].some((a) => a.startsWith('token.'))).toBe(true);
    const updated = records.find((r) => r.action === 'tenant.updated');
    expect(updated).toMatchObject({ actor: expect.stringMatching(/^operator:/), subjectId: 'demo', details: { fields: 'scopes', role: 'admin' } });
    const verify = await t.api('GET', '/v1/audit/verify');
    expect(verify.body).toMatchObject({ ok: true, problemCount: 0 });
    expect(verify.body.checked).toBeGreaterThanOrEqual(records.length);
    const exported = await t.api('GET', '/v1/audit/export?limit=5');
    const events = String(exported.body).trim().split('\n').map((l) => JSON.parse(l));
    expect(events[0]).toMatchObject({ resourceType: 'AuditEvent' });
    expect(JSON.stringify(records)).not.toContain(CANARY);
    expect(JSON.stringify(records)).not.toContain('svc:obs-1');
  });
});

describe('PHI', () => {
  it('no canary in any log line, while the log does record the commands', () => {
    expect(t.logs.length).toBeGreaterThan(10);
    expect(t.logs.some((l) => l.includes('"command accepted"'))).toBe(true);
    expect(t.logs.filter((l) => l.includes(CANARY))).toEqual([]);
    expect(t.logs.filter((l) => l.includes('svc:obs-1'))).toEqual([]);
  });
});
