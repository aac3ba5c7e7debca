import { createHash, randomBytes } from 'node:crypto';
import type { Dispatcher } from 'undici';
import { z } from 'zod';
import { parseScopes, scopesAllow, TetherError, TypedEmitter, type ParsedScope, type ScopedInteraction } from '@tether/core';
import type { TokenProvider } from '../client/index.js';
import type { Store, TenantRecord, TokenRecord } from '../store/index.js';
import { signClientAssertion } from './assertion.js';
import type { Keyring } from './keyring.js';
import { discoverSmartEndpoints, postTokenRequest, type TokenResponse } from './token-endpoint.js';

/** Proactive refresh: refresh when less than max(60 s, 20% of the lifetime) remains... */
export const DEFAULT_REFRESH_WINDOW_MIN_SECONDS = 60;
export const DEFAULT_REFRESH_WINDOW_FRACTION = 0.2;
/** ...but never earlier than half-way through the lifetime (so very short tokens are not refreshed constantly). */
export const MAX_REFRESH_WINDOW_FRACTION = 0.5;
/** A token this close to expiry (ms) is not handed out any more: the request could arrive after it expired. */
export const DEFAULT_EXPIRY_SAFETY_MS = 5_000;
/** Backoff after a transient token endpoint failure: first delay and cap (ms), full jitter. */
export const DEFAULT_BACKOFF_BASE_MS = 1_000;
export const DEFAULT_BACKOFF_MAX_MS = 60_000;
/** Difference (ms) between the server's `Date` and the local clock above which a clock-skew event is emitted. */
export const DEFAULT_CLOCK_SKEW_WARN_MS = 30_000;

/** The token context of a call: `system` (backend services), `provider:<id>` or `patient:<id>`. */
export type TokenContext = string;

/** Events of the auth broker. Payloads never hold tokens, secrets or PHI. */
export interface AuthEventMap extends Record<string, unknown> {
  'token:refreshed': { tenantId: string; context: string; reason: 'initial' | 'proactive' | 'expired' | 'unauthorized'; expiresInSeconds: number; rotated: boolean };
  'token:refresh-failed': { tenantId: string; context: string; code: string; retryInMs: number | null };
  'tenant:paused': { tenantId: string; reason: string };
  'tenant:resumed': { tenantId: string };
  'auth:clock-skew': { tenantId: string; skewMs: number };
}

const optionsSchema = z
  .object({
    refreshWindowMinSeconds: z.number().min(0).default(DEFAULT_REFRESH_WINDOW_MIN_SECONDS),
    refreshWindowFraction: z.number().min(0).max(MAX_REFRESH_WINDOW_FRACTION).default(DEFAULT_REFRESH_WINDOW_FRACTION),
    expirySafetyMs: z.number().int().min(0).default(DEFAULT_EXPIRY_SAFETY_MS),
    tokenRequestTimeoutMs: z.number().int().positive().default(10_000),
    backoffBaseMs: z.number().int().positive().default(DEFAULT_BACKOFF_BASE_MS),
    backoffMaxMs: z.number().int().positive().default(DEFAULT_BACKOFF_MAX_MS),
    clockSkewWarnMs: z.number().int().positive().default(DEFAULT_CLOCK_SKEW_WARN_MS),
  })
  .strict();

export interface TokenBrokerOptions extends z.input<typeof optionsSchema> {
  readonly store: Store;
  readonly keyring: Keyring;
  /** Epoch-ms clock. */
  readonly clock?: () => number;
  /** Uniform [0, 1) source for backoff jitter. */
  readonly random?: () => number;
  /** undici dispatcher for discovery and token requests (tests, proxies). */
  readonly dispatcher?: Dispatcher;
  /** Event sink; the broker creates one when omitted. */
  readonly events?: TypedEmitter<AuthEventMap>;
}

/** Secrets of a tenant, as stored (encrypted) in `tenants.credentials_ciphertext`. */
export interface TenantCredentials {
  /** Private JWK (with alg and kid) for SMART backend services / private_key_jwt. */
  readonly privateJwk?: Record<string, unknown> & { alg?: string; kid?: string };
  /** Client secret for client_secret_basic. */
  readonly clientSecret?: string;
}

interface CachedToken {
  readonly accessToken: string;
  readonly expiresAt: number;
  readonly issuedAt: number;
  readonly scope: string;
  readonly scopes: readonly ParsedScope[];
}

