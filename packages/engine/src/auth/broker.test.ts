import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { scriptedAuthorize, startSandbox, type Sandbox } from '@tether/sandbox';
import { createStore } from '../store/index.js';
import type { Store } from '../store/types.js';
import { TokenBroker, type AuthEventMap, type TokenBrokerOptions } from './broker.js';
import { generateMasterKey, Keyring, parseMasterKey } from './keyring.js';
import { TenantService } from './tenants.js';

interface Rig {
  sandbox: Sandbox;
  store: Store;
  keyring: Keyring;
  broker: TokenBroker;
  tenants: TenantService;
  events: { name: keyof AuthEventMap; payload: unknown }[];
  tokenRequests(): Promise<number>;
}

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function rig(options: {
  scope?: string;
  tokenTtlSeconds?: number;
  refreshTokenMode?: 'rotate' | 'keep' | 'single-use';
  broker?: Partial<TokenBrokerOptions>;
  extraClients?: Record<string, unknown>[];
} = {}): Promise<Rig & { privateJwk: Record<string, unknown> }> {
  const { exportJWK, generateKeyPair } = await import('jose');
  const { publicKey, privateKey } = await generateKeyPair('RS384', { extractable: true });
  const kid = 'svc-key-1';
  const scope = options.scope ?? 'system/Patient.cruds system/Observation.cruds';
  const registration = { client_id: 'svc', scope, jwks: { keys: [{ ...(await exportJWK(publicKey)), kid, alg: 'RS384', use: 'sig' }] } };
  const sandbox = await startSandbox({
    auth: true,
    clients: [registration, ...((options.extraClients ?? []) as never[])],
    tokenTtlSeconds: options.tokenTtlSeconds ?? 300,
    refreshTokenMode: options.refreshTokenMode ?? 'rotate',
  });
  cleanups.push(() => sandbox.close());
  const store = await createStore({ kind: 'sqlite', path: ':memory:' });
  await store.migrate();
  cleanups.push(() => store.close());
  const keyring = new Keyring(parseMasterKey(generateMasterKey()));
  const broker = new TokenBroker({ store, keyring, ...(options.broker ?? {}) });
  const tenants = new TenantService({ store, keyring, broker });
  const events: Rig['events'] = [];
  for (const name of ['token:refreshed', 'token:refresh-failed', 'tenant:paused', 'tenant:resumed', 'auth:clock-skew'] as const) {
    broker.events.on(name, (payload) => events.push({ name, payload }));
  }
  const privateJwk = { ...(await exportJWK(privateKey)), kid, alg: 'RS384' };
  await tenants.register({
    id: 'clinic-a',
    fhirBaseUrl: sandbox.fhirBaseUrl,
    environment: 'sandbox',
    authMethod: 'backend-services',
    clientId: 'svc',
    scopes: scope,
    privateJwk,
  });
  return {
    sandbox,
    store,
    keyring,
    broker,
    tenants,
    events,
    privateJwk,
    tokenRequests: async () => ((await (await fetch(`${sandbox.url}/_admin/auth/stats`)).json()) as { tokenRequests: number }).tokenRequests,
  };
}

async function fhirStatus(sb: Sandbox, token: string, path = 'Patient'): Promise<number> {
  return (await fetch(`${sb.fhirBaseUrl}/${path}`, { headers: { authorization: `Bearer ${token}` } })).status;
}

