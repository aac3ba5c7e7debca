import { request, type Dispatcher } from 'undici';
import { TetherError } from '@tether/core';

/** Default timeout (ms) for one discovery or token endpoint request. */
export const DEFAULT_TOKEN_REQUEST_TIMEOUT_MS = 10_000;

/** What Tether needs from a server's SMART configuration. */
export interface SmartEndpoints {
  readonly tokenEndpoint: string;
  readonly authorizationEndpoint: string | undefined;
  readonly revocationEndpoint: string | undefined;
  readonly capabilities: readonly string[];
  readonly scopesSupported: readonly string[];
  /** Where the endpoints came from. */
  readonly source: 'smart-configuration' | 'capability-statement';
}

interface HttpOptions {
  readonly dispatcher?: Dispatcher | undefined;
  readonly timeoutMs?: number | undefined;
}

async function getJson(url: string, opts: HttpOptions): Promise<{ status: number; body: unknown }> {
  const timeout = opts.timeoutMs ?? DEFAULT_TOKEN_REQUEST_TIMEOUT_MS;
  const res = await request(url, {
    method: 'GET',
    headers: { accept: 'application/json, application/fhir+json' },
    headersTimeout: timeout,
    bodyTimeout: timeout,
    signal: AbortSignal.timeout(timeout),
    ...(opts.dispatcher ? { dispatcher: opts.dispatcher } : {}),
  });
  const text = await res.body.text();
  try {
    return { status: res.statusCode, body: text ? JSON.parse(text) : undefined };
  } catch {
    return { status: res.statusCode, body: undefined };
  }
}

/**
 * Discovers the OAuth endpoints of a FHIR server: `<base>/.well-known/smart-configuration` first, then the
 * CapabilityStatement's `oauth-uris` security extension. Throws AUTH_DISCOVERY_FAILED.
 */
export async function discoverSmartEndpoints(fhirBaseUrl: string, opts: HttpOptions = {}): Promise<SmartEndpoints> {
  const base = fhirBaseUrl.replace(/\/+$/, '');
  let firstError: unknown;
  try {
    const res = await getJson(`${base}/.well-known/smart-configuration`, opts);
    const b = res.body as Record<string, unknown> | undefined;
    if (res.status === 200 && typeof b?.['token_endpoint'] === 'string') {
      return {
        tokenEndpoint: b['token_endpoint'],
        authorizationEndpoint: typeof b['authorization_endpoint'] === 'string' ? b['authorization_endpoint'] : undefined,
        revocationEndpoint: typeof b['revocation_endpoint'] === 'string' ? b['revocation_endpoint'] : undefined,
        capabilities: Array.isArray(b['capabilities']) ? (b['capabilities'] as string[]) : [],
        scopesSupported: Array.isArray(b['scopes_supported']) ? (b['scopes_supported'] as string[]) : [],
        source: 'smart-configuration',
      };
    }
  } catch (err) {
    firstError = err;
  }
  try {
    const res = await getJson(`${base}/metadata`, opts);
    const rest = (res.body as { rest?: { security?: { extension?: { url?: string; extension?: { url?: string; valueUri?: string }[] }[] } }[] })?.rest;
    for (const r of rest ?? []) {
      for (const ext of r.security?.extension ?? []) {
        if (!ext.url?.endsWith('/oauth-uris')) continue;
        const uri = (name: string): string | undefined => ext.extension?.find((e) => e.url === name)?.valueUri;
        const token = uri('token');
        if (token) {
          return {
            tokenEndpoint: token,
            authorizationEndpoint: uri('authorize'),
            revocationEndpoint: uri('revoke'),
            capabilities: [],
            scopesSupported: [],
            source: 'capability-statement',
          };
        }
      }
    }
  } catch (err) {
    firstError ??= err;
  }
  throw new TetherError('AUTH_DISCOVERY_FAILED', 'Neither .well-known/smart-configuration nor the CapabilityStatement names a token endpoint.', {
    ...(firstError ? { cause: firstError } : {}),
  });
}

/** A parsed token endpoint answer. Secrets stay in this object; never log it. */
export interface TokenResponse {
  readonly accessToken: string;
  /** Seconds, as the server said (default 300 when missing). */
  readonly expiresIn: number;
  readonly scope: string | undefined;
  readonly refreshToken: string | undefined;
  /** Launch context (authorization code flows). */
  readonly patient: string | undefined;
  readonly fhirUser: string | undefined;
  /** Epoch ms of the server's `Date` header, when present (for clock-skew detection). */
  readonly serverDate: number | undefined;
}

