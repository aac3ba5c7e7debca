/**
 * The sandbox's OAuth 2 authorization server: SMART backend services (client_credentials + private_key_jwt),
 * authorization code + PKCE for provider and patient contexts with auto-approved login and consent, refresh
 * tokens in three vendor-like modes, and RFC 7009 revocation. Built on oidc-provider 8, which does the
 * protocol work; this module configures it for SMART and fills the gaps listed below.
 *
 * What oidc-provider does not do by itself, and where this module does it:
 * - SMART's "assertion `exp` at most 5 minutes ahead": `assertJwtClientAuthClaimsAndHeader` hook.
 * - Rejecting scopes the client may not have (oidc-provider only checks its own OIDC scopes; SMART scopes are
 *   resource-server scopes and are silently dropped): `getResourceServerInfo` throws `invalid_scope`.
 * - `offline_access` without `prompt=consent` (oidc-provider strips it, per OIDC Core): a middleware adds
 *   `prompt=consent` to GET authorization requests, so SMART apps get refresh tokens.
 * - `patient` / `fhirUser` in the token response: stored on the access token by `extraTokenClaims` and copied
 *   into the response body by a middleware after the token endpoint.
 * - Refresh mode `rotate` (reuse = `invalid_grant` only; oidc-provider revokes the whole grant on reuse):
 *   the store deletes rotated-out refresh tokens instead of marking them consumed.
 * - Interactions: `/interaction/:uid` logs in the `login_hint` (or default) account and grants every requested
 *   scope the client is allowed, so no browser is needed (cookies must still be carried, as a browser would).
 *
 * Operator documentation: docs/auth-server.md.
 */
import { randomBytes } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { scopeCoveredBy, TetherError } from '@tether/core';
import { exportJWK, generateKeyPair } from 'jose';
import Provider, { errors } from 'oidc-provider';
import type { AccessToken, ClientMetadata, Configuration, JWK, KoaContextWithOIDC } from 'oidc-provider';
import { z } from 'zod';
import { createMemoryStore } from './memory-store.js';
import type { RefreshTokenMode, SandboxAuthServer, SandboxClientConfig, VerifiedToken } from './types.js';

/** Access token lifetime (seconds), for both client_credentials and authorization code tokens. Default 300. */
export const DEFAULT_ACCESS_TOKEN_TTL_SECONDS = 300;
/** Refresh token lifetime (seconds). In `rotate`/`single-use` mode every new refresh token gets it afresh. Default 86 400 (1 day). */
export const DEFAULT_REFRESH_TOKEN_TTL_SECONDS = 86_400;
/** Lifetime of a grant (seconds): no refresh works after it, whatever the mode. Default 2 592 000 (30 days). */
export const DEFAULT_GRANT_TTL_SECONDS = 30 * 86_400;
/** Refresh token behaviour. Default `rotate`. */
export const DEFAULT_REFRESH_TOKEN_MODE: RefreshTokenMode = 'rotate';
/** How far in the future a client assertion's `exp` may be (seconds), as SMART Backend Services requires. Default 300. */
export const DEFAULT_MAX_ASSERTION_LIFETIME_SECONDS = 300;
/** Clock skew tolerated on JWT time claims (seconds), including the `exp` limit above. Default 5. */
export const DEFAULT_CLOCK_TOLERANCE_SECONDS = 5;
/** Signing algorithms accepted for `private_key_jwt` client assertions. Default RS384 and ES384 (SMART's required pair). */
export const DEFAULT_CLIENT_ASSERTION_ALGORITHMS = ['RS384', 'ES384'] as const;
/** Patient id used for `launch/patient` when the signed-in account is not a patient. Default `example`. */
export const DEFAULT_PATIENT_ID = 'example';
/** Practitioner id signed in when an authorization request has no `login_hint`. Default `example`. */
export const DEFAULT_PRACTITIONER_ID = 'example';

