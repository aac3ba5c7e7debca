/**
 * API authentication and authorisation. Keys are `tk_<id>_<secret>` bearer tokens; the store keeps only their
 * SHA-256. Every route declares its access in `config.access` (roles allowed, or `public`) and `buildApi` refuses
 * to register a route that does not, so no route can be added without a decision. Tenant scope is checked by
 * each handler through {@link Caller.assertTenant} / {@link Caller.allowsTenant} (a key may be limited to tenants).
 */
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { TetherError } from '@tether/core';
import type { ApiKeyRecord, ApiRole, Store } from '../store/index.js';

export const API_ROLES: readonly ApiRole[] = ['submitter', 'operator', 'viewer', 'admin'];

/** Who may call a route. */
export type RouteAccess = { readonly public: true } | { readonly roles: readonly ApiRole[] };

/** Role sets used by the routes. */
export const ANY_ROLE: readonly ApiRole[] = ['viewer', 'submitter', 'operator', 'admin'];
export const SUBMIT: readonly ApiRole[] = ['submitter', 'operator', 'admin'];
export const OPERATE: readonly ApiRole[] = ['operator', 'admin'];
export const ADMIN: readonly ApiRole[] = ['admin'];

/** The authenticated caller of a request. */
export class Caller {
  readonly key: ApiKeyRecord;
  constructor(key: ApiKeyRecord) {
    this.key = key;
  }

  get role(): ApiRole {
    return this.key.role;
  }

  /** Audit actor id: the key id, never its secret. */
  get actor(): string {
    return this.key.id;
  }

  /** PHI (resources, business keys) is shown to operators and admins only. */
  get seesPhi(): boolean {
    return this.key.role === 'operator' || this.key.role === 'admin';
  }

  allowsTenant(tenantId: string): boolean {
    return this.key.tenants === null || this.key.tenants.includes(tenantId);
  }

  /** Throws API_FORBIDDEN when the key is limited to other tenants. */
  assertTenant(tenantId: string): void {
    if (!this.allowsTenant(tenantId)) throw new TetherError('API_FORBIDDEN', 'This API key is not allowed to act on that tenant.');
  }
}

export const hashApiKey = (key: string): string => createHash('sha256').update(key, 'utf8').digest('hex');

const KEY_FORMAT = /^tk_[a-z0-9]{8}_[A-Za-z0-9_-]{43}$/;

/** Creates a key: returns the record and the secret (shown once, never stored). */
export async function createApiKey(
  store: Store,
  input: { name: string; role: ApiRole; tenants?: readonly string[] | null; createdBy: string },
): Promise<{ record: ApiKeyRecord; key: string }> {
  const id = randomUUID().replace(/-/g, '').slice(0, 8);
  const key = `tk_${id}_${randomBytes(32).toString('base64url')}`;
  const record = await store.apiKeys.create({
    id,
    name: input.name,
    prefix: key.slice(0, 12),
    keyHash: hashApiKey(key),
    role: input.role,
    tenants: input.tenants ?? null,
    createdBy: input.createdBy,
  });
  return { record, key };
}

/**
 * Resolves `Authorization: Bearer <key>` to a caller. Throws API_UNAUTHENTICATED for a missing, malformed,
 * unknown or revoked key (one message for all, so a caller learns nothing about which).
 */
export async function authenticate(store: Store, header: string | undefined): Promise<Caller> {
  const match = /^Bearer\s+(\S+)$/i.exec(header ?? '');
  const key = match?.[1];
  if (!key || !KEY_FORMAT.test(key)) throw new TetherError('API_UNAUTHENTICATED');
  const record = await store.apiKeys.findByHash(hashApiKey(key));
  if (!record || record.revokedAt !== null) throw new TetherError('API_UNAUTHENTICATED');
  return new Caller(record);
}

/** Throws API_FORBIDDEN when the caller's role is not among `roles`. */
export function assertRole(caller: Caller, roles: readonly ApiRole[]): void {
  if (!roles.includes(caller.role)) throw new TetherError('API_FORBIDDEN', `The role ${caller.role} may not make this request.`);
}
