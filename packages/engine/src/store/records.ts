/**
 * What both store implementations share: input validation, the mapping between records and rows, and the token
 * bucket arithmetic. Keeping these in one place is what lets one conformance suite hold both backends to the
 * same behaviour.
 */
import { z } from 'zod';
import { TetherError } from '@tether/core';
import type { NewTenant, RateLimitDecision, TenantPatch, TenantRecord, TokenRecord, TokenWrite } from './types.js';

const id = z.string().min(1).max(255);
const buffer = z.instanceof(Buffer);
const epochMs = z.number().int().min(0);

const tenantFields = {
  vendor: z.string().min(1).max(64),
  fhirBaseUrl: z.string().min(1).max(2_048),
  environment: z.enum(['sandbox', 'production']),
  authMethod: z.enum(['backend-services', 'client-secret', 'authorization-code']),
  clientId: z.string().min(1).max(1_024),
  scopes: z.string().max(8_192),
  tokenEndpoint: z.string().min(1).max(2_048).nullable(),
  state: z.enum(['active', 'auth_paused', 'disabled']),
  stateReason: z.string().max(1_024).nullable(),
  dataKeyWrapped: buffer,
  credentialsCiphertext: buffer.nullable(),
};

const newTenantSchema = z
  .object({
    id,
    vendor: tenantFields.vendor,
    fhirBaseUrl: tenantFields.fhirBaseUrl,
    environment: tenantFields.environment,
    authMethod: tenantFields.authMethod,
    clientId: tenantFields.clientId,
    scopes: tenantFields.scopes,
    tokenEndpoint: tenantFields.tokenEndpoint,
    dataKeyWrapped: tenantFields.dataKeyWrapped,
    credentialsCiphertext: tenantFields.credentialsCiphertext,
    state: tenantFields.state.default('active'),
  })
  .strict();

// `.strict()`: a patch naming `version`, `id` or a typo is a bug, not something to ignore silently.
const tenantPatchSchema = z.object(tenantFields).partial().strict();

const tokenWriteSchema = z
  .object({
    accessTokenCiphertext: buffer.nullable(),
    accessExpiresAt: epochMs.nullable(),
    accessIssuedAt: epochMs.nullable(),
    refreshTokenCiphertext: buffer.nullable(),
    scope: z.string().max(8_192).nullable(),
  })
  .strict();

function parse<S extends z.ZodType>(schema: S, input: unknown, what: string): z.output<S> {
  const parsed = schema.safeParse(input);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    // The path and rule only: field values may be secrets or identifiers.
    throw new TetherError('CONFIG_INVALID', `Invalid ${what} field '${issue?.path.join('.') ?? ''}': ${issue?.message ?? ''}`);
  }
  return parsed.data;
}

export type ValidNewTenant = z.output<typeof newTenantSchema>;

export const validateNewTenant = (tenant: NewTenant): ValidNewTenant => parse(newTenantSchema, tenant, 'tenant');
export const validateTenantId = (value: string): string => parse(id, value, 'tenant id');
export const validateContext = (value: string): string => parse(id, value, 'token context');
export const validateTokenWrite = (next: TokenWrite): TokenWrite => parse(tokenWriteSchema, next, 'token');

/** Returns the patch's defined entries, validated, each with its column name. */
export function validateTenantPatch(patch: TenantPatch): { column: string; value: unknown }[] {
  const valid = parse(tenantPatchSchema, patch, 'tenant patch') as Record<string, unknown>;
  return Object.entries(valid)
    .filter(([, value]) => value !== undefined)
    .map(([key, value]) => ({ column: TENANT_PATCH_COLUMNS[key as keyof TenantPatch], value }));
}

export function validateVersion(expectedVersion: number, what: string): void {
  if (!Number.isSafeInteger(expectedVersion) || expectedVersion < 0) {
    throw new TetherError('CONFIG_INVALID', `Invalid ${what}: expected a non-negative integer.`);
  }
}

/** Patchable fields and their columns; the keys are the only identifiers ever spliced into SQL text. */
const TENANT_PATCH_COLUMNS = {
  vendor: 'vendor',
  fhirBaseUrl: 'fhir_base_url',
  environment: 'environment',
  authMethod: 'auth_method',
  clientId: 'client_id',
  scopes: 'scopes',
  tokenEndpoint: 'token_endpoint',
  state: 'state',
  stateReason: 'state_reason',
  dataKeyWrapped: 'data_key_wrapped',
  credentialsCiphertext: 'credentials_ciphertext',
} as const satisfies Record<keyof Required<TenantPatch>, string>;

/** A `tenants` row as both drivers return it (PostgreSQL returns `bigint` columns as strings). */
export interface TenantRow {
  id: string;
  vendor: string;
  fhir_base_url: string;
  environment: string;
  auth_method: string;
  client_id: string;
  scopes: string;
  token_endpoint: string | null;
  state: string;
  state_reason: string | null;
  data_key_wrapped: Buffer;
  credentials_ciphertext: Buffer | null;
  version: number;
  created_at: number | string;
  updated_at: number | string;
}

