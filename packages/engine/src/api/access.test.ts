/**
 * Every route checks role and tenant scope: this test enumerates the routes the API registered (so a new route
 * is covered the day it is added) and proves, for each, that a request without a key is 401, a key of a role not
 * allowed is 403, and a key limited to another tenant cannot read or act on the demo tenant's objects.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ApiRole } from '../store/index.js';
import { isConsoleRoute } from './console.js';
import { canaryObservation, startTestService, type TestService } from '../service/__fixtures__/service.js';

let t: TestService;
const keys = {} as Record<ApiRole | 'otherTenant' | 'revoked', string>;
let commandId = '';
let keyId = '';

beforeAll(async () => {
  t = await startTestService();
  for (const role of ['submitter', 'operator', 'viewer', 'admin'] as const) {
    const res = await t.api('POST', '/v1/api-keys', { body: { name: `test-${role}`, role, tenants: null } });
    expect(res.status).toBe(201);
    keys[role] = res.body.key;
  }
  keys.otherTenant = (await t.api('POST', '/v1/api-keys', { body: { name: 'other', role: 'admin', tenants: ['other'] } })).body.key;
  const revoked = await t.api('POST', '/v1/api-keys', { body: { name: 'gone', role: 'admin' } });
  keys.revoked = revoked.body.key;
  keyId = revoked.body.id;
  expect((await t.api('DELETE', `/v1/api-keys/${keyId}`)).status).toBe(204);
  const submitted = await t.api('POST', '/v1/commands', {
    key: keys.submitter,
    body: { tenantId: 'demo', context: 'system', action: 'create', resourceType: 'Observation', resource: canaryObservation('CANARY-ACC-1'), businessKey: 'acc:1' },
  });
  commandId = submitted.body.id;
  await t.waitFor(commandId, (s) => s === 'verified');
}, 60_000);

afterAll(async () => {
  await t?.close();
});

/** A concrete path for a route pattern, naming the demo tenant's objects. */
const concrete = (url: string): string =>
  url
    .replace('/v1/tenants/:id', '/v1/tenants/demo')
    .replace('/v1/commands/:id', `/v1/commands/${commandId}`)
    .replace('/v1/exceptions/:id', `/v1/exceptions/${commandId}`)
    .replace('/v1/api-keys/:id', '/v1/api-keys/nonexistent');

const bodyFor = (method: string, url: string): unknown => {
  if (method === 'GET' || method === 'DELETE') return undefined;
  if (url === '/v1/commands') return { tenantId: 'demo', context: 'system', action: 'create', resourceType: 'Observation', resource: canaryObservation('CANARY-ACC-2'), businessKey: `acc:${Math.random()}` };
  if (url === '/v1/tenants') return { id: 'demo', fhirBaseUrl: 'https://ehr.example.test/fhir', environment: 'sandbox', authMethod: 'client-secret', clientId: 'c', scopes: 'system/*.rs', clientSecret: 's' };
  if (url === '/v1/api-keys') return { name: 'x', role: 'viewer' };
  if (url === '/v1/tenants/:id') return { scopes: 'system/*.cruds' };
  return { reason: 'access test' };
};

