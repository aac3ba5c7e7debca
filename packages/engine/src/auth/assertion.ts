import { randomUUID } from 'node:crypto';
import { importJWK, SignJWT, type JWK } from 'jose';
import { request } from 'undici';

export interface ClientAssertionInput {
  readonly clientId: string;
  readonly tokenEndpoint: string;
  readonly privateJwk: JWK & { alg?: string; kid?: string };
  /** Assertion lifetime in seconds (SMART allows at most 300). */
  readonly lifetimeSeconds?: number;
}

/**
 * Signs a SMART backend-services client assertion (RFC 7523): iss = sub = client id, aud = token endpoint,
 * a unique jti, exp at most five minutes ahead.
 */
export async function signClientAssertion(input: ClientAssertionInput): Promise<string> {
  const alg = input.privateJwk.alg ?? 'ES384';
  const key = await importJWK(input.privateJwk, alg);
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({})
    .setProtectedHeader({ alg, typ: 'JWT', ...(input.privateJwk.kid ? { kid: input.privateJwk.kid } : {}) })
    .setIssuer(input.clientId)
    .setSubject(input.clientId)
    .setAudience(input.tokenEndpoint)
    .setJti(randomUUID())
    .setIssuedAt(now)
    .setExpirationTime(now + Math.min(input.lifetimeSeconds ?? 240, 300))
    .sign(key);
}

/**
 * Requests an access token with the client_credentials grant and a signed assertion. This is the CLI's one-shot
 * helper (`tether token`); the engine's auth broker owns tokens for real work.
 */
export async function requestBackendToken(
  input: ClientAssertionInput & { readonly scope: string },
): Promise<{ status: number; body: Record<string, unknown> }> {
  const assertion = await signClientAssertion(input);
  const form = new URLSearchParams({
    grant_type: 'client_credentials',
    scope: input.scope,
    client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
    client_assertion: assertion,
  });
  const res = await request(input.tokenEndpoint, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
    body: form.toString(),
    headersTimeout: 10_000,
    bodyTimeout: 10_000,
  });
  const text = await res.body.text();
  let body: Record<string, unknown>;
  try {
    body = JSON.parse(text) as Record<string, unknown>;
  } catch {
    body = { error: 'invalid_response' };
  }
  return { status: res.statusCode, body };
}
