/**
 * Test harness for the write-back protocol: a real sandbox (auth on, real sockets), a tenant registered through
 * TenantService with a TokenBroker, a real EHR client, and a store (SQLite file or a throwaway PostgreSQL
 * database). The worker clock is real time plus an offset the test can advance (to skip backoffs and expire
 * leases) without touching the sandbox.
 */
import { exportJWK, generateKeyPair } from 'jose';
import { startSandbox, writeLog, type Sandbox } from '@tether/sandbox';
import { generateMasterKey, Keyring, parseMasterKey, TenantService, TokenBroker } from '../../auth/index.js';
import { createEhrClient, type EhrClient, type EhrTarget } from '../../client/index.js';
import { PgTestDatabases, SqliteTestFiles } from '../../store/__fixtures__/test-databases.js';
import { PostgresStore, SqliteStore, type Store } from '../../store/index.js';
import { BUSINESS_KEY_SYSTEM, submitCommand, type CommandInput, type SubmitResult } from '../command.js';
import { WritebackWorker } from '../worker.js';
import type { WritebackWorkerOptions } from '../options.js';

export const TENANT = 'clinic';
export const SCOPES = 'system/Observation.cruds system/Patient.cruds';

export interface Harness {
  readonly sandbox: Sandbox;
  readonly store: Store;
  readonly client: EhrClient;
  readonly target: EhrTarget;
  /** Opens another store on the same database (PostgreSQL: a second "process"). */
  openStore(): Store;
  /** The worker clock: real time plus `advance()`d offset. */
  clock(): number;
  advance(ms: number): void;
  worker(options?: Partial<WritebackWorkerOptions>): WritebackWorker;
  submit(input: Partial<CommandInput> & { businessKey: string }): Promise<SubmitResult>;
  setFaults(profile: unknown): Promise<void>;
  writes(): Promise<Record<string, unknown>[]>;
  /** Write-log entries with op `create` whose resource carries the business key. */
  creates(businessKey: string): Promise<Record<string, unknown>[]>;
  close(): Promise<void>;
}

export function observation(value: number, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    resourceType: 'Observation',
    status: 'final',
    identifier: [{ system: 'urn:source:lab', value: `lab-${value}` }],
    code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] },
    subject: { reference: 'Patient/p-1' },
    effectiveDateTime: '2024-03-05T10:00:00Z',
    valueQuantity: { value, unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' },
    ...extra,
  };
}

export async function startHarness(options: { kind?: 'sqlite' | 'postgres'; faults?: unknown; conditionalCreate?: boolean } = {}): Promise<Harness> {
  const kind = options.kind ?? 'sqlite';
  const { publicKey, privateKey } = await generateKeyPair('ES384', { extractable: true });
  const sandbox = await startSandbox({
    auth: true,
    ...(options.faults === undefined ? {} : { faults: options.faults }),
    ...(options.conditionalCreate === false ? { profile: { conditionalCreate: false } } : {}),
    clients: [{ client_id: 'tether', scope: SCOPES, jwks: { keys: [{ ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES384' }] } }],
  });

  const files = kind === 'sqlite' ? new SqliteTestFiles() : undefined;
  const databases = kind === 'postgres' ? new PgTestDatabases() : undefined;
  const location = files ? files.path() : await databases!.create();
  const stores: Store[] = [];
  const openStore = (): Store => {
    // SQLite: one process owns the file (exclusive), so "another store" is the same one.
    const store =
      kind === 'sqlite'
        ? (stores[0] ?? new SqliteStore({ kind: 'sqlite', path: location }))
        : new PostgresStore({ kind: 'postgres', connectionString: location, poolSize: 12 });
    if (!stores.includes(store)) stores.push(store);
    return store;
  };
  const store = openStore();
  await store.migrate();

  const keyring = new Keyring(parseMasterKey(generateMasterKey()));
  const broker = new TokenBroker({ store, keyring });
  await new TenantService({ store, keyring, broker }).register({
    id: TENANT,
    fhirBaseUrl: sandbox.fhirBaseUrl,
    environment: 'sandbox',
    authMethod: 'backend-services',
    clientId: 'tether',
    scopes: SCOPES,
    privateJwk: { ...(await exportJWK(privateKey)), kid: 'k1', alg: 'ES384' },
  });
  const client = createEhrClient({ tokenProvider: broker, rateLimit: null, concurrency: 32 });
  let offset = 0;
  const clock = () => Date.now() + offset;
  const workers: WritebackWorker[] = [];

  const harness: Harness = {
    sandbox,
    store,
    client,
    target: { tenantId: TENANT, baseUrl: sandbox.fhirBaseUrl },
    openStore,
    clock,
    advance: (ms) => {
      offset += ms;
    },
    worker(extra = {}) {
      const worker = new WritebackWorker({
        store,
        client,
        clock,
        leaseMs: 10_000,
        verifyWindowMs: 600,
        verifyPolls: 3,
        backoffBaseMs: 20,
        backoffMaxMs: 100,
        pollIntervalMs: 20,
        ...(options.conditionalCreate === false ? { vendorProfile: () => ({ conditionalCreate: false }) } : {}),
        ...extra,
      });
      workers.push(worker);
      return worker;
    },
    submit: (input) =>
      submitCommand(store, {
        tenantId: TENANT,
        context: 'system',
        action: 'create',
        resourceType: 'Observation',
        resource: observation(72),
        requestedBy: 'test',
        ...input,
      }),
    async setFaults(profile) {
      const res = await fetch(`${sandbox.url}/_admin/faults`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(profile) });
      if (res.status !== 200) throw new Error(`fault profile refused: ${await res.text()}`);
    },
    writes: () => writeLog(sandbox.url),
    async creates(businessKey) {
      return (await writeLog(sandbox.url)).filter(
        (w) => w['op'] === 'create' && Array.isArray(w['identifiers']) && (w['identifiers'] as string[]).includes(`${BUSINESS_KEY_SYSTEM}|${businessKey}`),
      );
    },
    async close() {
      await Promise.all(workers.map((w) => w.stop()));
      await client.close();
      for (const s of stores) await s.close();
      await sandbox.close();
      files?.remove();
      await databases?.dropAll();
    },
  };
  return harness;
}
