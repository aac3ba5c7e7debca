import { z } from 'zod';
import { TetherError } from '@tether/core';
import type { AuthMethod, Environment, Store, TenantRecord } from '../store/index.js';
import type { TenantCredentials, TokenBroker } from './broker.js';
import type { Keyring } from './keyring.js';

const TENANT_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** Input of {@link TenantService.register}. Secrets are write-only: they are encrypted and never returned. */
export const tenantInputSchema = z
  .object({
    /** Health-system id. */
    id: z.string().regex(TENANT_ID, 'letters, digits, dot, underscore or dash; at most 64'),
    vendor: z.string().min(1).default('generic'),
    fhirBaseUrl: z.string().url(),
    environment: z.enum(['sandbox', 'production']),
    authMethod: z.enum(['backend-services', 'client-secret', 'authorization-code']),
    clientId: z.string().min(1),
    /** Requested scopes, space separated. */
    scopes: z.string().min(1),
    tokenEndpoint: z.string().url().optional(),
    /** Private JWK (backend services; optional for authorization code with private_key_jwt). */
    privateJwk: z.record(z.string(), z.unknown()).optional(),
    clientSecret: z.string().min(1).optional(),
  })
  .strict()
  .superRefine((t, ctx) => {
    if (t.authMethod === 'backend-services' && !t.privateJwk) ctx.addIssue({ code: 'custom', path: ['privateJwk'], message: 'backend-services needs a private JWK' });
    if (t.authMethod === 'client-secret' && !t.clientSecret) ctx.addIssue({ code: 'custom', path: ['clientSecret'], message: 'client-secret needs a client secret' });
    if (t.privateJwk && typeof t.privateJwk['d'] !== 'string') ctx.addIssue({ code: 'custom', path: ['privateJwk'], message: 'must be a private key (with d)' });
    if (t.environment === 'production' && !t.fhirBaseUrl.startsWith('https://')) {
      ctx.addIssue({ code: 'custom', path: ['fhirBaseUrl'], message: 'production tenants need an https URL' });
    }
  });

export type TenantInput = z.input<typeof tenantInputSchema>;

/** Input of {@link TenantService.update}: every field optional; the id and environment never change. */
export const tenantUpdateSchema = z
  .object({
    vendor: z.string().min(1).optional(),
    fhirBaseUrl: z.string().url().optional(),
    clientId: z.string().min(1).optional(),
    scopes: z.string().min(1).optional(),
    tokenEndpoint: z.string().url().nullable().optional(),
    privateJwk: z.record(z.string(), z.unknown()).optional(),
    clientSecret: z.string().min(1).optional(),
    state: z.enum(['active', 'disabled']).optional(),
  })
  .strict();

export type TenantUpdate = z.input<typeof tenantUpdateSchema>;

/** A tenant as shown to operators and APIs: no secrets, only whether they are set. */
export interface TenantView {
  readonly id: string;
  readonly vendor: string;
  readonly fhirBaseUrl: string;
  readonly environment: Environment;
  readonly authMethod: AuthMethod;
  readonly clientId: string;
  readonly scopes: string;
  readonly tokenEndpoint: string | null;
  readonly state: TenantRecord['state'];
  readonly stateReason: string | null;
  readonly hasPrivateKey: boolean;
  readonly hasClientSecret: boolean;
}

/** Registers tenants with encrypted credentials, and lets an operator resume a paused tenant. */
export class TenantService {
  readonly #store: Store;
  readonly #keyring: Keyring;
  readonly #broker: TokenBroker | undefined;

  constructor(options: { store: Store; keyring: Keyring; broker?: TokenBroker }) {
    this.#store = options.store;
    this.#keyring = options.keyring;
    this.#broker = options.broker;
  }