interface Backoff {
  failures: number;
  nextAttemptAt: number;
}

const key = (tenantId: string, context: string): string => `${tenantId}\u0000${context}`;

/**
 * The auth broker: the one owner of tokens per (tenant, context).
 *
 * - Access tokens are cached in memory and, encrypted, in the store, so every engine process shares them.
 * - Refresh is proactive (inside a window before expiry) with a reactive backstop (`refreshAfterUnauthorized`,
 *   at most once per request, enforced by the client).
 * - Single-flight: inside a process one promise per (tenant, context); across processes the store's lock
 *   (PostgreSQL advisory lock). The winner requests a token and stores it; the others wait for the lock, find a
 *   fresh token in the store and use it without a token request.
 * - Rotated refresh tokens are committed with compare-and-swap on the token row's version.
 * - Failures are classified: a refused grant or client (`invalid_grant`, `invalid_client`...) pauses the tenant
 *   (`auth_paused`, an event, no retries until an operator resumes it); network errors, 429 and 5xx back off
 *   exponentially with full jitter; a token still valid is used while the refresh is backing off.
 */
export class TokenBroker implements TokenProvider {
  readonly events: TypedEmitter<AuthEventMap>;
  readonly #o: z.output<typeof optionsSchema>;
  readonly #store: Store;
  readonly #keyring: Keyring;
  readonly #clock: () => number;
  readonly #random: () => number;
  readonly #dispatcher: Dispatcher | undefined;
  readonly #cache = new Map<string, CachedToken>();
  readonly #inflight = new Map<string, Promise<CachedToken>>();
  readonly #backoff = new Map<string, Backoff>();
  /** Measured server-minus-local clock difference per tenant (ms), used to date client assertions. */
  readonly #skew = new Map<string, number>();