/** Authorization codes live this long (seconds); clients redeem them immediately. */
const AUTHORIZATION_CODE_TTL_SECONDS = 60;
/** A pending login/consent interaction lives this long (seconds). */
const INTERACTION_TTL_SECONDS = 600;
/** Browser session lifetime (seconds); tokens do not depend on it (`expiresWithSession` is off). */
const SESSION_TTL_SECONDS = 3_600;
const ID_TOKEN_TTL_SECONDS = 3_600;

const ASSERTION_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512'] as const;
type AssertionAlgorithm = (typeof ASSERTION_ALGORITHMS)[number];

/** Scopes oidc-provider treats as OpenID Connect scopes (the rest are resource scopes of the FHIR server). */
const OIDC_SCOPES: ReadonlySet<string> = new Set(['openid', 'offline_access', 'fhirUser']);
/** FHIR resource types a signed-in account may be (the `sub` and `fhirUser` of the id token). */
const ACCOUNT_TYPES: ReadonlySet<string> = new Set(['Practitioner', 'Patient', 'RelatedPerson', 'Person']);
const FHIR_ID = /^[A-Za-z0-9\-.]{1,64}$/;

/** Minimal pino-compatible logger; nothing secret (tokens, assertions, client secrets) is ever passed to it. */
export interface AuthServerLogger {
  warn(fields: Record<string, unknown>, message: string): void;
}

/** Options of {@link createAuthorizationServer}. */
export interface AuthorizationServerOptions {
  /**
   * The issuer URL, which is also where the server is mounted, e.g. `http://127.0.0.1:8080/oauth`. Endpoints are
   * `<issuer>/token`, `<issuer>/authorize`, ... Create the server after the HTTP server listens (the port is
   * part of the issuer), and address it by the same host: `aud` of client assertions is checked against it.
   */
  readonly issuer: string;
  /** Registered clients (the `--clients` JSON file); see {@link parseSandboxClients}. */
  readonly clients: readonly SandboxClientConfig[];
  /** The FHIR base URL: the audience of every access token and the only accepted `aud`/`resource`. Default `<issuer origin>/fhir/R4`. */
  readonly fhirBaseUrl?: string;
  /** Seconds. Default {@link DEFAULT_ACCESS_TOKEN_TTL_SECONDS}. */
  readonly accessTokenTtlSeconds?: number;
  /** Seconds. Default {@link DEFAULT_REFRESH_TOKEN_TTL_SECONDS}. */
  readonly refreshTokenTtlSeconds?: number;
  /** Seconds; at least `refreshTokenTtlSeconds`. Default {@link DEFAULT_GRANT_TTL_SECONDS}. */
  readonly grantTtlSeconds?: number;
  /** Default {@link DEFAULT_REFRESH_TOKEN_MODE}; see docs/auth-server.md for the exact behaviour of each mode. */
  readonly refreshTokenMode?: RefreshTokenMode;
  /** Seconds. Default {@link DEFAULT_MAX_ASSERTION_LIFETIME_SECONDS}. */
  readonly maxAssertionLifetimeSeconds?: number;
  /** Seconds. Default {@link DEFAULT_CLOCK_TOLERANCE_SECONDS}. */
  readonly clockToleranceSeconds?: number;
  /** Default {@link DEFAULT_CLIENT_ASSERTION_ALGORITHMS}. */
  readonly clientAssertionAlgorithms?: readonly AssertionAlgorithm[];
  /** FHIR id. Default {@link DEFAULT_PATIENT_ID}. */
  readonly defaultPatientId?: string;
  /** FHIR id. Default {@link DEFAULT_PRACTITIONER_ID}. */
  readonly defaultPractitionerId?: string;
  /**
   * Append oidc-provider's internal reason (e.g. "client assertion tokens must only be used once") to the
   * `error_description` of token and revocation errors. A debugging aid for a sandbox; the reasons never contain
   * secrets. Default `true`.
   */
  readonly exposeErrorDetail?: boolean;
  /** Receives unexpected server errors (a 500 from oidc-provider, a failed interaction). Default: discard. */
  readonly logger?: AuthServerLogger;
}