describe('SMART backend services', () => {
  it('discovers the token endpoint, gets a token the FHIR server accepts, and caches it', async () => {
    const r = await rig();
    const token = await r.broker.getAccessToken('clinic-a', 'system');
    expect(await fhirStatus(r.sandbox, token)).toBe(200);
    expect(await r.broker.getAccessToken('clinic-a', 'system')).toBe(token);
    expect(await r.tokenRequests()).toBe(1);
    expect((await r.tenants.get('clinic-a')).tokenEndpoint).toBe(r.sandbox.tokenEndpoint);
    expect(r.events.map((e) => e.name)).toEqual(['token:refreshed']);
  });

  it('single-flight: 200 concurrent callers cause one token request', async () => {
    const r = await rig();
    const tokens = await Promise.all(Array.from({ length: 200 }, () => r.broker.getAccessToken('clinic-a', 'system')));
    expect(new Set(tokens).size).toBe(1);
    expect(await r.tokenRequests()).toBe(1);
  });

  it('a second broker on the same store reuses the stored token instead of requesting one', async () => {
    const r = await rig();
    const token = await r.broker.getAccessToken('clinic-a', 'system');
    const other = new TokenBroker({ store: r.store, keyring: r.keyring });
    expect(await other.getAccessToken('clinic-a', 'system')).toBe(token);
    expect(await r.tokenRequests()).toBe(1);
  });

  // These two use the real clock: moving only the broker's clock would look like clock skew to the server.
  it('refreshes proactively inside the window while still serving the current token', async () => {
    const r = await rig({ tokenTtlSeconds: 3, broker: { refreshWindowMinSeconds: 0, refreshWindowFraction: 0.5, expirySafetyMs: 100 } });
    const first = await r.broker.getAccessToken('clinic-a', 'system');
    // 3 s lifetime, window 1.5 s: after 1.7 s the token is inside the window but still valid.
    await new Promise((resolve) => setTimeout(resolve, 1_700));
    const refreshed = new Promise<void>((resolve) => r.broker.events.on('token:refreshed', (p) => p.reason === 'proactive' && resolve()));
    expect(await r.broker.getAccessToken('clinic-a', 'system')).toBe(first);
    await refreshed;
    const second = await r.broker.getAccessToken('clinic-a', 'system');
    expect(second).not.toBe(first);
    expect(await r.tokenRequests()).toBe(2);
    expect(r.events.filter((e) => e.name === 'token:refreshed').map((e) => (e.payload as { reason: string }).reason)).toEqual(['initial', 'proactive']);
  });

  it('refreshes an expired token before answering', async () => {
    const r = await rig({ tokenTtlSeconds: 1, broker: { refreshWindowMinSeconds: 0, refreshWindowFraction: 0, expirySafetyMs: 0 } });
    const first = await r.broker.getAccessToken('clinic-a', 'system');
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    const second = await r.broker.getAccessToken('clinic-a', 'system');
    expect(second).not.toBe(first);
    expect(await fhirStatus(r.sandbox, second)).toBe(200);
    expect(await r.tokenRequests()).toBe(2);
    expect(r.events.at(-1)).toMatchObject({ name: 'token:refreshed', payload: { reason: 'expired' } });
  });

  it('reactive refresh after a 401 happens once, whoever asks', async () => {
    const r = await rig();
    const first = await r.broker.getAccessToken('clinic-a', 'system');
    const [a, b] = await Promise.all([
      r.broker.refreshAfterUnauthorized('clinic-a', 'system', first),
      r.broker.refreshAfterUnauthorized('clinic-a', 'system', first),
    ]);
    expect(a).toBe(b);
    expect(a).not.toBe(first);
    expect(await r.broker.refreshAfterUnauthorized('clinic-a', 'system', first)).toBe(a);
    expect(await r.tokenRequests()).toBe(2);
  });

  it('refuses work that needs a scope the tenant was not granted, naming the scope', async () => {
    const r = await rig({ scope: 'system/Patient.rs' });
    await expect(r.broker.assertScope('clinic-a', 'system', 'Patient', 'read')).resolves.toBeUndefined();
    await expect(r.broker.assertScope('clinic-a', 'system', 'Observation', 'create')).rejects.toMatchObject({
      code: 'EHR_SCOPE_MISSING',
      details: { requiredScope: 'system/Observation.c' },
    });
    expect(r.broker.can('clinic-a', 'system', 'Patient', 'search-type')).toBe(true);
    expect(r.broker.can('clinic-a', 'system', 'Patient', 'update')).toBe(false);
  });

  it('keeps tokens and keys encrypted at rest', async () => {
    const r = await rig();
    const token = await r.broker.getAccessToken('clinic-a', 'system');
    const tenant = await r.store.tenants.get('clinic-a');
    const row = await r.store.tokens.get('clinic-a', 'system');
    const bytes = Buffer.concat([tenant?.credentialsCiphertext ?? Buffer.alloc(0), row?.accessTokenCiphertext ?? Buffer.alloc(0)]);
    expect(bytes.length).toBeGreaterThan(100);
    expect(bytes.includes(Buffer.from(token))).toBe(false);
    expect(bytes.includes(Buffer.from(String(r.privateJwk['d'])))).toBe(false);
    const view = await r.tenants.get('clinic-a');
    expect(JSON.stringify(view)).not.toContain(String(r.privateJwk['d']));
    expect(view.hasPrivateKey).toBe(true);
  });
});

