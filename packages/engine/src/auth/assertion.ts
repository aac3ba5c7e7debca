import { randomUUID } from 'node:crypto';
import { importJWK, SignJWT, type JWK } from 'jose';

/** SMART backend services: an assertion may be valid for at most five minutes. */
export const MAX_ASSERTION_LIFETIME_SECONDS = 300;
/** Default assertion lifetime (seconds): well inside the limit, leaving room for clock skew. */
export const DEFAULT_ASSERTION_LIFETIME_SECONDS = 240;

export interface ClientAssertionInput {
  readonly clientId: string;
  /** The `aud`: the token endpoint URL. */
  readonly tokenEndpoint: string;
  /** Private JWK with `alg` (RS384 or ES384) and preferably `kid`. */
  readonly privateJwk: JWK & { alg?: string; kid?: string };
  /** Assertion lifetime in seconds (capped at 300). */
  readonly lifetimeSeconds?: number;
  /** Epoch ms "now" as the authorization server sees it (local clock corrected by measured skew). */
  readonly now?: number;
}

/**
 * Signs a SMART backend-services client assertion (RFC 7523): iss = sub = client id, aud = token endpoint,
 * a unique jti, exp at most five minutes ahead.
 */
export async function signClientAssertion(input: ClientAssertionInput): Promise<string> {
  const alg = input.privateJwk.alg ?? 'ES384';
  const key = await importJWK(input.privateJwk, alg);
  const now = Math.floor((input.now ?? Date.now()) / 1000);
  const lifetime = Math.min(input.lifetimeSeconds ?? DEFAULT_ASSERTION_LIFETIME_SECONDS, MAX_ASSERTION_LIFETIME_SECONDS);
  return new SignJWT({})
    .setProtectedHeader({ alg, typ: 'JWT', ...(input.privateJwk.kid ? { kid: input.privateJwk.kid } : {}) })
    .setIssuer(input.clientId)
    .setSubject(input.clientId)
    .setAudience(input.tokenEndpoint)
    .setJti(randomUUID())
    .setIssuedAt(now)
    .setExpirationTime(now + lifetime)
    .sign(key);
}