  async register(input: TenantInput): Promise<TenantView> {
    const parsed = tenantInputSchema.safeParse(input);
    if (!parsed.success) {
      // Name the fields, never their values (they may be secrets).
      const fields = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
      throw new TetherError('CONFIG_INVALID', `Invalid tenant: ${fields}`);
    }
    const t = parsed.data;
    const dataKeyWrapped = this.#keyring.newWrappedDataKey(t.id);
    const creds: TenantCredentials = {
      ...(t.privateJwk ? { privateJwk: t.privateJwk } : {}),
      ...(t.clientSecret ? { clientSecret: t.clientSecret } : {}),
    };
    const credentialsCiphertext =
      Object.keys(creds).length > 0 ? this.#keyring.encrypt(t.id, dataKeyWrapped, 'credentials', JSON.stringify(creds)) : null;
    const record = await this.#store.tenants.create({
      id: t.id,
      vendor: t.vendor,
      fhirBaseUrl: t.fhirBaseUrl.replace(/\/+$/, ''),
      environment: t.environment,
      authMethod: t.authMethod,
      clientId: t.clientId,
      scopes: t.scopes,
      tokenEndpoint: t.tokenEndpoint ?? null,
      dataKeyWrapped,
      credentialsCiphertext,
    });
    return view(record, creds);
  }

  async get(id: string): Promise<TenantView> {
    const record = await this.#store.tenants.get(id);
    if (!record) throw new TetherError('TENANT_NOT_FOUND', 'No tenant has that id.');
    return view(record, this.#credentials(record));
  }

  async list(): Promise<TenantView[]> {
    return (await this.#store.tenants.list()).map((r) => view(r, this.#credentials(r)));
  }

  /**
   * Changes a tenant's settings. New secrets (private JWK, client secret) replace the stored ones, re-encrypted
   * under the tenant's data key; secrets never come back. `state: 'disabled'` stops all EHR calls for the tenant;
   * `active` re-enables it (and forgets cached tokens, like `resume`). Changing credentials, scopes or URLs also
   * forgets cached tokens, so the next call uses the new settings.
   */
  async update(id: string, input: TenantUpdate): Promise<TenantView> {
    const record = await this.#store.tenants.get(id);
    if (!record) throw new TetherError('TENANT_NOT_FOUND', 'No tenant has that id.');
    const parsed = tenantUpdateSchema.safeParse(input);
    if (!parsed.success) {
      const fields = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
      throw new TetherError('CONFIG_INVALID', `Invalid tenant update: ${fields}`);
    }
    const u = parsed.data;
    const url = u.fhirBaseUrl?.replace(/\/+$/, '');
    if (record.environment === 'production' && url !== undefined && !url.startsWith('https://')) {
      throw new TetherError('CONFIG_INVALID', 'Invalid tenant update: fhirBaseUrl: production tenants need an https URL');
    }
    let credentialsCiphertext: Buffer | null | undefined;
    if (u.privateJwk !== undefined || u.clientSecret !== undefined) {
      if (u.privateJwk && typeof u.privateJwk['d'] !== 'string') throw new TetherError('CONFIG_INVALID', 'Invalid tenant update: privateJwk: must be a private key (with d)');
      const creds: TenantCredentials = { ...this.#credentials(record), ...(u.privateJwk ? { privateJwk: u.privateJwk } : {}), ...(u.clientSecret ? { clientSecret: u.clientSecret } : {}) };
      credentialsCiphertext = this.#keyring.encrypt(record.id, record.dataKeyWrapped, 'credentials', JSON.stringify(creds));
    }
    const next = await this.#store.tenants.update(id, {
      ...(u.vendor !== undefined ? { vendor: u.vendor } : {}),
      ...(url !== undefined ? { fhirBaseUrl: url } : {}),
      ...(u.clientId !== undefined ? { clientId: u.clientId } : {}),
      ...(u.scopes !== undefined ? { scopes: u.scopes } : {}),
      ...(u.tokenEndpoint !== undefined ? { tokenEndpoint: u.tokenEndpoint } : {}),
      ...(credentialsCiphertext !== undefined ? { credentialsCiphertext } : {}),
      ...(u.state !== undefined ? { state: u.state, stateReason: u.state === 'disabled' ? 'operator_disabled' : null } : {}),
    });
    if (!next) throw new TetherError('TENANT_NOT_FOUND', 'No tenant has that id.');
    this.#broker?.forget(id);
    const authChanged = ['fhirBaseUrl', 'clientId', 'scopes', 'tokenEndpoint', 'privateJwk', 'clientSecret'].some((k) => (u as Record<string, unknown>)[k] !== undefined);
    if (authChanged) await this.#dropSystemAccessToken(id);
    return view(next, this.#credentials(next));
  }

  /** Operator action: a paused tenant becomes active again; cached tokens and backoff are forgotten. */
  async resume(id: string): Promise<TenantView> {
    const record = await this.#store.tenants.update(id, { state: 'active', stateReason: null });
    if (!record) throw new TetherError('TENANT_NOT_FOUND', 'No tenant has that id.');
    this.#broker?.forget(id);
    this.#broker?.events.emit('tenant:resumed', { tenantId: id });
    return view(record, this.#credentials(record));
  }

  /**
   * After a change of credentials, scopes or endpoints, the stored system access token (granted under the old
   * settings) must not be used again: it is cleared with compare-and-swap, so the next call requests a new one.
   * User contexts (provider/patient) keep their grants: they were authorised by a person, not by these settings.
   */
  async #dropSystemAccessToken(tenantId: string): Promise<void> {
    for (let tries = 0; tries < 5; tries++) {
      const row = await this.#store.tokens.get(tenantId, 'system');
      if (!row || row.accessTokenCiphertext === null) return;
      const cleared = await this.#store.tokens.compareAndSet(tenantId, 'system', row.version, {
        accessTokenCiphertext: null,
        accessExpiresAt: null,
        accessIssuedAt: null,
        refreshTokenCiphertext: row.refreshTokenCiphertext,
        scope: null,
      });
      if (cleared) return;
    }
  }

  #credentials(record: TenantRecord): TenantCredentials {
    if (!record.credentialsCiphertext) return {};
    return JSON.parse(this.#keyring.decrypt(record.id, record.dataKeyWrapped, 'credentials', record.credentialsCiphertext)) as TenantCredentials;
  }
}

function view(r: TenantRecord, creds: TenantCredentials): TenantView {
  return {
    id: r.id,
    vendor: r.vendor,
    fhirBaseUrl: r.fhirBaseUrl,
    environment: r.environment,
    authMethod: r.authMethod,
    clientId: r.clientId,
    scopes: r.scopes,
    tokenEndpoint: r.tokenEndpoint,
    state: r.state,
    stateReason: r.stateReason,
    hasPrivateKey: creds.privateJwk !== undefined,
    hasClientSecret: creds.clientSecret !== undefined,
  };
}