  constructor(options: TokenBrokerOptions) {
    const { store, keyring, clock, random, dispatcher, events, ...rest } = options;
    const parsed = optionsSchema.safeParse(rest);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new TetherError('CONFIG_INVALID', `Invalid token broker option '${issue?.path.join('.') ?? ''}': ${issue?.message ?? ''}`);
    }
    this.#o = Object.freeze(parsed.data);
    this.#store = store;
    this.#keyring = keyring;
    this.#clock = clock ?? Date.now;
    this.#random = random ?? Math.random;
    this.#dispatcher = dispatcher;
    this.events = events ?? new TypedEmitter<AuthEventMap>();
  }

  /** The refresh window (ms) for a token with this lifetime: max(min, fraction × lifetime), at most half of it. */
  refreshWindowMs(lifetimeMs: number): number {
    const wanted = Math.max(this.#o.refreshWindowMinSeconds * 1000, this.#o.refreshWindowFraction * lifetimeMs);
    return Math.min(wanted, MAX_REFRESH_WINDOW_FRACTION * lifetimeMs);
  }

  #needsRefresh(t: { expiresAt: number; issuedAt: number }, now: number): boolean {
    return now >= t.expiresAt - this.refreshWindowMs(t.expiresAt - t.issuedAt);
  }

  /** Still safe to hand out: more than the safety margin left (at most a tenth of the lifetime for short tokens). */
  #usable(t: { expiresAt: number; issuedAt: number }, now: number): boolean {
    return now < t.expiresAt - Math.min(this.#o.expirySafetyMs, 0.1 * (t.expiresAt - t.issuedAt));
  }

  async getAccessToken(tenantId: string, context: TokenContext): Promise<string> {
    const k = key(tenantId, context);
    const now = this.#clock();
    const cached = this.#cache.get(k);
    if (cached && !this.#needsRefresh(cached, now)) return cached.accessToken;
    if (cached && this.#usable(cached, now)) {
      // Proactive: refresh in the background, keep serving the current token meanwhile.
      this.#refresh(tenantId, context, 'proactive', undefined).catch(() => {
        // Failures are classified, evented and backed off inside #refresh; the current token remains valid.
      });
      return cached.accessToken;
    }
    return (await this.#refresh(tenantId, context, cached ? 'expired' : 'initial', undefined)).accessToken;
  }

  async refreshAfterUnauthorized(tenantId: string, context: TokenContext, rejectedToken: string): Promise<string> {
    const cached = this.#cache.get(key(tenantId, context));
    if (cached && cached.accessToken !== rejectedToken && this.#usable(cached, this.#clock())) return cached.accessToken;
    return (await this.#refresh(tenantId, context, 'unauthorized', rejectedToken)).accessToken;
  }

  async assertScope(tenantId: string, context: TokenContext, resourceType: string, interaction: ScopedInteraction): Promise<void> {
    let cached = this.#cache.get(key(tenantId, context));
    if (!cached) {
      await this.getAccessToken(tenantId, context);
      cached = this.#cache.get(key(tenantId, context));
    }
    const decision = scopesAllow(cached?.scopes ?? [], { resourceType, interaction });
    if (!decision.allowed) {
      throw new TetherError('EHR_SCOPE_MISSING', `The tenant's token does not grant ${decision.required}.`, {
        details: { requiredScope: decision.required, resourceType, interaction },
      });
    }
  }

  /** Granted scopes of the current token for (tenant, context), parsed; undefined before the first token. */
  grantedScopes(tenantId: string, context: TokenContext): readonly ParsedScope[] | undefined {
    return this.#cache.get(key(tenantId, context))?.scopes;
  }

  /** `can(resourceType, interaction)` for the current token. */
  can(tenantId: string, context: TokenContext, resourceType: string, interaction: ScopedInteraction): boolean {
    const scopes = this.grantedScopes(tenantId, context);
    return scopes !== undefined && scopesAllow(scopes, { resourceType, interaction }).allowed;
  }

  /** Forgets cached tokens and backoff of a tenant (after an operator changed its credentials or resumed it). */
  forget(tenantId: string): void {
    for (const map of [this.#cache, this.#backoff] as Map<string, unknown>[]) {
      for (const k of map.keys()) if (k.startsWith(`${tenantId}\u0000`)) map.delete(k);
    }
  }

  #refresh(tenantId: string, context: TokenContext, reason: AuthEventMap['token:refreshed']['reason'], rejected: string | undefined): Promise<CachedToken> {
    const k = key(tenantId, context);
    const running = this.#inflight.get(k);
    if (running) {
      // A refresh started for another reason may end with exactly the token this caller saw rejected (it was
      // still fresh in the store): then refresh again, for this caller's reason.
      if (rejected === undefined) return running;
      return running.then((t) => (t.accessToken === rejected ? this.#refresh(tenantId, context, reason, rejected) : t));
    }
    const p = this.#refreshOnce(tenantId, context, reason, rejected).finally(() => this.#inflight.delete(k));
    this.#inflight.set(k, p);
    return p;
  }

  async #refreshOnce(tenantId: string, context: TokenContext, reason: AuthEventMap['token:refreshed']['reason'], rejected: string | undefined): Promise<CachedToken> {
    const k = key(tenantId, context);
    const backoff = this.#backoff.get(k);
    const now = this.#clock();
    if (backoff && now < backoff.nextAttemptAt) {
      throw new TetherError('AUTH_TOKEN_REQUEST_FAILED', 'The token endpoint failed recently; backing off.', {
        details: { retryInMs: backoff.nextAttemptAt - now },
      });
    }
    const tenant = await this.#activeTenant(tenantId);
    return this.#store.tokens.withLock(tenantId, context, async () => {
      // Another process (or an earlier holder of this lock) may have refreshed already: use its token.
      const row = await this.#store.tokens.get(tenantId, context);
      const stored = row ? this.#fromRow(tenant, row) : undefined;
      const t = this.#clock();
      if (stored && !this.#needsRefresh(stored, t) && stored.accessToken !== rejected) {
        this.#cache.set(k, stored);
        return stored;
      }
      let response: TokenResponse;
      try {
        response = await this.#requestToken(tenant, context, row);
      } catch (err) {
        // A client assertion dated by a skewed local clock is refused as invalid_client. If the refusal's Date
        // header shows a skew we did not know about, correct for it and try once more instead of pausing the tenant.
        const serverDate = err instanceof TetherError ? err.details['serverDate'] : undefined;
        const hadSkew = this.#skew.has(tenantId);
        if (err instanceof TetherError && err.code === 'AUTH_GRANT_INVALID' && typeof serverDate === 'number' && !hadSkew) {
          this.#noteSkew(tenantId, serverDate, this.#clock());
        }
        if (!hadSkew && this.#skew.has(tenantId)) {
          try {
            response = await this.#requestToken(tenant, context, row);
          } catch (retryErr) {
            await this.#onFailure(tenant, context, retryErr, row);
            throw retryErr;
          }
        } else {
          await this.#onFailure(tenant, context, err, row);
          throw err;
        }
      }
      this.#backoff.delete(k);
      const receivedAt = this.#clock();
      this.#noteSkew(tenantId, response.serverDate, receivedAt);
      const next: CachedToken = {
        accessToken: response.accessToken,
        issuedAt: receivedAt,
        expiresAt: receivedAt + response.expiresIn * 1000,
        scope: response.scope ?? tenant.scopes,
        scopes: parseScopes(response.scope ?? tenant.scopes),
      };
      // The refresh token to keep: the rotated one if the server sent one, else the one we used (servers that
      // keep refresh tokens, e.g. Oracle Health, send none or the same).
      const oldRefresh = row?.refreshTokenCiphertext ?? null;
      const refreshCiphertext = response.refreshToken
        ? this.#keyring.encrypt(tenantId, tenant.dataKeyWrapped, `refresh-token:${context}`, response.refreshToken)
        : oldRefresh;
      const write = {
        accessTokenCiphertext: this.#keyring.encrypt(tenantId, tenant.dataKeyWrapped, `access-token:${context}`, next.accessToken),
        accessExpiresAt: next.expiresAt,
        accessIssuedAt: next.issuedAt,
        refreshTokenCiphertext: refreshCiphertext,
        scope: next.scope,
      };
      let saved = await this.#store.tokens.compareAndSet(tenantId, context, row?.version ?? 0, write);
      if (!saved) {
        // Someone wrote the row although we hold the lock (a lost lock, a manual change). Never lose a rotated
        // refresh token: retry once on top of the current version. The old refresh token is dead anyway.
        const current = await this.#store.tokens.get(tenantId, context);
        saved = await this.#store.tokens.compareAndSet(tenantId, context, current?.version ?? 0, write);
        if (!saved) throw new TetherError('STORE_UNAVAILABLE', 'The token row changed twice during a refresh.');
      }
      this.#cache.set(k, next);
      this.events.emit('token:refreshed', {
        tenantId,
        context,
        reason,
        expiresInSeconds: response.expiresIn,
        rotated: response.refreshToken !== undefined && row?.refreshTokenCiphertext !== null && row?.refreshTokenCiphertext !== undefined,
      });
      return next;
    });
  }

  async #activeTenant(tenantId: string): Promise<TenantRecord> {
    const tenant = await this.#store.tenants.get(tenantId);
    if (!tenant) throw new TetherError('TENANT_NOT_FOUND', 'No tenant has that id.');
    if (tenant.state !== 'active') {
      throw new TetherError('AUTH_TENANT_PAUSED', `The tenant is ${tenant.state}; an operator must resume it.`, {
        details: { state: tenant.state },
      });
    }
    return tenant;
  }

  #fromRow(tenant: TenantRecord, row: TokenRecord): CachedToken | undefined {
    if (!row.accessTokenCiphertext || row.accessExpiresAt === null || row.accessIssuedAt === null) return undefined;
    const accessToken = this.#keyring.decrypt(tenant.id, tenant.dataKeyWrapped, `access-token:${row.context}`, row.accessTokenCiphertext);
    const scope = row.scope ?? tenant.scopes;
    return { accessToken, expiresAt: row.accessExpiresAt, issuedAt: row.accessIssuedAt, scope, scopes: parseScopes(scope) };
  }

  #credentials(tenant: TenantRecord): TenantCredentials {
    if (!tenant.credentialsCiphertext) return {};
    return JSON.parse(this.#keyring.decrypt(tenant.id, tenant.dataKeyWrapped, 'credentials', tenant.credentialsCiphertext)) as TenantCredentials;
  }

  async #tokenEndpoint(tenant: TenantRecord): Promise<string> {
    if (tenant.tokenEndpoint) return tenant.tokenEndpoint;
    const found = await discoverSmartEndpoints(tenant.fhirBaseUrl, { dispatcher: this.#dispatcher, timeoutMs: this.#o.tokenRequestTimeoutMs });
    await this.#store.tenants.update(tenant.id, { tokenEndpoint: found.tokenEndpoint });
    return found.tokenEndpoint;
  }

  /** Client authentication fields for a token request (assertion or Basic). */
  async #clientAuth(tenant: TenantRecord, tokenEndpoint: string): Promise<{ form: Record<string, string>; basic?: { clientId: string; clientSecret: string } }> {
    const creds = this.#credentials(tenant);
    if (creds.privateJwk) {
      const skew = this.#skew.get(tenant.id) ?? 0;
      const assertion = await signClientAssertion({
        clientId: tenant.clientId,
        tokenEndpoint,
        privateJwk: creds.privateJwk,
        now: this.#clock() + skew,
      });
      return {
        form: { client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', client_assertion: assertion },
      };
    }
    if (creds.clientSecret) return { form: {}, basic: { clientId: tenant.clientId, clientSecret: creds.clientSecret } };
    // A public client (authorization code + PKCE without a secret) identifies itself only.
    return { form: { client_id: tenant.clientId } };
  }

  async #requestToken(tenant: TenantRecord, context: TokenContext, row: TokenRecord | undefined): Promise<TokenResponse> {
    const tokenEndpoint = await this.#tokenEndpoint(tenant);
    const auth = await this.#clientAuth(tenant, tokenEndpoint);
    const opts = { dispatcher: this.#dispatcher, timeoutMs: this.#o.tokenRequestTimeoutMs, basicAuth: auth.basic };
    if (context === 'system') {
      return postTokenRequest(tokenEndpoint, { grant_type: 'client_credentials', scope: tenant.scopes, ...auth.form }, opts);
    }
    if (!row?.refreshTokenCiphertext) {
      throw new TetherError('AUTH_GRANT_INVALID', 'No authorization is stored for this context; complete the authorization code flow first.', {
        details: { oauthError: 'no_refresh_token' },
      });
    }
    const refreshToken = this.#keyring.decrypt(tenant.id, tenant.dataKeyWrapped, `refresh-token:${context}`, row.refreshTokenCiphertext);
    return postTokenRequest(tokenEndpoint, { grant_type: 'refresh_token', refresh_token: refreshToken, ...auth.form }, opts);
  }

  async #onFailure(tenant: TenantRecord, context: TokenContext, err: unknown, row: TokenRecord | undefined): Promise<void> {
    const k = key(tenant.id, context);
    const code = err instanceof TetherError ? err.code : 'INTERNAL';
    if (code === 'AUTH_GRANT_INVALID') {
      const oauthError = String((err as TetherError).details['oauthError'] ?? 'refused');
      if (context === 'system' || oauthError === 'invalid_client' || oauthError === 'unauthorized_client') {
        // The tenant's own credentials are refused: nothing will work until an operator fixes them.
        const reason = `token endpoint refused the ${context === 'system' ? 'client credentials' : 'client'} (${oauthError})`;
        await this.#store.tenants.update(tenant.id, { state: 'auth_paused', stateReason: reason });
        this.forget(tenant.id);
        this.events.emit('tenant:paused', { tenantId: tenant.id, reason });
      } else if (row) {
        // One user's or patient's grant is gone (revoked, expired, reused): drop it so no request loops on it;
        // that context needs a new authorization, the rest of the tenant keeps working.
        await this.#store.tokens.compareAndSet(tenant.id, context, row.version, {
          accessTokenCiphertext: null,
          accessExpiresAt: null,
          accessIssuedAt: null,
          refreshTokenCiphertext: null,
          scope: row.scope,
        });
        this.#cache.delete(k);
      }
      this.events.emit('token:refresh-failed', { tenantId: tenant.id, context, code, retryInMs: null });
      return;
    }
    const b = this.#backoff.get(k) ?? { failures: 0, nextAttemptAt: 0 };
    b.failures += 1;
    const ceiling = Math.min(this.#o.backoffMaxMs, this.#o.backoffBaseMs * 2 ** (b.failures - 1));
    let delay = Math.floor(this.#random() * ceiling);
    const retryAfter = err instanceof TetherError ? err.details['retryAfterMs'] : undefined;
    if (typeof retryAfter === 'number') delay = Math.max(delay, Math.min(retryAfter, this.#o.backoffMaxMs));
    b.nextAttemptAt = this.#clock() + delay;
    this.#backoff.set(k, b);
    this.events.emit('token:refresh-failed', { tenantId: tenant.id, context, code, retryInMs: delay });
  }

  #noteSkew(tenantId: string, serverDate: number | undefined, receivedAt: number): void {
    if (serverDate === undefined) return;
    // The Date header has one-second resolution: only differences well above that mean anything.
    const skew = serverDate - receivedAt;
    if (Math.abs(skew) > this.#o.clockSkewWarnMs) {
      this.#skew.set(tenantId, skew);
      this.events.emit('auth:clock-skew', { tenantId, skewMs: skew });
    } else {
      this.#skew.delete(tenantId);
    }
  }

  // ---- Authorization code + PKCE -------------------------------------------------------------------------------

  /**
   * Starts an authorization code + PKCE flow for a provider or patient context. Returns the URL to send the user
   * to, plus `state` and `codeVerifier`, which the caller keeps (server side) until the redirect comes back.
   */
  async beginAuthorization(input: {
    tenantId: string;
    redirectUri: string;
    scope?: string;
    loginHint?: string;
    launch?: string;
  }): Promise<{ authorizationUrl: string; state: string; codeVerifier: string }> {
    const tenant = await this.#activeTenant(input.tenantId);
    const endpoints = await discoverSmartEndpoints(tenant.fhirBaseUrl, { dispatcher: this.#dispatcher, timeoutMs: this.#o.tokenRequestTimeoutMs });
    if (!endpoints.authorizationEndpoint) {
      throw new TetherError('AUTH_DISCOVERY_FAILED', 'The server advertises no authorization endpoint.');
    }
    const codeVerifier = randomBytes(32).toString('base64url');
    const codeChallenge = createHash('sha256').update(codeVerifier).digest('base64url');
    const state = randomBytes(16).toString('base64url');
    const url = new URL(endpoints.authorizationEndpoint);
    url.search = new URLSearchParams({
      response_type: 'code',
      client_id: tenant.clientId,
      redirect_uri: input.redirectUri,
      scope: input.scope ?? tenant.scopes,
      state,
      aud: tenant.fhirBaseUrl,
      code_challenge: codeChallenge,
      code_challenge_method: 'S256',
      ...(input.loginHint ? { login_hint: input.loginHint } : {}),
      ...(input.launch ? { launch: input.launch } : {}),
    }).toString();
    return { authorizationUrl: url.toString(), state, codeVerifier };
  }

  /**
   * Completes the flow: exchanges the code for tokens and stores them (encrypted) for `context`
   * (`provider:<id>` or `patient:<id>`). Returns the launch context the server sent.
   */
  async completeAuthorization(input: {
    tenantId: string;
    context: TokenContext;
    code: string;
    codeVerifier: string;
    redirectUri: string;
  }): Promise<{ patient: string | undefined; fhirUser: string | undefined; scope: string }> {
    if (input.context === 'system') throw new TetherError('EHR_REQUEST_INVALID', 'The system context uses backend services, not authorization code.');
    const tenant = await this.#activeTenant(input.tenantId);
    const tokenEndpoint = await this.#tokenEndpoint(tenant);
    const auth = await this.#clientAuth(tenant, tokenEndpoint);
    const response = await postTokenRequest(
      tokenEndpoint,
      { grant_type: 'authorization_code', code: input.code, code_verifier: input.codeVerifier, redirect_uri: input.redirectUri, ...auth.form },
      { dispatcher: this.#dispatcher, timeoutMs: this.#o.tokenRequestTimeoutMs, basicAuth: auth.basic },
    );
    const receivedAt = this.#clock();
    const scope = response.scope ?? tenant.scopes;
    await this.#store.tokens.withLock(tenant.id, input.context, async () => {
      const row = await this.#store.tokens.get(tenant.id, input.context);
      const saved = await this.#store.tokens.compareAndSet(tenant.id, input.context, row?.version ?? 0, {
        accessTokenCiphertext: this.#keyring.encrypt(tenant.id, tenant.dataKeyWrapped, `access-token:${input.context}`, response.accessToken),
        accessExpiresAt: receivedAt + response.expiresIn * 1000,
        accessIssuedAt: receivedAt,
        refreshTokenCiphertext: response.refreshToken
          ? this.#keyring.encrypt(tenant.id, tenant.dataKeyWrapped, `refresh-token:${input.context}`, response.refreshToken)
          : null,
        scope,
      });
      if (!saved) throw new TetherError('STORE_UNAVAILABLE', 'The token row changed during authorization.');
    });
    this.#cache.set(key(tenant.id, input.context), {
      accessToken: response.accessToken,
      issuedAt: receivedAt,
      expiresAt: receivedAt + response.expiresIn * 1000,
      scope,
      scopes: parseScopes(scope),
    });
    this.events.emit('token:refreshed', { tenantId: tenant.id, context: input.context, reason: 'initial', expiresInSeconds: response.expiresIn, rotated: false });
    return { patient: response.patient, fhirUser: response.fhirUser, scope };
  }
}
