/**
 * The API-facing CLI commands against a real service (embedded sandbox EHR as tenant `demo`), run in-process
 * through `main` so stdout and exit codes are observed exactly as a user would see them.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { canaryObservation, startTestService, type TestService } from '../service/__fixtures__/service.js';
import { main } from './main.js';

let t: TestService;

beforeAll(async () => {
  t = await startTestService();
}, 60_000);

afterAll(async () => {
  await t?.close();
});

async function run(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const o = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => ((out += String(chunk)), true));
  const e = vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => ((err += String(chunk)), true));
  const before = process.exitCode;
  process.exitCode = undefined;
  try {
    const code = await main(argv);
    return { code, out, err };
  } finally {
    o.mockRestore();
    e.mockRestore();
    process.exitCode = before;
  }
}

const remote = () => ['--url', t.svc.url, '--key', t.adminKey];

describe('tether submit / status', () => {
  it('submits NDJSON with idempotency keys, waits until verified, and a second run replays instead of duplicating', async () => {
    const file = join(t.dir, 'commands.ndjson');
    const lines = [1, 2, 3].map((n) =>
      JSON.stringify({ tenantId: 'demo', context: 'system', action: 'create', resourceType: 'Observation', resource: canaryObservation(`CANARY-CLI-${n}`), businessKey: `cli:${n}`, idempotencyKey: `cli-${n}` }),
    );
    writeFileSync(file, `${lines.join('\n')}\n`);
    const first = await run('submit', file, '--wait', '--json', '--timeout', '30', ...remote());
    expect(first.code).toBe(0);
    const summary = JSON.parse(first.out);
    expect(summary).toMatchObject({ submitted: 3, replayed: 0, failed: 0, states: { verified: 3 } });
    const again = await run('submit', file, '--json', ...remote());
    expect(JSON.parse(again.out)).toMatchObject({ submitted: 0, replayed: 3, failed: 0 });
    const status = await run('status', summary.results[0].id, ...remote());
    expect(status.code).toBe(0);
    expect(JSON.parse(status.out).command).toMatchObject({ state: 'verified', businessKey: 'cli:1' });
  });

  it('submits the README example (examples/observation-command.json) to verified', async () => {
    const file = new URL('../../../../examples/observation-command.json', import.meta.url).pathname;
    const res = await run('submit', file, '--wait', '--json', '--timeout', '30', ...remote());
    expect(res.code).toBe(0);
    expect(JSON.parse(res.out)).toMatchObject({ submitted: 1, failed: 0, states: { verified: 1 } });
  });

  it('reports a rejected line and exits 1', async () => {
    const file = join(t.dir, 'bad.json');
    writeFileSync(file, JSON.stringify([{ tenantId: 'demo', context: 'system', action: 'create', resourceType: 'Observation', resource: { resourceType: 'Condition' }, businessKey: 'cli:bad' }]));
    const res = await run('submit', file, '--json', ...remote());
    expect(res.code).toBe(1);
    expect(JSON.parse(res.out)).toMatchObject({ failed: 1, results: [{ line: 1, error: expect.stringContaining('COMMAND_INVALID') }] });
  });

  it('a wrong key is a clear failure (exit 1), an unreachable API says so', async () => {
    const denied = await run('tenants', 'list', '--url', t.svc.url, '--key', 'tk_abcdefgh_' + 'A'.repeat(43));
    expect(denied.code).toBe(1);
    expect(denied.err).toContain('API_UNAUTHENTICATED');
    const down = await run('tenants', 'list', '--url', 'http://127.0.0.1:1', '--key', t.adminKey);
    expect(down.code).toBe(1);
    expect(down.err).toContain('cannot reach the Tether API');
  });
});

describe('tether tenants / exceptions', () => {
  it('lists tenants and diagnoses the demo tenant: discovery, token, scopes, capabilities, verdicts', async () => {
    const list = await run('tenants', 'list', ...remote());
    expect(JSON.parse(list.out).tenants.map((x: { id: string }) => x.id)).toEqual(['demo']);
    const doctor = await run('tenants', 'doctor', 'demo', '--json', ...remote());
    expect(doctor.code).toBe(0);
    const report = JSON.parse(doctor.out);
    expect(report.checks.map((c: { name: string; ok: boolean }) => [c.name, c.ok])).toEqual([
      ['tenant', true],
      ['discovery', true],
      ['token', true],
      ['scopes', true],
      ['capabilities', true],
    ]);
    expect(report.workflows).toContainEqual({ resourceType: 'Observation', action: 'create', status: 'works', reasons: [] });
    const text = await run('tenants', 'doctor', 'demo', ...remote());
    expect(text.out).toContain('Tenant demo: OK');
    expect(text.out).toMatch(/works\s+create Observation/);
  });

  it('doctor names the missing scope when a tenant was narrowed', async () => {
    await t.api('PATCH', '/v1/tenants/demo', { body: { scopes: 'system/Observation.cruds' } });
    try {
      const res = await run('tenants', 'doctor', 'demo', '--json', ...remote());
      expect(res.code).toBe(1);
      const report = JSON.parse(res.out);
      const condition = report.workflows.find((w: { resourceType: string; action: string }) => w.resourceType === 'Condition' && w.action === 'create');
      expect(condition.status).toBe('blocked');
      expect(condition.reasons.join(' ')).toContain('system/Condition.c');
      // The token granted under the old scopes was dropped: the new one carries the narrowed grant.
      expect(report.checks.find((c: { name: string }) => c.name === 'scopes').detail).toBe('granted: system/Observation.cruds');
    } finally {
      await t.api('PATCH', '/v1/tenants/demo', { body: { scopes: 'system/*.cruds' } });
    }
  });

  it('lists the (empty) exception queue and refuses an action on an unknown command', async () => {
    const list = await run('exceptions', 'list', '--tenant', 'demo', ...remote());
    expect(JSON.parse(list.out)).toEqual({ exceptions: [] });
    const retry = await run('exceptions', 'retry', 'no-such-command', '--reason', 'x', ...remote());
    expect(retry.code).toBe(1);
    expect(retry.err).toContain('COMMAND_NOT_FOUND');
    const missingReason = await run('exceptions', 'retry', 'x', ...remote());
    expect(missingReason.code).toBe(2);
  });
});

describe('the README walkthrough from the CLI (steps 3 and 4, fast path)', () => {
  it('reject-notes rejects examples/observation-with-note.json at once; after clearing the fault, a retry verifies it', async () => {
    const faults = JSON.parse(readFileSync(new URL('../../../../examples/faults/reject-notes.json', import.meta.url), 'utf8')) as unknown;
    expect((await t.api('POST', '/v1/sandbox/faults', { body: faults })).status).toBe(200);
    const file = new URL('../../../../examples/observation-with-note.json', import.meta.url).pathname;
    const submitted = await run('submit', file, '--wait', '--json', '--timeout', '30', ...remote());
    const summary = JSON.parse(submitted.out);
    expect(summary).toMatchObject({ submitted: 1, states: { rejected: 1 } });
    const id = summary.results[0].id as string;
    const list = JSON.parse((await run('exceptions', 'list', '--tenant', 'demo', ...remote())).out);
    expect(list.exceptions.map((e: { id: string; stateReason: string }) => [e.id, e.stateReason])).toEqual([[id, 'EHR_VALIDATION']]);
    expect((await t.api('POST', '/v1/sandbox/faults', { body: { faults: [] } })).status).toBe(200);
    const retry = await run('exceptions', 'retry', id, '--reason', 'schema drift fixed', ...remote());
    expect(retry.code).toBe(0);
    const done = await t.waitFor(id, (s) => s === 'verified');
    expect(done.command.state).toBe('verified');
  });
});

describe('tether keys', () => {
  it('creates a tenant-scoped submitter key that works, lists it without the secret, and revokes it', async () => {
    const created = await run('keys', 'create', 'my-app', '--role', 'submitter', '--tenant', 'demo', ...remote());
    expect(created.code).toBe(0);
    expect(created.err).toContain('shown only this once');
    const key = JSON.parse(created.out) as { id: string; key: string; role: string; tenants: string[] };
    expect(key).toMatchObject({ role: 'submitter', tenants: ['demo'] });
    // The new key submits to its tenant, and may not read the key list (admin only).
    const file = join(t.dir, 'keyed.json');
    writeFileSync(file, JSON.stringify({ tenantId: 'demo', context: 'system', action: 'create', resourceType: 'Observation', resource: canaryObservation('CANARY-KEYS-1'), businessKey: 'keys:1' }));
    expect((await run('submit', file, '--json', '--url', t.svc.url, '--key', key.key)).code).toBe(0);
    expect((await run('keys', 'list', '--url', t.svc.url, '--key', key.key)).err).toContain('API_FORBIDDEN');
    const list = await run('keys', 'list', ...remote());
    expect(list.out).not.toContain(key.key);
    expect(JSON.parse(list.out).keys.map((k: { id: string }) => k.id)).toContain(key.id);
    const revoked = await run('keys', 'revoke', key.id, ...remote());
    expect(revoked.code).toBe(0);
    const after = await run('submit', file, '--json', '--url', t.svc.url, '--key', key.key);
    expect(after.code).toBe(1);
    expect((await run('keys', 'create', 'x', ...remote())).code).toBe(2);
  });
});
