import { afterEach, describe, expect, it } from 'vitest';
import { startSandbox, type Sandbox } from './server.js';
import { codeOf, http, observation, testClient, writeLog } from './test-helpers.js';

const open: Sandbox[] = [];
async function sandbox(options: Parameters<typeof startSandbox>[0]): Promise<Sandbox> {
  const sb = await startSandbox(options);
  open.push(sb);
  return sb;
}
afterEach(async () => {
  await Promise.all(open.splice(0).map((s) => s.close()));
});

async function setFaults(sb: Sandbox, profile: unknown): Promise<number> {
  const res = await fetch(`${sb.url}/_admin/faults`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(profile) });
  return res.status;
}

async function stats(sb: Sandbox): Promise<{ total: number; byFault: Record<string, { count: number }> }> {
  return (await (await fetch(`${sb.url}/_admin/faults/stats`)).json()) as { total: number; byFault: Record<string, { count: number }> };
}

describe('faults before processing apply nothing', () => {
  it('reset destroys the connection and writes nothing', async () => {
    const sb = await sandbox({ auth: false, faults: { faults: [{ id: 'r', kind: 'reset' }] } });
    await expect(http(`${sb.fhirBaseUrl}/Observation`, { body: observation('p', 'reset-1') })).rejects.toThrow();
    expect(await writeLog(sb.url)).toHaveLength(0);
    expect((await stats(sb)).byFault['r']?.count).toBe(1);
  });

  it('error-before answers the status with an OperationOutcome and writes nothing', async () => {
    const sb = await sandbox({ auth: false, faults: { faults: [{ id: 'e', kind: 'error-before', status: 503 }] } });
    const res = await http(`${sb.fhirBaseUrl}/Observation`, { body: observation('p', 'eb-1') });
    expect(res.status).toBe(503);
    expect(codeOf(res)).toBe('FAULT_INJECTED_ERROR');
    expect(await writeLog(sb.url)).toHaveLength(0);
  });

  it('rate-limit answers 429 with a Retry-After in the configured range', async () => {
    const sb = await sandbox({ auth: false, faults: { faults: [{ id: 'rl', kind: 'rate-limit', retryAfterSeconds: { min: 2, max: 4 } }] } });
    const seen = new Set<string>();
    for (let i = 0; i < 20; i++) {
      const res = await http(`${sb.fhirBaseUrl}/Observation?identifier=x`);
      expect(res.status).toBe(429);
      expect(codeOf(res)).toBe('FAULT_RATE_LIMITED');
      seen.add(res.headers.get('retry-after') ?? '');
    }
    expect([...seen].every((v) => ['2', '3', '4'].includes(v))).toBe(true);
    expect(seen.size).toBeGreaterThan(1);
  });

  it('latency delays the answer by at least the fixed part', async () => {
    const sb = await sandbox({ auth: false, faults: { faults: [{ id: 'l', kind: 'latency', fixedMs: 150 }] } });
    const t0 = performance.now();
    const res = await http(`${sb.fhirBaseUrl}/Observation?identifier=x`);
    expect(res.status).toBe(200);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(145);
  });
});

describe('faults after commit: applied, but the client cannot tell', () => {
  it('commit-then-drop applies the write and destroys the socket without a response', async () => {
    const sb = await sandbox({ auth: false, faults: { faults: [{ id: 'd', kind: 'commit-then-drop' }] } });
    await expect(
      http(`${sb.fhirBaseUrl}/Observation`, { body: observation('p', 'ctd-1'), headers: { 'x-request-id': 'ctd-req' } }),
    ).rejects.toThrow();
    const log = await writeLog(sb.url);
    expect(log).toHaveLength(1);
    expect(log[0]).toMatchObject({ op: 'create', requestId: 'ctd-req', identifiers: ['urn:tether:test|ctd-1'] });
    // Reads are never dropped by a writes-only fault.
    expect((await http(`${sb.fhirBaseUrl}/Observation?identifier=ctd-1`)).body.total).toBe(1);
  });

  it('error-after answers 500 although the write was applied', async () => {
    const sb = await sandbox({ auth: false, faults: { faults: [{ id: 'ea', kind: 'error-after', status: 500 }] } });
    const res = await http(`${sb.fhirBaseUrl}/Observation`, { body: observation('p', 'ea-1') });
    expect(res.status).toBe(500);
    expect(codeOf(res)).toBe('FAULT_INJECTED_ERROR');
    expect(await writeLog(sb.url)).toHaveLength(1);
  });
});