const httpUrl = z.url({ protocol: /^https?$/, error: 'must be an http(s) URL' });
const fhirId = z.string().regex(FHIR_ID, 'must be a FHIR id');

const clientSchema = z
  .strictObject({
    client_id: z.string().min(1),
    client_name: z.string().optional(),
    jwks: z.strictObject({ keys: z.array(z.record(z.string(), z.unknown())).min(1) }).optional(),
    jwks_uri: httpUrl.optional(),
    client_secret: z.string().min(1).optional(),
    scope: z.string(),
    redirect_uris: z.array(httpUrl).optional(),
    token_endpoint_auth_method: z.enum(['private_key_jwt', 'client_secret_basic', 'client_secret_post', 'none']).optional(),
    grant_types: z.array(z.enum(['client_credentials', 'authorization_code', 'refresh_token'])).optional(),
  })
  .superRefine((client, ctx) => {
    const credentials = [client.jwks, client.jwks_uri, client.client_secret].filter((c) => c !== undefined).length;
    const method = authMethodOf(client);
    if (method === 'none' ? credentials !== 0 : credentials !== 1) {
      ctx.addIssue({
        code: 'custom',
        message:
          method === 'none'
            ? 'a public client (token_endpoint_auth_method "none") must not have jwks, jwks_uri or client_secret'
            : 'exactly one of jwks, jwks_uri, client_secret is required',
      });
    }
    const keyBased = client.jwks !== undefined || client.jwks_uri !== undefined;
    if ((method === 'private_key_jwt' && !keyBased) || (method.startsWith('client_secret') && client.client_secret === undefined)) {
      ctx.addIssue({ code: 'custom', message: `token_endpoint_auth_method "${method}" does not match the credentials given` });
    }
  });

const optionsSchema = z
  .strictObject({
    issuer: httpUrl.refine((u) => !u.includes('?') && !u.includes('#'), 'must not have a query or fragment'),
    clients: z.array(clientSchema).refine((cs) => new Set(cs.map((c) => c.client_id)).size === cs.length, 'client_id values must be unique'),
    fhirBaseUrl: httpUrl.optional(),
    accessTokenTtlSeconds: z.int().min(1).default(DEFAULT_ACCESS_TOKEN_TTL_SECONDS),
    refreshTokenTtlSeconds: z.int().min(1).default(DEFAULT_REFRESH_TOKEN_TTL_SECONDS),
    grantTtlSeconds: z.int().min(1).default(DEFAULT_GRANT_TTL_SECONDS),
    refreshTokenMode: z.enum(['rotate', 'keep', 'single-use']).default(DEFAULT_REFRESH_TOKEN_MODE),
    maxAssertionLifetimeSeconds: z.int().min(1).default(DEFAULT_MAX_ASSERTION_LIFETIME_SECONDS),
    clockToleranceSeconds: z.int().min(0).default(DEFAULT_CLOCK_TOLERANCE_SECONDS),
    clientAssertionAlgorithms: z.array(z.enum(ASSERTION_ALGORITHMS)).min(1).default([...DEFAULT_CLIENT_ASSERTION_ALGORITHMS]),
    defaultPatientId: fhirId.default(DEFAULT_PATIENT_ID),
    defaultPractitionerId: fhirId.default(DEFAULT_PRACTITIONER_ID),
    exposeErrorDetail: z.boolean().default(true),
    logger: z.custom<AuthServerLogger>((l) => typeof l === 'object' && l !== null && typeof (l as AuthServerLogger).warn === 'function').optional(),
  })
  .refine((o) => o.grantTtlSeconds >= o.refreshTokenTtlSeconds, {
    message: 'grantTtlSeconds must be at least refreshTokenTtlSeconds',
    path: ['grantTtlSeconds'],
  });

function authMethodOf(client: Pick<SandboxClientConfig, 'token_endpoint_auth_method' | 'jwks' | 'jwks_uri' | 'client_secret'>) {
  if (client.token_endpoint_auth_method !== undefined) return client.token_endpoint_auth_method;
  if (client.jwks !== undefined || client.jwks_uri !== undefined) return 'private_key_jwt';
  return client.client_secret !== undefined ? 'client_secret_basic' : 'none';
}

