import type { ScopedInteraction } from '@tether/core';

/**
 * What the EHR client needs from the auth broker. The broker implements it; tests may implement it with a
 * static token. The client never sees refresh tokens or credentials.
 */
export interface TokenProvider {
  /**
   * A valid access token for (tenant, context), refreshed proactively by the broker when close to expiry.
   * Throws TetherError `AUTH_TENANT_PAUSED`, `AUTH_GRANT_INVALID` or `AUTH_TOKEN_REQUEST_FAILED`.
   */
  getAccessToken(tenantId: string, context: string): Promise<string>;
  /**
   * The EHR answered 401 to a request made with `rejectedToken`. Returns a fresh token (single-flight: if another
   * caller already replaced `rejectedToken`, its replacement is returned without a new token request). The
   * client calls this at most once per request.
   */
  refreshAfterUnauthorized(tenantId: string, context: string, rejectedToken: string): Promise<string>;
  /**
   * Throws TetherError `EHR_SCOPE_MISSING` (naming the scope that is needed) when the tenant's granted scopes do
   * not cover the interaction, so the call is refused before it is sent. Optional: without it, no precheck.
   */
  assertScope?(tenantId: string, context: string, resourceType: string, interaction: ScopedInteraction): Promise<void>;
}