describe('visibility lag and schema drift', () => {
  it('new writes are invisible to search for the lag, but readable by id', async () => {
    const sb = await sandbox({ auth: false, faults: { faults: [{ id: 'lag', kind: 'visibility-lag', lagMs: 400 }] } });
    const created = await http(`${sb.fhirBaseUrl}/Observation`, { body: observation('p', 'lag-1') });
    expect((await http(`${sb.fhirBaseUrl}/Observation?identifier=lag-1`)).body.total).toBe(0);
    expect((await http(`${sb.fhirBaseUrl}/Observation/${created.body.id}`)).status).toBe(200);
    // A conditional create is not fooled by the lag (it is atomic on the server).
    const cond = await http(`${sb.fhirBaseUrl}/Observation`, { body: observation('p', 'lag-1'), headers: { 'if-none-exist': 'identifier=lag-1' } });
    expect(cond.status).toBe(200);
    expect((await stats(sb)).byFault['lag']?.count).toBeGreaterThanOrEqual(1);
    await new Promise((r) => setTimeout(r, 450));
    expect((await http(`${sb.fhirBaseUrl}/Observation?identifier=lag-1`)).body.total).toBe(1);
  });

  it('an update within the lag leaves search on the previous version', async () => {
    let now = Date.parse('2026-01-01T00:00:00Z');
    const sb = await sandbox({ auth: false, clock: () => now, faults: { faults: [{ id: 'lag', kind: 'visibility-lag', lagMs: 5000 }] } });
    const created = await http(`${sb.fhirBaseUrl}/Observation`, { body: observation('p', 'lag-2') });
    now += 10_000;
    await http(`${sb.fhirBaseUrl}/Observation/${created.body.id}`, { method: 'PUT', body: { ...created.body, status: 'amended' } });
    const found = await http(`${sb.fhirBaseUrl}/Observation?identifier=lag-2`);
    expect(found.body.total).toBe(1);
    expect(found.body.entry[0].resource.meta.versionId).toBe('1');
  });

  it('schema drift rejects a named element with 422 from its start time, and only that element', async () => {
    const sb = await sandbox({ auth: false, faults: { faults: [{ id: 'drift', kind: 'schema-drift', elements: ['Observation.note'] }] } });
    const res = await http(`${sb.fhirBaseUrl}/Observation`, { body: observation('p', 'drift-1', { note: [{ text: 'hello' }] }) });
    expect(res.status).toBe(422);
    expect(codeOf(res)).toBe('FHIR_ELEMENT_REJECTED');
    expect(res.text).not.toContain('hello');
    expect((await http(`${sb.fhirBaseUrl}/Observation`, { body: observation('p', 'drift-2') })).status).toBe(201);
    expect((await stats(sb)).byFault['drift']?.count).toBe(1);
  });
});

describe('runtime profile changes and replay', () => {
  it('POST /_admin/faults replaces the profile; an invalid one is refused and the old one kept', async () => {
    const sb = await sandbox({ auth: false });
    expect((await http(`${sb.fhirBaseUrl}/Observation?identifier=x`)).status).toBe(200);
    expect(await setFaults(sb, { faults: [{ id: 'e', kind: 'error-before', status: 502 }] })).toBe(200);
    expect((await http(`${sb.fhirBaseUrl}/Observation?identifier=x`)).status).toBe(502);
    const bad = await fetch(`${sb.url}/_admin/faults`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"faults":[{"kind":"reset","probability":2}]}' });
    expect(bad.status).toBe(400);
    expect(JSON.stringify(await bad.json())).toContain('FAULT_PROFILE_INVALID');
    expect((await http(`${sb.fhirBaseUrl}/Observation?identifier=x`)).status).toBe(502);
    const profile = (await (await fetch(`${sb.url}/_admin/faults`)).json()) as { faults: { id: string }[] };
    expect(profile.faults.map((f) => f.id)).toEqual(['e']);
  });

  it('the same seed replays the same fault sequence; another seed does not', async () => {
    const faults = { faults: [{ id: 'e', kind: 'error-before', status: 503, probability: 0.3 }] };
    const sequence = async (seed: number): Promise<number[]> => {
      const sb = await sandbox({ auth: false, seed, faults });
      const out: number[] = [];
      for (let i = 0; i < 60; i++) out.push((await http(`${sb.fhirBaseUrl}/Patient?identifier=x`)).status);
      return out;
    };
    const a = await sequence(42);
    const b = await sequence(42);
    const c = await sequence(43);
    expect(a).toEqual(b);
    expect(a).not.toEqual(c);
    expect(a.filter((s) => s === 503).length).toBeGreaterThan(5);
  });
});