function configError(what: string, error: z.ZodError): TetherError {
  // prettifyError names paths and rules, never the offending values (which may be client secrets).
  return new TetherError('CONFIG_INVALID', `Invalid ${what}:\n${z.prettifyError(error)}`, {
    details: { issues: error.issues.map((i) => ({ path: i.path.join('.'), message: i.message })) },
  });
}

/**
 * Validates the content of a clients JSON file (an array of {@link SandboxClientConfig}).
 *
 * @throws TetherError `CONFIG_INVALID` naming the offending fields (never their values).
 */
export function parseSandboxClients(json: unknown): SandboxClientConfig[] {
  const parsed = z.array(clientSchema).safeParse(json);
  if (!parsed.success) throw configError('clients file', parsed.error);
  return parsed.data;
}

/** Answers a request that never reaches oidc-provider (outside the issuer path, after close, interaction errors). */
function sendJson(res: ServerResponse, status: number, body: Record<string, string>): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
  res.end(text);
}

function stringParam(params: Record<string, unknown> | undefined, name: string): string | undefined {
  const value = params?.[name];
  return typeof value === 'string' && value !== '' ? value : undefined;
}

function splitScope(scope: string | undefined): string[] {
  return scope === undefined ? [] : scope.split(' ').filter((s) => s !== '');
}

/** The Koa context with oidc-provider's `ctx.oidc`, which is absent until a route of oidc-provider ran. */
function oidcOf(ctx: object): KoaContextWithOIDC['oidc'] | undefined {
  return 'oidc' in ctx ? (ctx as KoaContextWithOIDC).oidc : undefined;
}

/** A request as Express/Connect present it to a mounted app: `url` relative to the mount, `originalUrl` complete. */
type MountedRequest = IncomingMessage & { originalUrl?: string };

/** Launch context stored on an access token (`extra`) and echoed in the token response. */
interface LaunchContext {
  /** Relative reference of the signed-in user, e.g. `Practitioner/123`. */
  readonly fhirUser: string;
  readonly patient?: string;
}

/**
 * Creates the sandbox authorization server. Call it after the HTTP server listens, with the real issuer, and
 * route every request whose path starts with the issuer's path to {@link SandboxAuthServer.handle}.
 *
 * @throws TetherError `CONFIG_INVALID` when the options or a client are invalid.
 */
