import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { isTetherError } from '@tether/core';
import { SignJWT, decodeJwt, exportJWK, generateKeyPair } from 'jose';
import type { CryptoKey, JWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAuthorizationServer, parseSandboxClients } from './authorization-server.js';
import type { AuthServerLogger, AuthorizationServerOptions } from './authorization-server.js';
import { scriptedAuthorize } from './scripted-authorize.js';
import type { SandboxAuthServer, SandboxClientConfig } from './types.js';

const CLIENT_SECRET = 'canary-client-secret-7f3a';
const BACKEND_SCOPES = 'system/Patient.read system/Observation.cruds system/*.rs';

interface KeyPair {
  readonly alg: 'RS384' | 'ES384';
  readonly privateKey: CryptoKey;
  readonly publicJwk: JWK;
}

async function keyPair(alg: 'RS384' | 'ES384', kid: string): Promise<KeyPair> {
  const { privateKey, publicKey } = await generateKeyPair(alg);
  return { alg, privateKey, publicJwk: { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' } };
}

/** A node:http server on 127.0.0.1:0 that mounts the auth server under /oauth and serves JWKS documents. */
interface Rig {
  readonly base: string;
  readonly fhirBase: string;
  readonly auth: SandboxAuthServer;
  readonly warnings: string[];
  close(): Promise<void>;
}

async function startRig(
  makeClients: (base: string) => SandboxClientConfig[],
  overrides: Partial<AuthorizationServerOptions> = {},
  jwksDocuments: Record<string, unknown> = {},
): Promise<Rig> {
  // The auth server needs the port in its issuer, so it is created after listen and mounted through this slot.
  const mounted: { auth?: SandboxAuthServer } = {};
  const server: Server = createServer((req, res) => {
    if (mounted.auth !== undefined && req.url?.startsWith('/oauth') === true) {
      mounted.auth.handle(req, res);
      return;
    }
    const doc = jwksDocuments[req.url ?? ''];
    res.writeHead(doc === undefined ? 404 : 200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(doc ?? {}));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const warnings: string[] = [];
  const logger: AuthServerLogger = { warn: (fields, message) => warnings.push(`${message} ${JSON.stringify(fields)}`) };
  const started = await createAuthorizationServer({ issuer: `${base}/oauth`, clients: makeClients(base), logger, ...overrides });
  mounted.auth = started;
  return {
    base,
    fhirBase: `${base}/fhir/R4`,
    auth: started,
    warnings,
    async close() {
      await started.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

interface TokenResponse {
  readonly status: number;
  readonly body: Record<string, unknown>;
}

async function post(url: string, form: Record<string, string>, headers: Record<string, string> = {}): Promise<TokenResponse> {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json', ...headers },
    body: new URLSearchParams(form),
  });
  const text = await res.text();
  return { status: res.status, body: text === '' ? {} : (JSON.parse(text) as Record<string, unknown>) };
}

function basic(clientId: string, secret: string): Record<string, string> {
  return { authorization: `Basic ${Buffer.from(`${encodeURIComponent(clientId)}:${encodeURIComponent(secret)}`).toString('base64')}` };
}

async function assertion(
  key: KeyPair,
  clientId: string,
  aud: string,
  { jti = randomUUID(), expiresInSeconds = 240 }: { jti?: string; expiresInSeconds?: number } = {},
): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({})
    .setProtectedHeader({ alg: key.alg, kid: key.publicJwk.kid, typ: 'JWT' })
    .setIssuer(clientId)
    .setSubject(clientId)
    .setAudience(aud)
    .setJti(jti)
    .setIssuedAt(now)
    .setExpirationTime(now + expiresInSeconds)
    .sign(key.privateKey);
}

async function clientCredentials(rig: Rig, key: KeyPair, clientId: string, scope: string, jwt?: string): Promise<TokenResponse> {
  return post(rig.auth.tokenEndpoint, {
    grant_type: 'client_credentials',
    scope,
    client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
    client_assertion: jwt ?? (await assertion(key, clientId, rig.auth.tokenEndpoint)),
  });
}

interface AuthorizeInput {
  readonly clientId: string;
  readonly scope: string;
  readonly loginHint?: string;
  readonly pkce?: boolean;
}

/** Runs /authorize through the auto-approved interaction; returns the redirect parameters and the PKCE verifier. */
async function authorize(rig: Rig, input: AuthorizeInput) {
  const verifier = randomBytes(32).toString('base64url');
  const state = randomBytes(8).toString('hex');
  const url = new URL(`${rig.auth.issuer}/authorize`);
  url.searchParams.set('response_type', 'code');
  url.searchParams.set('client_id', input.clientId);
  url.searchParams.set('redirect_uri', `${rig.base}/callback`);
  url.searchParams.set('scope', input.scope);
  url.searchParams.set('state', state);
  url.searchParams.set('aud', rig.fhirBase);
  if (input.pkce !== false) {
    url.searchParams.set('code_challenge', createHash('sha256').update(verifier).digest('base64url'));
    url.searchParams.set('code_challenge_method', 'S256');
  }
  if (input.loginHint !== undefined) url.searchParams.set('login_hint', input.loginHint);
  const result = await scriptedAuthorize(url);
  if (result.outcome !== 'redirect') throw new Error(`authorization stopped: ${result.status} ${result.body}`);
  expect(result.state).toBe(state);
  return { ...result, verifier };
}

async function exchangeCode(rig: Rig, clientId: string, code: string, verifier: string, auth: 'public' | 'secret'): Promise<TokenResponse> {
  const form = { grant_type: 'authorization_code', code, redirect_uri: `${rig.base}/callback`, code_verifier: verifier };
  return auth === 'secret' ? post(rig.auth.tokenEndpoint, form, basic(clientId, CLIENT_SECRET)) : post(rig.auth.tokenEndpoint, { ...form, client_id: clientId });
}

async function refresh(rig: Rig, clientId: string, refreshToken: string): Promise<TokenResponse> {
  return post(rig.auth.tokenEndpoint, { grant_type: 'refresh_token', refresh_token: refreshToken }, basic(clientId, CLIENT_SECRET));
}

const PROVIDER_SCOPE = 'openid fhirUser offline_access user/Observation.rs user/Patient.rs';

/** Gets a refresh token for the confidential provider app (authorization code + PKCE). */
async function providerLogin(rig: Rig): Promise<{ accessToken: string; refreshToken: string }> {
  const { code, verifier } = await authorize(rig, { clientId: 'provider-app', scope: PROVIDER_SCOPE });
  const res = await exchangeCode(rig, 'provider-app', code ?? '', verifier, 'secret');
  expect(res.status).toBe(200);
  return { accessToken: String(res.body.access_token), refreshToken: String(res.body.refresh_token) };
}

let rsKey: KeyPair;
let esKey: KeyPair;
let uriKey: KeyPair;

function clientsFor(base: string): SandboxClientConfig[] {
  return [
    { client_id: 'backend-rs', jwks: { keys: [rsKey.publicJwk] }, scope: BACKEND_SCOPES },
    { client_id: 'backend-es', jwks: { keys: [esKey.publicJwk] }, scope: BACKEND_SCOPES },
    { client_id: 'backend-uri', jwks_uri: `${base}/keys/backend-uri.json`, scope: 'system/Patient.rs' },
    { client_id: 'secret-client', client_secret: CLIENT_SECRET, scope: 'system/Patient.rs' },
    {
      client_id: 'provider-app',
      client_secret: CLIENT_SECRET,
      scope: `${PROVIDER_SCOPE} launch/patient patient/*.rs`,
      redirect_uris: [`${base}/callback`],
    },
    {
      client_id: 'patient-app',
      token_endpoint_auth_method: 'none',
      scope: 'openid fhirUser offline_access launch/patient patient/*.rs',
      redirect_uris: [`${base}/callback`],
    },
  ];
}

beforeAll(async () => {
  [rsKey, esKey, uriKey] = await Promise.all([keyPair('RS384', 'rs-1'), keyPair('ES384', 'es-1'), keyPair('RS384', 'uri-1')]);
});

describe('sandbox authorization server', () => {
  let rig: Rig;

  beforeAll(async () => {
    rig = await startRig(clientsFor, { defaultPractitionerId: 'dr-1', defaultPatientId: 'pat-default' }, {
      '/keys/backend-uri.json': { keys: [uriKey.publicJwk] },
    });
  });

  afterAll(async () => {
    // No server errors, and nothing secret reached the log sink.
    expect(rig.warnings).toEqual([]);
    await rig.close();
  });

  describe('client_credentials with private_key_jwt', () => {
    it.each([
      ['RS384', () => rsKey, 'backend-rs'],
      ['ES384', () => esKey, 'backend-es'],
    ] as const)('issues a Bearer token for an %s assertion whose aud is the token endpoint', async (_alg, key, clientId) => {
      const before = Math.floor(Date.now() / 1000);
      const res = await clientCredentials(rig, key(), clientId, 'system/Patient.read system/Observation.cruds');
      expect(res.status).toBe(200);
      expect(res.body).toMatchObject({ token_type: 'Bearer', expires_in: 300, scope: 'system/Patient.read system/Observation.cruds' });
      expect(typeof res.body.access_token).toBe('string');

      const verified = await rig.auth.verifyAccessToken(String(res.body.access_token));
      expect(verified?.clientId).toBe(clientId);
      expect(verified?.scope).toBe('system/Patient.read system/Observation.cruds');
      expect(verified?.expiresAt).toBeGreaterThanOrEqual(before + 300);
      expect(verified?.expiresAt).toBeLessThanOrEqual(Math.floor(Date.now() / 1000) + 300);
      expect(verified?.patient).toBeUndefined();
    });

    it('accepts the issuer as aud too, and rejects a foreign aud', async () => {
      expect((await clientCredentials(rig, rsKey, 'backend-rs', 'system/*.rs', await assertion(rsKey, 'backend-rs', rig.auth.issuer))).status).toBe(200);
      const foreign = await clientCredentials(rig, rsKey, 'backend-rs', 'system/*.rs', await assertion(rsKey, 'backend-rs', 'https://other.example/token'));
      expect(foreign.status).toBe(401);
      expect(foreign.body.error).toBe('invalid_client');
    });

    it('rejects a reused jti with invalid_client', async () => {
      const jwt = await assertion(rsKey, 'backend-rs', rig.auth.tokenEndpoint, { jti: 'jti-reused-once' });
      expect((await clientCredentials(rig, rsKey, 'backend-rs', 'system/*.rs', jwt)).status).toBe(200);
      const again = await clientCredentials(rig, rsKey, 'backend-rs', 'system/*.rs', jwt);
      expect(again.status).toBe(401);
      expect(again.body.error).toBe('invalid_client');
      expect(again.body.error_description).toContain('must only be used once');
      // The same jti in a freshly signed assertion is still a replay.
      const resigned = await assertion(rsKey, 'backend-rs', rig.auth.tokenEndpoint, { jti: 'jti-reused-once' });
      expect((await clientCredentials(rig, rsKey, 'backend-rs', 'system/*.rs', resigned)).body.error).toBe('invalid_client');
    });

    it('rejects an assertion whose exp is more than 5 minutes ahead, without burning its jti', async () => {
      const jti = randomUUID();
      const far = await assertion(esKey, 'backend-es', rig.auth.tokenEndpoint, { jti, expiresInSeconds: 600 });
      const res = await clientCredentials(rig, esKey, 'backend-es', 'system/*.rs', far);
      expect(res.status).toBe(401);
      expect(res.body.error).toBe('invalid_client');
      expect(res.body.error_description).toContain('at most 300 seconds in the future');
      // exp exactly 5 minutes ahead is fine, and the rejected assertion did not consume its jti.
      const near = await assertion(esKey, 'backend-es', rig.auth.tokenEndpoint, { jti, expiresInSeconds: 300 });
      expect((await clientCredentials(rig, esKey, 'backend-es', 'system/*.rs', near)).status).toBe(200);
    });

    it('rejects an assertion signed by another key', async () => {
      const forged = await assertion({ ...esKey, publicJwk: rsKey.publicJwk }, 'backend-rs', rig.auth.tokenEndpoint);
      const res = await clientCredentials(rig, rsKey, 'backend-rs', 'system/*.rs', forged);
      expect(res.body.error).toBe('invalid_client');
    });

    it('answers invalid_scope for a scope the client may not have, and for no scope at all', async () => {
      const res = await clientCredentials(rig, rsKey, 'backend-rs', 'system/Patient.read system/Encounter.cruds');
      expect(res.status).toBe(400);
      expect(res.body.error).toBe('invalid_scope');
      expect(res.body.scope).toBe('system/Encounter.cruds');
      const none = await post(rig.auth.tokenEndpoint, {
        grant_type: 'client_credentials',
        client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
        client_assertion: await assertion(rsKey, 'backend-rs', rig.auth.tokenEndpoint),
      });
      expect(none.body.error).toBe('invalid_scope');
    });

    it('grants arbitrary SMART scope strings', async () => {
      const res = await clientCredentials(rig, esKey, 'backend-es', 'system/*.rs system/Observation.cruds');
      expect(res.body.scope).toBe('system/*.rs system/Observation.cruds');
    });

    it('fetches keys from a jwks_uri', async () => {
      const res = await clientCredentials(rig, uriKey, 'backend-uri', 'system/Patient.rs');
      expect(res.status).toBe(200);
      expect(res.body.scope).toBe('system/Patient.rs');
    });
  });

  describe('client secrets', () => {
    it('accepts client_secret_basic and client_secret_post, and rejects a wrong secret', async () => {
      const viaBasic = await post(rig.auth.tokenEndpoint, { grant_type: 'client_credentials', scope: 'system/Patient.rs' }, basic('secret-client', CLIENT_SECRET));
      expect(viaBasic.status).toBe(200);
      expect(viaBasic.body.scope).toBe('system/Patient.rs');
      const viaPost = await post(rig.auth.tokenEndpoint, {
        grant_type: 'client_credentials',
        scope: 'system/Patient.rs',
        client_id: 'secret-client',
        client_secret: CLIENT_SECRET,
      });
      expect(viaPost.status).toBe(200);
      const wrong = await post(rig.auth.tokenEndpoint, { grant_type: 'client_credentials', scope: 'system/Patient.rs' }, basic('secret-client', 'nope'));
      expect(wrong.status).toBe(401);
      expect(wrong.body.error).toBe('invalid_client');
    });
  });

  describe('verifyAccessToken and revocation', () => {
    it('returns null for unknown tokens and for tokens revoked by the fault injector', async () => {
      expect(await rig.auth.verifyAccessToken('not-a-token')).toBeNull();
      expect(await rig.auth.verifyAccessToken('')).toBeNull();
      const token = String((await clientCredentials(rig, rsKey, 'backend-rs', 'system/*.rs')).body.access_token);
      expect(await rig.auth.verifyAccessToken(token)).not.toBeNull();
      await rig.auth.revokeAccessToken(token);
      expect(await rig.auth.verifyAccessToken(token)).toBeNull();
      await rig.auth.revokeAccessToken('unknown-token'); // no-op, no throw
    });

    it('revokes access tokens through the RFC 7009 endpoint', async () => {
      const issued = await post(rig.auth.tokenEndpoint, { grant_type: 'client_credentials', scope: 'system/Patient.rs' }, basic('secret-client', CLIENT_SECRET));
      const token = String(issued.body.access_token);
      expect(await rig.auth.verifyAccessToken(token)).not.toBeNull();
      const res = await post(`${rig.auth.issuer}/revoke`, { token, token_type_hint: 'access_token' }, basic('secret-client', CLIENT_SECRET));
      expect(res.status).toBe(200);
      expect(await rig.auth.verifyAccessToken(token)).toBeNull();
      // Unauthenticated revocation is refused.
      expect((await post(`${rig.auth.issuer}/revoke`, { token })).status).toBe(400);
    });

    it('revokes a whole grant when its refresh token is revoked', async () => {
      const { accessToken, refreshToken } = await providerLogin(rig);
      const res = await post(`${rig.auth.issuer}/revoke`, { token: refreshToken, token_type_hint: 'refresh_token' }, basic('provider-app', CLIENT_SECRET));
      expect(res.status).toBe(200);
      expect(await rig.auth.verifyAccessToken(accessToken)).toBeNull();
      expect((await refresh(rig, 'provider-app', refreshToken)).body.error).toBe('invalid_grant');
    });
  });

  describe('authorization code + PKCE', () => {
    it('patient context: a public app gets patient, fhirUser, an id token and a refresh token', async () => {
      const scope = 'openid fhirUser offline_access launch/patient patient/*.rs';
      const { code, verifier, error } = await authorize(rig, { clientId: 'patient-app', scope, loginHint: 'Patient/pat-123' });
      expect(error).toBeUndefined();
      const res = await exchangeCode(rig, 'patient-app', code ?? '', verifier, 'public');
      expect(res.status).toBe(200);
      expect(res.body).toMatchObject({ token_type: 'Bearer', expires_in: 300, patient: 'pat-123', fhirUser: `${rig.fhirBase}/Patient/pat-123` });
      expect(String(res.body.scope).split(' ').sort()).toEqual(scope.split(' ').sort());
      expect(typeof res.body.refresh_token).toBe('string');
      const idToken = decodeJwt(String(res.body.id_token));
      expect(idToken).toMatchObject({ sub: 'Patient/pat-123', fhirUser: `${rig.fhirBase}/Patient/pat-123`, aud: 'patient-app', iss: rig.auth.issuer });

      const verified = await rig.auth.verifyAccessToken(String(res.body.access_token));
      expect(verified).toMatchObject({ clientId: 'patient-app', patient: 'pat-123', fhirUser: 'Patient/pat-123' });
      expect(verified?.scope.split(' ')).toContain('patient/*.rs');
    });

    it('patient context without login_hint signs in the default patient', async () => {
      const { code, verifier } = await authorize(rig, { clientId: 'patient-app', scope: 'launch/patient patient/*.rs' });
      const res = await exchangeCode(rig, 'patient-app', code ?? '', verifier, 'public');
      expect(res.body.patient).toBe('pat-default');
      expect(res.body.fhirUser).toBeUndefined(); // not without the fhirUser scope
      expect(res.body.refresh_token).toBeUndefined(); // not without offline_access
    });

    it('provider context: the default practitioner, fhirUser, no patient unless launch/patient', async () => {
      const { code, verifier } = await authorize(rig, { clientId: 'provider-app', scope: PROVIDER_SCOPE });
      const res = await exchangeCode(rig, 'provider-app', code ?? '', verifier, 'secret');
      expect(res.status).toBe(200);
      expect(res.body.fhirUser).toBe(`${rig.fhirBase}/Practitioner/dr-1`);
      expect(res.body.patient).toBeUndefined();
      expect(decodeJwt(String(res.body.id_token)).fhirUser).toBe(`${rig.fhirBase}/Practitioner/dr-1`);
      expect(await rig.auth.verifyAccessToken(String(res.body.access_token))).toMatchObject({ fhirUser: 'Practitioner/dr-1', clientId: 'provider-app' });

      const withPatient = await authorize(rig, { clientId: 'provider-app', scope: 'openid fhirUser launch/patient patient/*.rs', loginHint: 'Practitioner/dr-9' });
      const res2 = await exchangeCode(rig, 'provider-app', withPatient.code ?? '', withPatient.verifier, 'secret');
      expect(res2.body).toMatchObject({ patient: 'pat-default', fhirUser: `${rig.fhirBase}/Practitioner/dr-9` });
    });

    it('requires PKCE with S256 and the right verifier', async () => {
      const noPkce = await authorize(rig, { clientId: 'provider-app', scope: 'user/Patient.rs', pkce: false });
      expect(noPkce.error).toBe('invalid_request');
      expect(noPkce.code).toBeUndefined();
      const { code } = await authorize(rig, { clientId: 'provider-app', scope: 'user/Patient.rs' });
      const res = await exchangeCode(rig, 'provider-app', code ?? '', randomBytes(32).toString('base64url'), 'secret');
      expect(res.body.error).toBe('invalid_grant');
    });

    it('redirects invalid_scope for a scope the client may not have', async () => {
      const res = await authorize(rig, { clientId: 'patient-app', scope: 'patient/*.rs user/Observation.rs' });
      expect(res.error).toBe('invalid_scope');
      expect(res.code).toBeUndefined();
    });

    it('rejects a malformed login_hint with an authorization error', async () => {
      const res = await authorize(rig, { clientId: 'provider-app', scope: 'user/Patient.rs', loginHint: 'Organization/1' });
      expect(res.error).toBe('login_required');
    });

    it('rejects an aud that is not the FHIR base URL', async () => {
      const url = new URL(`${rig.auth.issuer}/authorize`);
      for (const [k, v] of Object.entries({
        response_type: 'code',
        client_id: 'provider-app',
        redirect_uri: `${rig.base}/callback`,
        scope: 'user/Patient.rs',
        code_challenge: createHash('sha256').update('x'.repeat(43)).digest('base64url'),
        code_challenge_method: 'S256',
        aud: 'https://elsewhere.example/fhir',
      })) url.searchParams.set(k, v);
      const res = await scriptedAuthorize(url);
      expect(res.outcome === 'redirect' && res.error).toBe('invalid_request');
    });

    it('refuses an interaction without the cookies set by /authorize', async () => {
      const res = await fetch(`${rig.auth.issuer}/interaction/abc123`, { redirect: 'manual' });
      expect(res.status).toBe(400);
      expect(((await res.json()) as { error: string }).error).toBe('invalid_request');
    });
  });

  it('refresh mode rotate (default): a new refresh token each time; reuse is invalid_grant, the grant survives', async () => {
    const first = await providerLogin(rig);
    const r1 = await refresh(rig, 'provider-app', first.refreshToken);
    expect(r1.status).toBe(200);
    expect(r1.body.refresh_token).not.toBe(first.refreshToken);
    expect(String(r1.body.scope).split(' ').sort()).toEqual(PROVIDER_SCOPE.split(' ').sort());
    expect(r1.body.fhirUser).toBe(`${rig.fhirBase}/Practitioner/dr-1`);

    const reuse = await refresh(rig, 'provider-app', first.refreshToken);
    expect(reuse.status).toBe(400);
    expect(reuse.body.error).toBe('invalid_grant');
    // Other tokens of the grant stay valid.
    expect(await rig.auth.verifyAccessToken(first.accessToken)).not.toBeNull();
    expect(await rig.auth.verifyAccessToken(String(r1.body.access_token))).not.toBeNull();
    const r2 = await refresh(rig, 'provider-app', String(r1.body.refresh_token));
    expect(r2.status).toBe(200);
    expect(r2.body.refresh_token).not.toBe(r1.body.refresh_token);
  });

  it('serves a SMART configuration document', () => {
    const doc = rig.auth.smartConfiguration();
    expect(doc).toMatchObject({
      issuer: rig.auth.issuer,
      token_endpoint: `${rig.auth.issuer}/token`,
      authorization_endpoint: `${rig.auth.issuer}/authorize`,
      revocation_endpoint: `${rig.auth.issuer}/revoke`,
      jwks_uri: `${rig.auth.issuer}/jwks`,
      token_endpoint_auth_signing_alg_values_supported: ['RS384', 'ES384'],
      code_challenge_methods_supported: ['S256'],
    });
    expect(doc.token_endpoint_auth_methods_supported).toContain('private_key_jwt');
    expect(doc.grant_types_supported).toEqual(expect.arrayContaining(['client_credentials', 'authorization_code', 'refresh_token']));
    expect(doc.scopes_supported).toEqual(expect.arrayContaining(['system/Observation.cruds', 'launch/patient', 'offline_access']));
    expect(doc.capabilities).toEqual(
      expect.arrayContaining(['client-confidential-asymmetric', 'client-confidential-symmetric', 'launch-standalone', 'context-standalone-patient', 'permission-v1', 'permission-v2', 'permission-offline', 'sso-openid-connect']),
    );
    expect(rig.auth.tokenEndpoint).toBe(`${rig.base}/oauth/token`);
  });

  it('serves its own JWKS and discovery under the mount path, and 404s outside it', async () => {
    const jwks = (await (await fetch(`${rig.auth.issuer}/jwks`)).json()) as { keys: { kty: string; d?: string }[] };
    expect(jwks.keys[0]?.kty).toBe('RSA');
    expect(jwks.keys[0]?.d).toBeUndefined();
    const discovery = (await (await fetch(`${rig.auth.issuer}/.well-known/openid-configuration`)).json()) as Record<string, unknown>;
    expect(discovery.token_endpoint).toBe(rig.auth.tokenEndpoint);
    const outside = await new Promise<number>((resolve) => {
      const res = { writeHead: (status: number) => resolve(status), end: () => undefined } as unknown as Parameters<SandboxAuthServer['handle']>[1];
      rig.auth.handle({ url: '/oauthx/token', method: 'GET' } as Parameters<SandboxAuthServer['handle']>[0], res);
    });
    expect(outside).toBe(404);
  });
});

describe('refresh token modes', () => {
  it('keep: the same refresh token keeps working and is returned again', async () => {
    const rig = await startRig(clientsFor, { refreshTokenMode: 'keep' });
    try {
      const first = await providerLogin(rig);
      for (let i = 0; i < 2; i++) {
        const res = await refresh(rig, 'provider-app', first.refreshToken);
        expect(res.status).toBe(200);
        expect(res.body.refresh_token).toBe(first.refreshToken);
        expect(res.body.access_token).not.toBe(first.accessToken);
      }
      expect(await rig.auth.verifyAccessToken(first.accessToken)).not.toBeNull();
      expect(rig.warnings).toEqual([]);
    } finally {
      await rig.close();
    }
  });

  it('single-use: reuse of a rotated refresh token is invalid_grant and revokes the whole grant', async () => {
    const rig = await startRig(clientsFor, { refreshTokenMode: 'single-use' });
    try {
      const first = await providerLogin(rig);
      const r1 = await refresh(rig, 'provider-app', first.refreshToken);
      expect(r1.status).toBe(200);
      const rotated = String(r1.body.refresh_token);
      expect(rotated).not.toBe(first.refreshToken);
      expect(await rig.auth.verifyAccessToken(String(r1.body.access_token))).not.toBeNull();

      const reuse = await refresh(rig, 'provider-app', first.refreshToken);
      expect(reuse.status).toBe(400);
      expect(reuse.body.error).toBe('invalid_grant');
      // Reuse detection: every token of the grant is gone, including the legitimately rotated one.
      expect((await refresh(rig, 'provider-app', rotated)).body.error).toBe('invalid_grant');
      expect(await rig.auth.verifyAccessToken(String(r1.body.access_token))).toBeNull();
      expect(await rig.auth.verifyAccessToken(first.accessToken)).toBeNull();
      expect(rig.warnings).toEqual([]);
    } finally {
      await rig.close();
    }
  });
});

describe('token expiry', () => {
  it('verifyAccessToken returns null once the access token has expired', async () => {
    const rig = await startRig(clientsFor, { accessTokenTtlSeconds: 1 });
    try {
      const res = await clientCredentials(rig, rsKey, 'backend-rs', 'system/*.rs');
      expect(res.body.expires_in).toBe(1);
      const token = String(res.body.access_token);
      expect(await rig.auth.verifyAccessToken(token)).not.toBeNull();
      // exp is in whole seconds: after 2 s it has certainly passed.
      await new Promise((resolve) => setTimeout(resolve, 2_000));
      expect(await rig.auth.verifyAccessToken(token)).toBeNull();
    } finally {
      await rig.close();
    }
  });
});

describe('options validation', () => {
  const issuer = 'http://127.0.0.1:1/oauth';

  it('rejects invalid options with CONFIG_INVALID naming the field, never the secret', async () => {
    const attempt = createAuthorizationServer({
      issuer,
      clients: [{ client_id: 'c', client_secret: CLIENT_SECRET, jwks: { keys: [{ kty: 'RSA' }] }, scope: 'system/*.rs' }],
    });
    const error: unknown = await attempt.catch((e: unknown) => e);
    expect(isTetherError(error) && error.code).toBe('CONFIG_INVALID');
    expect(String((error as Error).message)).toContain('exactly one of jwks, jwks_uri, client_secret');
    expect(String((error as Error).message)).not.toContain(CLIENT_SECRET);
  });

  it('rejects a grant lifetime shorter than the refresh token lifetime, and a bad issuer', async () => {
    await expect(createAuthorizationServer({ issuer, clients: [], refreshTokenTtlSeconds: 100, grantTtlSeconds: 10 })).rejects.toMatchObject({
      code: 'CONFIG_INVALID',
    });
    await expect(createAuthorizationServer({ issuer: 'ftp://x/oauth', clients: [] })).rejects.toMatchObject({ code: 'CONFIG_INVALID' });
  });

  it('surfaces client metadata oidc-provider refuses, at creation', async () => {
    await expect(
      createAuthorizationServer({
        issuer,
        clients: [{ client_id: 'fragment', client_secret: 'x', redirect_uris: ['https://app.example/cb#fragment'], scope: 'user/*.rs' }],
      }),
    ).rejects.toMatchObject({ code: 'CONFIG_INVALID' });
  });

  it('parses a clients file and rejects unknown fields', () => {
    const clients = parseSandboxClients([{ client_id: 'a', client_secret: 'x', scope: 'system/Patient.rs' }]);
    expect(clients[0]?.client_id).toBe('a');
    expect(() => parseSandboxClients([{ client_id: 'a', client_secret: 'x', scope: '', redirect_uri: 'typo' }])).toThrow(/redirect_uri/);
    expect(() => parseSandboxClients({})).toThrow();
  });
});