/** Token endpoint error codes after which retrying cannot help: the grant or the client is broken. */
const PERMANENT_OAUTH_ERRORS = new Set(['invalid_grant', 'invalid_client', 'unauthorized_client', 'unsupported_grant_type', 'invalid_scope', 'invalid_request', 'access_denied']);

/**
 * POSTs a form to a token endpoint and classifies the answer:
 * - 200 with an access token → TokenResponse;
 * - a permanent OAuth error (`invalid_grant`, `invalid_client`, ...; any 4xx but 429) → AUTH_GRANT_INVALID with
 *   `details.oauthError` (the error code only: descriptions may carry details we must not log);
 * - network errors, timeouts, 429 and 5xx → AUTH_TOKEN_REQUEST_FAILED (transient) with `details.retryAfterMs`
 *   when the server sent Retry-After.
 */
export async function postTokenRequest(
  tokenEndpoint: string,
  form: Record<string, string>,
  opts: HttpOptions & { basicAuth?: { clientId: string; clientSecret: string } | undefined },
): Promise<TokenResponse> {
  const timeout = opts.timeoutMs ?? DEFAULT_TOKEN_REQUEST_TIMEOUT_MS;
  const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' };
  if (opts.basicAuth) {
    // RFC 6749 §2.3.1: form-urlencode id and secret before base64.
    const enc = (s: string): string => encodeURIComponent(s).replace(/%20/g, '+');
    headers['authorization'] = `Basic ${Buffer.from(`${enc(opts.basicAuth.clientId)}:${enc(opts.basicAuth.clientSecret)}`).toString('base64')}`;
  }
  let res: Dispatcher.ResponseData;
  try {
    res = await request(tokenEndpoint, {
      method: 'POST',
      headers,
      body: new URLSearchParams(form).toString(),
      headersTimeout: timeout,
      bodyTimeout: timeout,
      signal: AbortSignal.timeout(timeout),
      ...(opts.dispatcher ? { dispatcher: opts.dispatcher } : {}),
    });
  } catch (err) {
    throw new TetherError('AUTH_TOKEN_REQUEST_FAILED', 'The token endpoint could not be reached.', { cause: err });
  }
  let body: Record<string, unknown> = {};
  try {
    const text = await res.body.text();
    body = text ? (JSON.parse(text) as Record<string, unknown>) : {};
  } catch (err) {
    if (res.statusCode === 200) throw new TetherError('AUTH_TOKEN_REQUEST_FAILED', 'The token endpoint answered invalid JSON.', { cause: err });
  }
  const dateHeader = res.headers['date'];
  const serverDate = typeof dateHeader === 'string' ? Date.parse(dateHeader) : Number.NaN;
  if (res.statusCode === 200 && typeof body['access_token'] === 'string') {
    return {
      accessToken: body['access_token'],
      expiresIn: typeof body['expires_in'] === 'number' && body['expires_in'] > 0 ? body['expires_in'] : 300,
      scope: typeof body['scope'] === 'string' ? body['scope'] : undefined,
      refreshToken: typeof body['refresh_token'] === 'string' ? body['refresh_token'] : undefined,
      patient: typeof body['patient'] === 'string' ? body['patient'] : undefined,
      fhirUser: typeof body['fhirUser'] === 'string' ? body['fhirUser'] : undefined,
      serverDate: Number.isFinite(serverDate) ? serverDate : undefined,
    };
  }
  const oauthError = typeof body['error'] === 'string' ? body['error'] : undefined;
  const status = res.statusCode;
  if (status >= 400 && status < 500 && status !== 429 && status !== 408) {
    if (oauthError === undefined || PERMANENT_OAUTH_ERRORS.has(oauthError) || status === 400 || status === 401) {
      throw new TetherError('AUTH_GRANT_INVALID', `The token endpoint refused the request (${oauthError ?? `HTTP ${status}`}).`, {
        details: { oauthError: oauthError ?? null, status, ...(Number.isFinite(serverDate) ? { serverDate } : {}) },
      });
    }
  }
  const retryAfter = res.headers['retry-after'];
  const retryAfterSeconds = typeof retryAfter === 'string' ? Number(retryAfter) : Number.NaN;
  throw new TetherError('AUTH_TOKEN_REQUEST_FAILED', `The token endpoint answered HTTP ${status}.`, {
    details: { status, ...(Number.isFinite(retryAfterSeconds) ? { retryAfterMs: retryAfterSeconds * 1000 } : {}) },
  });
}