export async function createAuthorizationServer(options: AuthorizationServerOptions): Promise<SandboxAuthServer> {
  const parsed = optionsSchema.safeParse(options);
  if (!parsed.success) throw configError('authorization server options', parsed.error);
  const config = Object.freeze({ ...parsed.data, issuer: parsed.data.issuer.replace(/\/+$/, '') });
  const logger: AuthServerLogger = config.logger ?? { warn: () => undefined };
  const issuerUrl = new URL(config.issuer);
  const mountPath = issuerUrl.pathname.replace(/\/+$/, '');
  const fhirBaseUrl = (config.fhirBaseUrl ?? `${issuerUrl.origin}/fhir/R4`).replace(/\/+$/, '');

  const allowedScopes = new Map(config.clients.map((c) => [c.client_id, new Set(splitScope(c.scope))]));
  const store = createMemoryStore({
    // `rotate`: forget rotated-out refresh tokens, so reuse is "not found" rather than "reuse detected".
    deleteOnConsume: config.refreshTokenMode === 'rotate' ? new Set(['RefreshToken']) : new Set(),
  });

  const launchContextFor = (accountId: string, scopes: ReadonlySet<string>): LaunchContext => {
    if (!scopes.has('launch/patient')) return { fhirUser: accountId };
    const patient = accountId.startsWith('Patient/') ? accountId.slice('Patient/'.length) : config.defaultPatientId;
    return { fhirUser: accountId, patient };
  };

  /** The account an interaction signs in: `login_hint` (a reference like `Patient/123`, or a bare id), else a default. */
  const accountFor = (loginHint: string | undefined, requested: readonly string[]): { accountId: string } | { error: string } => {
    // Patient-facing apps ask for patient/ scopes only; anything asking for user/ scopes is a provider app.
    const patientFacing = requested.some((s) => s.startsWith('patient/')) && !requested.some((s) => s.startsWith('user/'));
    const defaultType = patientFacing ? 'Patient' : 'Practitioner';
    if (loginHint === undefined) {
      return { accountId: patientFacing ? `Patient/${config.defaultPatientId}` : `Practitioner/${config.defaultPractitionerId}` };
    }
    const [type, id, extra] = loginHint.includes('/') ? loginHint.split('/') : [defaultType, loginHint];
    if (extra !== undefined || type === undefined || id === undefined || !ACCOUNT_TYPES.has(type) || !FHIR_ID.test(id)) {
      return { error: 'login_hint must be a FHIR id or a reference such as Practitioner/123 or Patient/123' };
    }
    return { accountId: `${type}/${id}` };
  };

  const clients: ClientMetadata[] = config.clients.map((c) => {
    const method = authMethodOf(c);
    const redirectUris = c.redirect_uris ?? [];
    const grantTypes =
      c.grant_types ??
      [
        ...(method === 'none' ? [] : ['client_credentials' as const]),
        ...(redirectUris.length > 0 ? (['authorization_code', 'refresh_token'] as const) : []),
      ];
    return {
      client_id: c.client_id,
      ...(c.client_name === undefined ? {} : { client_name: c.client_name }),
      ...(c.client_secret === undefined ? {} : { client_secret: c.client_secret }),
      ...(c.jwks === undefined ? {} : { jwks: { keys: c.jwks.keys as JWK[] } }),
      ...(c.jwks_uri === undefined ? {} : { jwks_uri: c.jwks_uri }),
      token_endpoint_auth_method: method,
      grant_types: [...grantTypes],
      response_types: grantTypes.includes('authorization_code') ? ['code'] : [],
      redirect_uris: [...redirectUris],
    };
  });

  // A fresh RS256 key per server signs id tokens; nothing needs to verify them across restarts.
  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  const signingKey = { ...(await exportJWK(privateKey)), alg: 'RS256', use: 'sig', kid: `sandbox-${randomBytes(6).toString('hex')}` };

  const configuration: Configuration = {
    adapter: store.adapterFactory,
    clients,
    jwks: { keys: [signingKey as JWK] },
    // Signed cookies carry the interaction id through the browser-less login; keys are per instance.
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    clockTolerance: config.clockToleranceSeconds,
    clientAuthMethods: ['private_key_jwt', 'client_secret_basic', 'client_secret_post', 'none'],
    enabledJWA: {
      clientAuthSigningAlgValues: [...config.clientAssertionAlgorithms],
      idTokenSigningAlgValues: ['RS256'],
    },
    clientDefaults: { id_token_signed_response_alg: 'RS256' },
    responseTypes: ['code'],
    pkce: { methods: ['S256'], required: () => true },
    scopes: [...OIDC_SCOPES],
    // The fhirUser scope releases the fhirUser claim (an absolute URL, as SMART asks) in the id token.
    claims: { openid: ['sub'], fhirUser: ['fhirUser'] },
    conformIdTokenClaims: false,
    // SMART sends `aud` (the FHIR base URL) on authorization requests; reject a mismatch as SMART requires.
    extraParams: {
      aud: (_ctx, value) => {
        if (value !== undefined && value.replace(/\/+$/, '') !== fhirBaseUrl) {
          throw new errors.InvalidRequest('aud must be the FHIR base URL of this server');
        }
      },
      launch: null,
    },
    routes: {
      authorization: '/authorize',
      token: '/token',
      revocation: '/revoke',
      jwks: '/jwks',
    },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      revocation: { enabled: true },
      introspection: { enabled: false },
      userinfo: { enabled: false },
      pushedAuthorizationRequests: { enabled: false },
      resourceIndicators: {
        enabled: true,
        // Every token is for the FHIR server, whether or not the client sends `resource`.
        defaultResource: (_ctx, _client, oneOf) => (oneOf === undefined || oneOf.includes(fhirBaseUrl) ? fhirBaseUrl : oneOf),
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resourceIndicator, client) => {
          if (resourceIndicator.replace(/\/+$/, '') !== fhirBaseUrl) throw new errors.InvalidTarget();
          const allowed = allowedScopes.get(client.clientId) ?? new Set<string>();
          // oidc-provider checks a client's allowed scopes only for its OIDC scopes; SMART scopes are resource
          // scopes and would be dropped silently. This hook runs after client authentication, on /authorize and
          // /token, so it is where a request for a scope the client may not have becomes `invalid_scope`.
          const params = ctx.oidc.params;
          const requested = splitScope(stringParam(params, 'scope'));
          // A client registered with `system/*.cruds` may ask for any narrower scope, e.g. `system/Patient.rs`.
          const refused = requested.filter((s) => !allowed.has(s) && !scopeCoveredBy(s, [...allowed].join(' ')));
          if (refused.length > 0) throw new errors.InvalidScope('requested scope is not allowed for this client', refused.join(' '));
          if (requested.length === 0 && stringParam(params, 'grant_type') === 'client_credentials') {
            throw new errors.InvalidScope('scope is required', '');
          }
          return {
            scope: [...new Set([...allowed, ...requested])].join(' '),
            audience: fhirBaseUrl,
            accessTokenFormat: 'opaque',
            accessTokenTTL: config.accessTokenTtlSeconds,
          };
        },
      },
    },
    assertJwtClientAuthClaimsAndHeader: (_ctx, claims) => {
      // SMART Backend Services: exp no more than five minutes in the future. oidc-provider checks only that
      // the assertion has not expired. Runs after the signature check and before replay detection.
      const { exp } = claims;
      const now = Math.floor(Date.now() / 1000);
      if (typeof exp !== 'number' || exp - now > config.maxAssertionLifetimeSeconds + config.clockToleranceSeconds) {
        throw new errors.InvalidClientAuth(`client_assertion exp must be at most ${config.maxAssertionLifetimeSeconds} seconds in the future`);
      }
    },
    findAccount: (_ctx, sub) => {
      const [type] = sub.split('/');
      if (type === undefined || !ACCOUNT_TYPES.has(type)) return undefined;
      return { accountId: sub, claims: () => ({ sub, fhirUser: `${fhirBaseUrl}/${sub}` }) };
    },
    extraTokenClaims: (_ctx, token) => {
      if (token.kind !== 'AccessToken') return undefined;
      return { ...launchContextFor(token.accountId, token.scopes) };
    },
    // SMART: no session-bound tokens; an access token lives its TTL, a refresh token its own.
    expiresWithSession: () => false,
    rotateRefreshToken: config.refreshTokenMode !== 'keep',
    ttl: {
      AccessToken: config.accessTokenTtlSeconds,
      ClientCredentials: config.accessTokenTtlSeconds,
      RefreshToken: config.refreshTokenTtlSeconds,
      Grant: config.grantTtlSeconds,
      AuthorizationCode: AUTHORIZATION_CODE_TTL_SECONDS,
      Interaction: INTERACTION_TTL_SECONDS,
      Session: SESSION_TTL_SECONDS,
      IdToken: ID_TOKEN_TTL_SECONDS,
    },
    interactions: { url: (_ctx, interaction) => `${mountPath}/interaction/${interaction.uid}` },
    // Browser-based SMART apps call the token endpoint cross-origin; the sandbox listens on loopback only.
    clientBasedCORS: () => true,
    renderError: (ctx, out) => {
      ctx.type = 'json';
      ctx.body = out;
    },
  };

  const provider = new Provider(config.issuer, configuration);

  // Surface client metadata errors now rather than as `invalid_client` on first use.
  for (const client of config.clients) {
    try {
      await provider.Client.find(client.client_id);
    } catch (error) {
      const description = error instanceof errors.OIDCProviderError ? (error.error_description ?? error.message) : String(error);
      throw new TetherError('CONFIG_INVALID', `Invalid client ${client.client_id}: ${description}`, { cause: error });
    }
  }

  provider.use(async (ctx, next) => {
    // oidc-provider drops offline_access unless prompt=consent (OIDC Core 11). SMART apps never send it, so
    // ask for consent on their behalf; the sandbox approves consent automatically anyway. GET only: POST
    // authorization requests keep oidc-provider's behaviour (documented).
    if (ctx.method === 'GET' && ctx.path === '/authorize') {
      const { scope, prompt } = ctx.query;
      const prompts = typeof prompt === 'string' ? splitScope(prompt) : [];
      if (typeof scope === 'string' && splitScope(scope).includes('offline_access') && !prompts.includes('none') && !prompts.includes('consent')) {
        ctx.query = { ...ctx.query, prompt: [...prompts, 'consent'].join(' ') };
        // Koa's query setter rewrites req.url; oidc-provider finds its mount path as `originalUrl` minus `url`.
        (ctx.req as MountedRequest).originalUrl = `${mountPath}${ctx.url}`;
      }
    }
    await next();
    const oidc = oidcOf(ctx);
    if (oidc?.route !== 'token' || ctx.status !== 200) return;
    // Token response extras of SMART App Launch: `patient` for launch/patient, `fhirUser` with the fhirUser scope.
    const body = ctx.body as Record<string, unknown>;
    const token: AccessToken | undefined = oidc.entities.AccessToken;
    const extra = token?.extra as Partial<LaunchContext> | undefined;
    if (extra?.patient !== undefined) body.patient = extra.patient;
    if (extra?.fhirUser !== undefined && token?.scopes.has('fhirUser') === true) body.fhirUser = `${fhirBaseUrl}/${extra.fhirUser}`;
    body.scope ??= '';
  });

  const exposeDetail = (ctx: KoaContextWithOIDC, error: errors.OIDCProviderError): void => {
    if (!config.exposeErrorDetail || error.error_detail === undefined) return;
    const body = ctx.body as Record<string, unknown> | undefined;
    if (body !== undefined && typeof body === 'object') {
      body.error_description = `${typeof body.error_description === 'string' ? body.error_description : error.error} (${error.error_detail})`;
    }
  };
  provider.on('grant.error', exposeDetail);
  provider.on('revocation.error', exposeDetail);
  provider.on('server_error', (_ctx: KoaContextWithOIDC, error: Error) => {
    logger.warn({ err: { name: error.name, message: error.message } }, 'authorization server error');
  });

  const callback = provider.callback();
  const interactionPath = new RegExp(`^${mountPath.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/interaction/([A-Za-z0-9_-]+)$`);
  let closed = false;

  /** Auto-approves an interaction: logs in the account and grants every requested scope the client may have. */
  const finishInteraction = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const interaction = await provider.interactionDetails(req, res);
    const params = interaction.params;
    const clientId = stringParam(params, 'client_id') ?? '';
    const requested = splitScope(stringParam(params, 'scope'));
    const account = accountFor(stringParam(params, 'login_hint'), requested);
    if ('error' in account) {
      await provider.interactionFinished(req, res, { error: 'login_required', error_description: account.error }, { mergeWithLastSubmission: false });
      return;
    }
    // Requested scopes were already checked against the client's allowed list at /authorize; filter anyway.
    const allowed = allowedScopes.get(clientId) ?? new Set<string>();
    const granted = requested.filter((s) => allowed.has(s));
    const grant = new provider.Grant({ accountId: account.accountId, clientId });
    const oidcScopes = granted.filter((s) => OIDC_SCOPES.has(s));
    if (oidcScopes.length > 0) grant.addOIDCScope(oidcScopes.join(' '));
    // All granted scopes, OIDC ones included, are also resource scopes: the access token's `scope` (and so the
    // token response) then lists everything granted, as SMART clients expect.
    if (granted.length > 0) grant.addResourceScope(fhirBaseUrl, granted.join(' '));
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { login: { accountId: account.accountId }, consent: { grantId } }, { mergeWithLastSubmission: false });
  };

  const findToken = async (token: string) =>
    (await provider.AccessToken.find(token)) ?? (await provider.ClientCredentials.find(token));

  return {
    issuer: config.issuer,
    tokenEndpoint: `${config.issuer}/token`,

    handle(req, res) {
      if (closed) {
        sendJson(res, 503, { error: 'temporarily_unavailable', error_description: 'authorization server is closed' });
        return;
      }
      const url = req.url ?? '/';
      const path = url.split('?', 1)[0] ?? '/';
      if (path !== mountPath && !path.startsWith(`${mountPath}/`)) {
        sendJson(res, 404, { error: 'not_found', error_description: 'not an authorization server path' });
        return;
      }
      if (interactionPath.test(path) && req.method === 'GET') {
        finishInteraction(req, res).catch((error: unknown) => {
          if (error instanceof errors.SessionNotFound) {
            // Typically a client that did not carry the cookies set by /authorize.
            sendJson(res, 400, { error: 'invalid_request', error_description: error.error_description ?? 'interaction session not found' });
            return;
          }
          logger.warn({ err: { name: (error as Error).name, message: (error as Error).message } }, 'interaction failed');
          if (!res.headersSent) sendJson(res, 500, { error: 'server_error' });
        });
        return;
      }
      // Mounted under the issuer path: oidc-provider derives its URLs from `originalUrl` minus `url`, the way
      // Express's `app.use('/oauth', provider.callback())` would present the request.
      (req as MountedRequest).originalUrl = url;
      req.url = url.slice(mountPath.length) || '/';
      if (req.url.startsWith('?')) req.url = `/${req.url}`;
      void callback(req, res);
    },

    async verifyAccessToken(token: string): Promise<VerifiedToken | null> {
      if (closed || token === '') return null;
      const found = await findToken(token);
      // find() tolerates `clockTolerance` past exp; a resource server should not.
      if (found === undefined || found.isExpired || found.exp === undefined || found.clientId === undefined) return null;
      const extra = (found.extra ?? {}) as Partial<LaunchContext>;
      return {
        clientId: found.clientId,
        scope: found.scope ?? '',
        expiresAt: found.exp,
        ...(extra.patient === undefined ? {} : { patient: extra.patient }),
        ...(extra.fhirUser === undefined ? {} : { fhirUser: extra.fhirUser }),
      };
    },

    async revokeAccessToken(token: string): Promise<void> {
      const found = await findToken(token);
      await found?.destroy();
    },

    smartConfiguration() {
      const scopes = new Set<string>();
      for (const allowed of allowedScopes.values()) for (const s of allowed) scopes.add(s);
      return {
        issuer: config.issuer,
        jwks_uri: `${config.issuer}/jwks`,
        authorization_endpoint: `${config.issuer}/authorize`,
        token_endpoint: `${config.issuer}/token`,
        revocation_endpoint: `${config.issuer}/revoke`,
        token_endpoint_auth_methods_supported: ['private_key_jwt', 'client_secret_basic', 'client_secret_post'],
        token_endpoint_auth_signing_alg_values_supported: [...config.clientAssertionAlgorithms],
        grant_types_supported: ['authorization_code', 'client_credentials', 'refresh_token'],
        response_types_supported: ['code'],
        scopes_supported: [...scopes].sort(),
        code_challenge_methods_supported: ['S256'],
        capabilities: [
          'launch-standalone',
          'client-public',
          'client-confidential-symmetric',
          'client-confidential-asymmetric',
          'context-standalone-patient',
          'permission-offline',
          'permission-patient',
          'permission-user',
          'permission-v1',
          'permission-v2',
          'sso-openid-connect',
        ],
      };
    },

    async close() {
      closed = true;
      provider.removeAllListeners();
      store.clear();
    },
  };
}