describe('route access', () => {
  it('every route declares its access, and only health, readiness and the docs are public', () => {
    const routes = t.svc.app.tetherRoutes;
    expect(routes.length).toBeGreaterThan(15);
    const open = routes.filter((r) => 'public' in r.access).map((r) => r.url);
    // The console's static files are public too (they hold no data; the API behind them needs a key).
    expect(open.filter((u) => !(u === '/healthz' || u === '/readyz' || u.startsWith('/docs') || isConsoleRoute(u)))).toEqual([]);
  });

  it('without a key, with a malformed, unknown or revoked key: 401 with an OperationOutcome', async () => {
    for (const route of t.svc.app.tetherRoutes.filter((r) => !('public' in r.access))) {
      for (const key of [null, 'not-a-key', 'tk_abcdefgh_' + 'A'.repeat(43), keys.revoked]) {
        const res = await t.api(route.method, concrete(route.url), { key, body: bodyFor(route.method, route.url) });
        expect({ route: `${route.method} ${route.url}`, key: key?.slice(0, 6) ?? null, status: res.status }).toEqual({ route: `${route.method} ${route.url}`, key: key?.slice(0, 6) ?? null, status: 401 });
        expect(res.body.resourceType).toBe('OperationOutcome');
      }
    }
  });

  it('a role that is not allowed gets 403, an allowed role gets past the check', async () => {
    for (const route of t.svc.app.tetherRoutes.filter((r) => !('public' in r.access))) {
      const allowed = 'roles' in route.access ? route.access.roles : [];
      for (const role of ['submitter', 'operator', 'viewer', 'admin'] as const) {
        const res = await t.api(route.method, concrete(route.url), { key: keys[role], body: bodyFor(route.method, route.url) });
        const label = `${role} ${route.method} ${route.url}`;
        if (allowed.includes(role)) expect({ label, denied: res.status === 401 || res.status === 403 }).toEqual({ label, denied: false });
        else expect({ label, status: res.status }).toEqual({ label, status: 403 });
      }
    }
  });

  it("a key limited to another tenant never sees or touches the demo tenant's objects", async () => {
    for (const route of t.svc.app.tetherRoutes.filter((r) => !('public' in r.access) && !r.url.startsWith('/v1/api-keys') && r.url !== '/v1/me' && r.url !== '/metrics')) {
      const res = await t.api(route.method, concrete(route.url), { key: keys.otherTenant, body: bodyFor(route.method, route.url) });
      const label = `${route.method} ${route.url}`;
      if (route.method === 'GET' && ['/v1/commands', '/v1/exceptions', '/v1/tenants', '/v1/stats'].includes(route.url)) {
        expect({ label, status: res.status }).toEqual({ label, status: 200 });
        expect(JSON.stringify(res.body)).not.toContain('demo');
      } else if (route.method === 'POST' && route.url === '/v1/tenants') {
        // Registering a tenant outside the key's scope (the id is in the body, not the path).
        expect({ label, status: res.status }).toEqual({ label, status: 403 });
      } else {
        expect({ label, denied: [403, 404].includes(res.status) }).toEqual({ label, denied: true });
      }
    }
  });

  it("a key limited to the demo tenant works on the demo tenant's objects", async () => {
    const scoped = (await t.api('POST', '/v1/api-keys', { body: { name: 'demo-only', role: 'operator', tenants: ['demo'] } })).body.key;
    expect((await t.api('GET', `/v1/commands/${commandId}`, { key: scoped })).status).toBe(200);
    expect((await t.api('GET', '/v1/tenants/demo/health', { key: scoped })).status).toBe(200);
    expect((await t.api('GET', '/v1/audit?tenant=demo', { key: scoped })).status).toBe(200);
    expect((await t.api('GET', '/v1/audit', { key: scoped })).status).toBe(403);
    const list = await t.api('GET', '/v1/commands', { key: scoped });
    expect(list.body.commands.map((c: { id: string }) => c.id)).toContain(commandId);
  });

  it('masks PHI for viewers and submitters; operators and admins see the resource', async () => {
    for (const role of ['viewer', 'submitter'] as const) {
      const res = await t.api('GET', `/v1/commands/${commandId}`, { key: keys[role] });
      expect(res.status).toBe(200);
      expect(res.body.command.resource).toEqual({ resourceType: 'Observation', masked: true });
      expect(res.body.command.businessKey).toMatch(/^h:[0-9a-f]{16}$/);
      expect(JSON.stringify(res.body)).not.toContain('CANARY-ACC-1');
    }
    const op = await t.api('GET', `/v1/commands/${commandId}`, { key: keys.operator });
    expect(op.body.command.businessKey).toBe('acc:1');
    expect(JSON.stringify(op.body.command.resource)).toContain('CANARY-ACC-1');
  });

  it('never returns key hashes or secrets after creation', async () => {
    const list = await t.api('GET', '/v1/api-keys');
    expect(list.status).toBe(200);
    const text = JSON.stringify(list.body);
    expect(text).not.toContain('keyHash');
    for (const key of Object.values(keys)) expect(text).not.toContain(key);
    expect(list.body.keys.find((k: { id: string }) => k.id === keyId).revokedAt).toEqual(expect.any(Number));
  });
});
