import type { IncomingMessage, ServerResponse } from 'node:http';

/** A client allowed to use the sandbox authorization server (the `--clients` JSON file holds an array of these). */
export interface SandboxClientConfig {
  readonly client_id: string;
  /** Optional label. */
  readonly client_name?: string;
  /** Public keys for private_key_jwt (SMART backend services). One of `jwks` / `jwks_uri` / `client_secret`. */
  readonly jwks?: { readonly keys: readonly Record<string, unknown>[] };
  readonly jwks_uri?: string;
  /** For client_secret_basic / client_secret_post clients. */
  readonly client_secret?: string;
  /** Space-separated scopes this client may be granted (SMART v1 or v2 syntax, plus openid/fhirUser/launch/... ). */
  readonly scope: string;
  /** For authorization code clients. */
  readonly redirect_uris?: readonly string[];
  /**
   * Optional: how the client authenticates at the token endpoint. Default: `private_key_jwt` when `jwks` or
   * `jwks_uri` is set, else `client_secret_basic` when `client_secret` is set (which also accepts
   * `client_secret_post`). `none` = public client (authorization code + PKCE only, no credentials).
   */
  readonly token_endpoint_auth_method?: 'private_key_jwt' | 'client_secret_basic' | 'client_secret_post' | 'none';
  /**
   * Optional: grants the client may use. Default: `client_credentials` for confidential clients, plus
   * `authorization_code` and `refresh_token` when `redirect_uris` is non-empty.
   */
  readonly grant_types?: readonly ('client_credentials' | 'authorization_code' | 'refresh_token')[];
}

export type RefreshTokenMode = 'rotate' | 'keep' | 'single-use';

/** What the FHIR server learns about a presented bearer token. */
export interface VerifiedToken {
  readonly clientId: string;
  /** Granted scope, space separated. */
  readonly scope: string;
  /** Epoch seconds. */
  readonly expiresAt: number;
  /** Launch context (authorization code flows): patient id, fhirUser reference. */
  readonly patient?: string;
  readonly fhirUser?: string;
}

export interface SandboxAuthServer {
  /** Handles every request whose path starts with the issuer's path (`/oauth`). */
  handle(req: IncomingMessage, res: ServerResponse): void;
  /** Resolves a bearer token; `null` when unknown, expired or revoked. */
  verifyAccessToken(token: string): Promise<VerifiedToken | null>;
  /** Revokes an access token (fault injection: "token revocation"). */
  revokeAccessToken(token: string): Promise<void>;
  /** The SMART configuration document served at `<fhir base>/.well-known/smart-configuration`. */
  smartConfiguration(): Record<string, unknown>;
  readonly issuer: string;
  readonly tokenEndpoint: string;
  close(): Promise<void>;
}