describe('tokens and scopes on the FHIR server', () => {
  async function authSandbox(faults?: unknown): Promise<{ sb: Sandbox; token: (scope: string) => Promise<string> }> {
    const client = await testClient('svc', 'system/Patient.rs system/Observation.cruds');
    const sb = await sandbox({ auth: true, clients: [client.registration], ...(faults ? { faults } : {}) });
    return { sb, token: (scope) => client.token(sb.tokenEndpoint as string, scope) };
  }

  it('missing or unknown tokens get 401 invalid_token; a scope that does not cover the interaction gets 403', async () => {
    const { sb, token } = await authSandbox();
    const missing = await http(`${sb.fhirBaseUrl}/Patient`);
    expect(missing.status).toBe(401);
    expect(missing.headers.get('www-authenticate')).toContain('error="invalid_token"');
    expect(codeOf(missing)).toBe('AUTH_TOKEN_MISSING');
    expect((await http(`${sb.fhirBaseUrl}/Patient`, { token: 'nonsense' })).status).toBe(401);

    const t = await token('system/Patient.rs system/Observation.cruds');
    expect(await (await fetch(`${sb.url}/_admin/auth/stats`)).json()).toEqual({ tokenRequests: 1 });
    expect((await http(`${sb.fhirBaseUrl}/Patient`, { token: t })).status).toBe(200);
    const write = await http(`${sb.fhirBaseUrl}/Patient`, { token: t, body: { resourceType: 'Patient' } });
    expect(write.status).toBe(403);
    expect(codeOf(write)).toBe('AUTH_INSUFFICIENT_SCOPE');
    expect(write.headers.get('www-authenticate')).toContain('scope="system/Patient.c"');
    expect(await writeLog(sb.url)).toHaveLength(0);
    expect((await http(`${sb.fhirBaseUrl}/Observation`, { token: t, body: observation('p', 'auth-1') })).status).toBe(201);
  });

  it('checks every entry of a transaction before applying any', async () => {
    const { sb, token } = await authSandbox();
    const t = await token('system/Patient.rs system/Observation.cruds');
    const res = await http(sb.fhirBaseUrl, {
      token: t,
      body: {
        resourceType: 'Bundle',
        type: 'transaction',
        entry: [
          { resource: observation('p', 'tx-auth'), request: { method: 'POST', url: 'Observation' } },
          { resource: { resourceType: 'Patient' }, request: { method: 'POST', url: 'Patient' } },
        ],
      },
    });
    expect(res.status).toBe(403);
    expect(await writeLog(sb.url)).toHaveLength(0);
  });

  it('metadata and smart-configuration need no token', async () => {
    const { sb } = await authSandbox();
    expect((await http(`${sb.fhirBaseUrl}/metadata`)).status).toBe(200);
    const smart = await http(`${sb.fhirBaseUrl}/.well-known/smart-configuration`);
    expect(smart.status).toBe(200);
    expect(smart.body.token_endpoint).toBe(sb.tokenEndpoint);
  });

  it('early-401 rejects a valid token without revoking it', async () => {
    const { sb, token } = await authSandbox({ faults: [{ id: 'e401', kind: 'early-401', match: { methods: ['POST'] } }] });
    const t = await token('system/Observation.cruds');
    const res = await http(`${sb.fhirBaseUrl}/Observation`, { token: t, body: observation('p', 'e401') });
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toContain('invalid_token');
    expect(await writeLog(sb.url)).toHaveLength(0);
    expect((await http(`${sb.fhirBaseUrl}/Observation?identifier=e401`, { token: t })).status).toBe(200);
  });

  it('revoke-token revokes the presented token for good', async () => {
    const { sb, token } = await authSandbox({ faults: [{ id: 'rv', kind: 'revoke-token', match: { methods: ['DELETE'] } }] });
    const t = await token('system/Observation.cruds');
    expect((await http(`${sb.fhirBaseUrl}/Observation?identifier=x`, { token: t })).status).toBe(200);
    expect((await http(`${sb.fhirBaseUrl}/Observation/abc`, { token: t, method: 'DELETE' })).status).toBe(401);
    expect((await http(`${sb.fhirBaseUrl}/Observation?identifier=x`, { token: t })).status).toBe(401);
    const fresh = await token('system/Observation.cruds');
    expect((await http(`${sb.fhirBaseUrl}/Observation?identifier=x`, { token: fresh })).status).toBe(200);
  });
});