describe('client secret (HTTP Basic)', () => {
  it('gets a system token with client_credentials and a Basic-authenticated secret', async () => {
    const secretClient = { client_id: 'basic-app', client_secret: 'S3cret:with/odd chars', scope: 'system/Patient.rs' };
    const r = await rig({ extraClients: [secretClient] });
    await r.tenants.register({
      id: 'accuro-like',
      vendor: 'accuro',
      fhirBaseUrl: r.sandbox.fhirBaseUrl,
      environment: 'sandbox',
      authMethod: 'client-secret',
      clientId: 'basic-app',
      scopes: 'system/Patient.rs',
      clientSecret: secretClient.client_secret,
    });
    const token = await r.broker.getAccessToken('accuro-like', 'system');
    expect(await fhirStatus(r.sandbox, token)).toBe(200);
    const view = await r.tenants.get('accuro-like');
    expect(view.hasClientSecret).toBe(true);
    expect(JSON.stringify(view)).not.toContain('S3cret');
    const row = await r.store.tenants.get('accuro-like');
    expect(row?.credentialsCiphertext?.includes(Buffer.from('S3cret'))).toBe(false);
  });
});

describe('failure classes', () => {
  it('refused credentials pause the tenant: an event, and no further token requests until resumed', async () => {
    const r = await rig();
    const { exportJWK, generateKeyPair } = await import('jose');
    const stranger = await generateKeyPair('ES384', { extractable: true });
    await r.tenants.register({
      id: 'clinic-b',
      fhirBaseUrl: r.sandbox.fhirBaseUrl,
      environment: 'sandbox',
      authMethod: 'backend-services',
      clientId: 'svc',
      scopes: 'system/Patient.rs',
      privateJwk: { ...(await exportJWK(stranger.privateKey)), kid: 'svc-key-1', alg: 'ES384' },
    });
    await expect(r.broker.getAccessToken('clinic-b', 'system')).rejects.toMatchObject({ code: 'AUTH_GRANT_INVALID' });
    expect((await r.tenants.get('clinic-b')).state).toBe('auth_paused');
    expect(r.events.some((e) => e.name === 'tenant:paused' && (e.payload as { tenantId: string }).tenantId === 'clinic-b')).toBe(true);
    const before = await r.tokenRequests();
    for (let i = 0; i < 20; i++) {
      await expect(r.broker.getAccessToken('clinic-b', 'system')).rejects.toMatchObject({ code: 'AUTH_TENANT_PAUSED' });
    }
    expect(await r.tokenRequests()).toBe(before);
    // Other tenants are unaffected.
    expect(await fhirStatus(r.sandbox, await r.broker.getAccessToken('clinic-a', 'system'))).toBe(200);
    await r.tenants.resume('clinic-b');
    await expect(r.broker.getAccessToken('clinic-b', 'system')).rejects.toMatchObject({ code: 'AUTH_GRANT_INVALID' });
    expect(await r.tokenRequests()).toBe(before + 2);
  });

  it('an unreachable token endpoint backs off instead of storming, and the tenant stays active', async () => {
    const r = await rig({ broker: { backoffBaseMs: 60_000, random: () => 0.5 } });
    await r.store.tenants.update('clinic-a', { tokenEndpoint: 'http://127.0.0.1:9/oauth/token' });
    await expect(r.broker.getAccessToken('clinic-a', 'system')).rejects.toMatchObject({ code: 'AUTH_TOKEN_REQUEST_FAILED' });
    const failed = r.events.filter((e) => e.name === 'token:refresh-failed');
    expect(failed).toHaveLength(1);
    expect((failed[0]?.payload as { retryInMs: number }).retryInMs).toBe(30_000);
    await expect(r.broker.getAccessToken('clinic-a', 'system')).rejects.toMatchObject({ code: 'AUTH_TOKEN_REQUEST_FAILED', details: { retryInMs: expect.any(Number) } });
    expect(r.events.filter((e) => e.name === 'token:refresh-failed')).toHaveLength(1);
    expect((await r.tenants.get('clinic-a')).state).toBe('active');
  });

  it('honours Retry-After from a failing token endpoint', async () => {
    const server: Server = createServer((_req, res) => {
      res.writeHead(503, { 'retry-after': '7', 'content-type': 'application/json' });
      res.end('{"error":"temporarily_unavailable"}');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
    const r = await rig({ broker: { random: () => 0 } });
    await r.store.tenants.update('clinic-a', { tokenEndpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}/token` });
    await expect(r.broker.getAccessToken('clinic-a', 'system')).rejects.toMatchObject({ code: 'AUTH_TOKEN_REQUEST_FAILED' });
    const failed = r.events.find((e) => e.name === 'token:refresh-failed');
    expect((failed?.payload as { retryInMs: number }).retryInMs).toBe(7_000);
  });

  it('detects clock skew from the server Date header and dates assertions accordingly', async () => {
    // The local clock runs 10 minutes ahead: its first assertion looks 10 minutes in the future to the server.
    const r = await rig({ broker: { clock: () => Date.now() + 600_000 } });
    const token = await r.broker.getAccessToken('clinic-a', 'system');
    expect(await fhirStatus(r.sandbox, token)).toBe(200);
    const skew = r.events.find((e) => e.name === 'auth:clock-skew');
    expect((skew?.payload as { skewMs: number }).skewMs).toBeLessThan(-590_000);
    expect((await r.tenants.get('clinic-a')).state).toBe('active');
  });
});

describe('authorization code + PKCE with refresh', () => {
  async function patientRig(mode: 'rotate' | 'keep' | 'single-use') {
    const publicClient = {
      client_id: 'patient-app',
      scope: 'patient/Patient.rs patient/Observation.rs launch/patient offline_access openid fhirUser',
      redirect_uris: ['http://127.0.0.1/callback'],
      token_endpoint_auth_method: 'none',
    };
    let now = Date.now();
    const r = await rig({ refreshTokenMode: mode, extraClients: [publicClient], broker: { clock: () => now } });
    await r.tenants.register({
      id: 'patient-portal',
      fhirBaseUrl: r.sandbox.fhirBaseUrl,
      environment: 'sandbox',
      authMethod: 'authorization-code',
      clientId: 'patient-app',
      scopes: publicClient.scope,
    });
    const begin = await r.broker.beginAuthorization({ tenantId: 'patient-portal', redirectUri: 'http://127.0.0.1/callback', loginHint: 'Patient/p-77' });
    expect(begin.authorizationUrl).toContain('code_challenge_method=S256');
    const result = await scriptedAuthorize(begin.authorizationUrl);
    if (result.outcome !== 'redirect') throw new Error('the authorization did not redirect back');
    expect(result.state).toBe(begin.state);
    const done = await r.broker.completeAuthorization({
      tenantId: 'patient-portal',
      context: 'patient:p-77',
      code: result.code as string,
      codeVerifier: begin.codeVerifier,
      redirectUri: 'http://127.0.0.1/callback',
    });
    return { ...r, done, advance: (ms: number) => (now += ms) };
  }

  it('stores the grant, refreshes with rotation, and commits each rotated refresh token', async () => {
    const r = await patientRig('single-use');
    expect(r.done.patient).toBe('p-77');
    const first = await r.broker.getAccessToken('patient-portal', 'patient:p-77');
    expect(await fhirStatus(r.sandbox, first, 'Observation')).toBe(200);
    const rowBefore = await r.store.tokens.get('patient-portal', 'patient:p-77');
    r.advance(301_000);
    const second = await r.broker.getAccessToken('patient-portal', 'patient:p-77');
    const rowAfter = await r.store.tokens.get('patient-portal', 'patient:p-77');
    expect(second).not.toBe(first);
    expect(rowAfter?.version).toBe((rowBefore?.version ?? 0) + 1);
    expect(rowAfter?.refreshTokenCiphertext?.equals(rowBefore?.refreshTokenCiphertext ?? Buffer.alloc(0))).toBe(false);
    // With single-use refresh tokens, reusing the old one would revoke the grant: a third refresh still works,
    // so the broker used the rotated one it committed.
    r.advance(301_000);
    const third = await r.broker.getAccessToken('patient-portal', 'patient:p-77');
    expect(await fhirStatus(r.sandbox, third, 'Observation')).toBe(200);
  });

  it('a revoked grant drops that context only: no retry loop, the tenant stays active', async () => {
    const r = await patientRig('rotate');
    await r.broker.getAccessToken('patient-portal', 'patient:p-77');
    const row = await r.store.tokens.get('patient-portal', 'patient:p-77');
    const tenant = await r.store.tenants.get('patient-portal');
    const refresh = r.keyring.decrypt('patient-portal', tenant?.dataKeyWrapped as Buffer, 'refresh-token:patient:p-77', row?.refreshTokenCiphertext as Buffer);
    const revoke = await fetch(`${r.sandbox.url}/oauth/revoke`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token: refresh, token_type_hint: 'refresh_token', client_id: 'patient-app' }),
    });
    expect(revoke.status).toBe(200);
    r.advance(301_000);
    await expect(r.broker.getAccessToken('patient-portal', 'patient:p-77')).rejects.toMatchObject({ code: 'AUTH_GRANT_INVALID' });
    const before = await r.tokenRequests();
    await expect(r.broker.getAccessToken('patient-portal', 'patient:p-77')).rejects.toMatchObject({ code: 'AUTH_GRANT_INVALID' });
    expect(await r.tokenRequests()).toBe(before);
    expect((await r.tenants.get('patient-portal')).state).toBe('active');
  });
});
