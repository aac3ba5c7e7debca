/**
 * The store contract: one interface, two implementations (SQLite embedded, PostgreSQL distributed). Every method
 * is async so both fit. Rows never hold secrets in clear: private keys, client secrets and tokens are stored as
 * ciphertext produced by the auth layer (envelope encryption), the store only moves bytes.
 */

export type Environment = 'sandbox' | 'production';
export type AuthMethod = 'backend-services' | 'client-secret' | 'authorization-code';
/** `auth_paused`: an operator must act (revoked grant, invalid client); no automatic retry. */
export type TenantState = 'active' | 'auth_paused' | 'disabled';

export interface TenantRecord {
  /** Health-system id: the tenant key. */
  readonly id: string;
  /** Vendor profile name (`generic`, `epic`, `oracle`, ...). */
  readonly vendor: string;
  readonly fhirBaseUrl: string;
  readonly environment: Environment;
  readonly authMethod: AuthMethod;
  readonly clientId: string;
  /** Requested scopes, space separated. */
  readonly scopes: string;
  /** Token endpoint when known (discovered or configured). */
  readonly tokenEndpoint: string | null;
  readonly state: TenantState;
  /** Why the tenant is paused or disabled (no PHI, no secrets). */
  readonly stateReason: string | null;
  /** The tenant's data key, wrapped (encrypted) by the master key. */
  readonly dataKeyWrapped: Buffer;
  /** Secret credentials (private JWK or client secret) encrypted with the data key; null when none. */
  readonly credentialsCiphertext: Buffer | null;
  /** Optimistic concurrency version, incremented by every update. */
  readonly version: number;
  /** Epoch ms. */
  readonly createdAt: number;
  readonly updatedAt: number;
}

export type NewTenant = Omit<TenantRecord, 'version' | 'createdAt' | 'updatedAt' | 'state' | 'stateReason'> & {
  readonly state?: TenantState;
};

export type TenantPatch = Partial<
  Pick<TenantRecord, 'vendor' | 'fhirBaseUrl' | 'environment' | 'authMethod' | 'clientId' | 'scopes' | 'tokenEndpoint' | 'credentialsCiphertext' | 'dataKeyWrapped' | 'state' | 'stateReason'>
>;

/**
 * Token state for one (tenant, context). `context` is `system`, `provider:<id>` or `patient:<id>`.
 * Access and refresh tokens are ciphertext; `version` is the compare-and-swap guard for rotation.
 */
export interface TokenRecord {
  readonly tenantId: string;
  readonly context: string;
  readonly accessTokenCiphertext: Buffer | null;
  /** Epoch ms when the access token expires. */
  readonly accessExpiresAt: number | null;
  /** Epoch ms when the access token was issued (to compute the proactive refresh window). */
  readonly accessIssuedAt: number | null;
  readonly refreshTokenCiphertext: Buffer | null;
  /** Granted scope (not secret). */
  readonly scope: string | null;
  readonly version: number;
  readonly updatedAt: number;
}

export type TokenWrite = Omit<TokenRecord, 'version' | 'updatedAt' | 'tenantId' | 'context'>;

export interface TenantRepo {
  /** Creates a tenant at version 1; throws TENANT_EXISTS when the id exists, CONFIG_INVALID when a field is invalid. */
  create(tenant: NewTenant): Promise<TenantRecord>;
  get(id: string): Promise<TenantRecord | undefined>;
  list(): Promise<TenantRecord[]>;
  /**
   * Applies a patch. With `expectedVersion`, only when the row still has that version (returns undefined
   * otherwise). Returns the updated row. Throws TENANT_NOT_FOUND when no tenant has that id.
   */
  update(id: string, patch: TenantPatch, expectedVersion?: number): Promise<TenantRecord | undefined>;
}

export interface TokenRepo {
  get(tenantId: string, context: string): Promise<TokenRecord | undefined>;
  /**
   * Writes the token state only if the stored version is `expectedVersion` (0 = no row yet). Returns the new
   * record, or undefined when another writer got there first. This is how a rotated refresh token is committed:
   * it can never be overwritten by a stale writer, and never lost.
   */
  compareAndSet(tenantId: string, context: string, expectedVersion: number, next: TokenWrite): Promise<TokenRecord | undefined>;
  /**
   * Runs `fn` while holding an exclusive lock on (tenant, context) across every process sharing the store
   * (PostgreSQL: advisory lock; SQLite: one process, an in-process mutex). Used for single-flight refresh: the
   * winner refreshes, the others wait, then read what it stored.
   */
  withLock<T>(tenantId: string, context: string, fn: () => Promise<T>): Promise<T>;
}

export interface RateLimitDecision {
  readonly allowed: boolean;
  /** When not allowed: ms until a token will be available. */
  readonly waitMs: number;
}

export interface RateLimitRepo {
  /**
   * Token bucket shared by every process on the store: takes `cost` tokens from bucket `key` (capacity
   * `capacity`, refilled at `refillPerSecond`) if available. Atomic.
   */
  take(key: string, capacity: number, refillPerSecond: number, now: number, cost?: number): Promise<RateLimitDecision>;
}

export interface Store {
  readonly kind: 'sqlite' | 'postgres';
  readonly tenants: TenantRepo;
  readonly tokens: TokenRepo;
  readonly rateLimits: RateLimitRepo;
  /** Applies pending numbered migrations (idempotent; safe with several processes starting at once). */
  migrate(): Promise<void>;
  close(): Promise<void>;
}