/** An `auth_tokens` row as both drivers return it. */
export interface TokenRow {
  tenant_id: string;
  context: string;
  access_token_ciphertext: Buffer | null;
  access_expires_at: number | string | null;
  access_issued_at: number | string | null;
  refresh_token_ciphertext: Buffer | null;
  scope: string | null;
  version: number;
  updated_at: number | string;
}

// Epoch milliseconds stay far below 2^53, so the conversion from PostgreSQL's int8 text is exact.
const ms = (value: number | string): number => Number(value);
const msOrNull = (value: number | string | null): number | null => (value === null ? null : Number(value));

export function tenantFromRow(row: TenantRow): TenantRecord {
  return {
    id: row.id,
    vendor: row.vendor,
    fhirBaseUrl: row.fhir_base_url,
    environment: row.environment as TenantRecord['environment'],
    authMethod: row.auth_method as TenantRecord['authMethod'],
    clientId: row.client_id,
    scopes: row.scopes,
    tokenEndpoint: row.token_endpoint,
    state: row.state as TenantRecord['state'],
    stateReason: row.state_reason,
    dataKeyWrapped: row.data_key_wrapped,
    credentialsCiphertext: row.credentials_ciphertext,
    version: row.version,
    createdAt: ms(row.created_at),
    updatedAt: ms(row.updated_at),
  };
}

export function tokenFromRow(row: TokenRow): TokenRecord {
  return {
    tenantId: row.tenant_id,
    context: row.context,
    accessTokenCiphertext: row.access_token_ciphertext,
    accessExpiresAt: msOrNull(row.access_expires_at),
    accessIssuedAt: msOrNull(row.access_issued_at),
    refreshTokenCiphertext: row.refresh_token_ciphertext,
    scope: row.scope,
    version: row.version,
    updatedAt: ms(row.updated_at),
  };
}

/** Arguments of one bucket take, validated. */
export interface TakeArgs {
  readonly capacity: number;
  readonly refillPerSecond: number;
  readonly now: number;
  readonly cost: number;
}

/**
 * Float tolerance of the "enough tokens?" test, so that a bucket refilled to 0.9999999999 by rounding still
 * serves a cost of 1. Far below anything observable (a millionth of a token).
 */
export const TAKE_EPSILON = 1e-6;

export function validateTake(key: string, capacity: number, refillPerSecond: number, now: number, cost: number): TakeArgs {
  parse(id, key, 'rate limit key');
  const positive = (value: number) => Number.isFinite(value) && value > 0;
  if (!positive(capacity) || !positive(refillPerSecond) || !positive(cost) || cost > capacity) {
    throw new TetherError(
      'CONFIG_INVALID',
      'Invalid rate limit: capacity, refillPerSecond and cost must be positive numbers, with cost <= capacity.',
    );
  }
  if (!Number.isSafeInteger(now) || now < 0) throw new TetherError('CONFIG_INVALID', 'Invalid rate limit: now must be epoch milliseconds.');
  return { capacity, refillPerSecond, now, cost };
}

/** A bucket's persisted state. */
export interface BucketState {
  readonly tokens: number;
  /** Epoch ms up to which `tokens` accounts for refill. */
  readonly updatedAt: number;
}

/**
 * Tokens in the bucket at `now` before the take: the stored tokens plus continuous refill since `updatedAt`,
 * capped at the capacity. A `now` earlier than `updatedAt` (another process's clock is ahead) refills nothing
 * rather than draining the bucket. A bucket seen for the first time starts full.
 *
 * The PostgreSQL store computes the same expression in SQL (see `postgres-store.ts`, TAKE_SQL).
 */
export function refilledTokens(state: BucketState | undefined, args: TakeArgs): number {
  if (!state) return args.capacity;
  const elapsedMs = Math.max(0, args.now - state.updatedAt);
  return Math.min(args.capacity, state.tokens + (elapsedMs * args.refillPerSecond) / 1000);
}

/** The decision for a bucket holding `refilled` tokens, and what it holds afterwards. */
export function decideTake(refilled: number, args: TakeArgs): { decision: RateLimitDecision; remaining: number } {
  if (refilled + TAKE_EPSILON >= args.cost) {
    return { decision: { allowed: true, waitMs: 0 }, remaining: Math.max(0, refilled - args.cost) };
  }
  // The tolerance keeps float noise (0.001 token * 1000 = 1.0000000000000009 ms) from adding a whole millisecond.
  const waitMs = Math.max(1, Math.ceil(((args.cost - refilled) * 1000) / args.refillPerSecond - 1e-6));
  return { decision: { allowed: false, waitMs }, remaining: refilled };
}

/** One take against a bucket read in the same transaction: the decision and the state to write back. */
export function takeFromBucket(state: BucketState | undefined, args: TakeArgs): { decision: RateLimitDecision; next: BucketState } {
  const { decision, remaining } = decideTake(refilledTokens(state, args), args);
  // Time never moves backwards in a bucket: with clocks that disagree across processes, the latest wins.
  return { decision, next: { tokens: remaining, updatedAt: state ? Math.max(state.updatedAt, args.now) : args.now } };
}
