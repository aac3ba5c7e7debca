export * from './assertion.js';
export * from './broker.js';
export * from './keyring.js';
export * from './tenants.js';
export { discoverSmartEndpoints, postTokenRequest, DEFAULT_TOKEN_REQUEST_TIMEOUT_MS } from './token-endpoint.js';
export type { SmartEndpoints, TokenResponse } from './token-endpoint.js';
