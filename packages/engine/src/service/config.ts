/**
 * Service configuration: one JSON file (optional) plus environment overrides, validated with zod. Production mode
 * fails closed: it refuses to start without a master key, with the embedded sandbox, without an explicit API
 * auth setting, and (checked once the store is open, see `assertProductionTenants`) with a sandbox tenant or a
 * plain-HTTP EHR base URL. See docs/operations.md for every setting.
 */
import { existsSync, readFileSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import { z } from 'zod';
import { TetherError } from '@tether/core';
import { ehrClientSettingsSchema } from '../client/index.js';
import type { TenantRecord } from '../store/index.js';

const port = z.number().int().min(0).max(65_535);

export const serviceConfigSchema = z
  .object({
    /** `production` fails closed (see the module comment). */
    mode: z.enum(['development', 'production']).default('development'),
    /** Where the embedded store, the admin key and (in development) the master key live. */
    dataDir: z.string().min(1).default('.tether'),
    http: z
      .object({
        host: z.string().min(1).default('127.0.0.1'),
        port: port.default(8080),
        /** Largest accepted request body. */
        bodyLimitBytes: z.number().int().min(1_024).max(64 * 1_048_576).default(1_048_576),
      })
      .strict()
      .default({ host: '127.0.0.1', port: 8080, bodyLimitBytes: 1_048_576 }),
    api: z
      .object({
        /** How API callers authenticate. `api-key`: `Authorization: Bearer <key>`, keys stored hashed. */
        auth: z.enum(['api-key']).optional(),
        /** Whether GET /metrics needs a key (role viewer or above). */
        metricsRequireAuth: z.boolean().default(true),
      })
      .strict()
      .default({ metricsRequireAuth: true }),
    store: z
      .discriminatedUnion('kind', [
        z.object({ kind: z.literal('sqlite'), path: z.string().min(1).optional() }).strict(),
        z.object({ kind: z.literal('postgres'), url: z.string().min(1) }).strict(),
      ])
      .default({ kind: 'sqlite' }),
    sandbox: z
      .object({
        /** Run the embedded sandbox EHR and register it as tenant `demo`. Default: on in development. */
        enabled: z.boolean().optional(),
        /** Port of the embedded sandbox (0: any free port). */
        port: port.default(0),
        seed: z.number().int().min(0).default(1),
        tokenTtlSeconds: z.number().int().min(5).max(86_400).default(300),
      })
      .strict()
      .default({ port: 0, seed: 1, tokenTtlSeconds: 300 }),
    worker: z
      .object({
        enabled: z.boolean().default(true),
        concurrency: z.number().int().min(1).max(256).default(8),
        leaseMs: z.number().int().min(1_000).default(30_000),
        pollIntervalMs: z.number().int().min(10).default(200),
        verifyWindowMs: z.number().int().min(0).default(5_000),
        /** Attempts per command before it goes to the exception queue. */
        maxAttempts: z.number().int().min(1).max(1_000).default(8),
        backoffBaseMs: z.number().int().min(1).default(1_000),
        backoffMaxMs: z.number().int().min(1).default(300_000),
        /** Poison protection: patient-specific failures allowed per (tenant, patient) in the window; 0 = off. */
        patientFailureBudget: z.number().int().min(0).max(1_000_000).default(10),
        patientFailureWindowMs: z.number().int().min(1_000).default(3_600_000),
      })
      .strict()
      .default({ enabled: true, concurrency: 8, leaseMs: 30_000, pollIntervalMs: 200, verifyWindowMs: 5_000, maxAttempts: 8, backoffBaseMs: 1_000, backoffMaxMs: 300_000, patientFailureBudget: 10, patientFailureWindowMs: 3_600_000 }),
    /**
     * EHR client settings (timeouts, retries, breaker, concurrency, rate limit): every option of docs/client.md,
     * each optional with the documented default.
     */
    client: ehrClientSettingsSchema.optional(),
    log: z
      .object({ level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info') })
      .strict()
      .default({ level: 'info' }),
  })
  .strict();

export type ServiceConfigInput = z.input<typeof serviceConfigSchema>;
export type ServiceConfig = z.output<typeof serviceConfigSchema> & {
  /** Absolute data directory. */
  readonly dataDir: string;
  readonly sandbox: z.output<typeof serviceConfigSchema>['sandbox'] & { readonly enabled: boolean };
  /** From `TETHER_MASTER_KEY` only (never from the file). */
  readonly masterKey: string | undefined;
};

/** Environment variables that override the file (documented in docs/operations.md). */
export const ENV_OVERRIDES = {
  TETHER_MODE: 'mode',
  TETHER_DATA_DIR: 'dataDir',
  TETHER_HOST: 'http.host',
  TETHER_PORT: 'http.port',
  TETHER_API_AUTH: 'api.auth',
  TETHER_METRICS_REQUIRE_AUTH: 'api.metricsRequireAuth',
  TETHER_STORE: 'store.kind',
  TETHER_POSTGRES_URL: 'store.url',
  TETHER_SQLITE_PATH: 'store.path',
  TETHER_SANDBOX: 'sandbox.enabled',
  TETHER_SANDBOX_PORT: 'sandbox.port',
  TETHER_WORKERS: 'worker.enabled',
  TETHER_WORKER_CONCURRENCY: 'worker.concurrency',
  TETHER_LOG_LEVEL: 'log.level',
} as const;

function coerce(value: string): unknown {
  if (value === 'true' || value === 'on' || value === '1') return true;
  if (value === 'false' || value === 'off' || value === '0') return false;
  if (/^-?\d+$/.test(value)) return Number(value);
  return value;
}

function setPath(target: Record<string, unknown>, path: string, value: unknown): void {
  const parts = path.split('.');
  let node = target;
  for (const part of parts.slice(0, -1)) {
    const next = node[part];
    if (typeof next !== 'object' || next === null || Array.isArray(next)) node[part] = {};
    node = node[part] as Record<string, unknown>;
  }
  node[parts[parts.length - 1] as string] = value;
}

function readConfigFile(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    throw new TetherError('CONFIG_INVALID', `Cannot read the configuration file ${file}.`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new TetherError('CONFIG_INVALID', `The configuration file ${file} is not valid JSON.`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new TetherError('CONFIG_INVALID', `The configuration file ${file} must hold a JSON object.`);
  }
  return parsed as Record<string, unknown>;
}

export interface LoadConfigOptions {
  /** Configuration file; default `TETHER_CONFIG`, else `./tether.config.json` when it exists. */
  readonly file?: string;
  readonly env?: NodeJS.ProcessEnv;
  /** Values that win over file and environment (CLI flags, tests). */
  readonly overrides?: ServiceConfigInput;
  readonly cwd?: string;
}

function merge(base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const b = out[k];
    out[k] =
      typeof v === 'object' && v !== null && !Array.isArray(v) && typeof b === 'object' && b !== null && !Array.isArray(b)
        ? merge(b as Record<string, unknown>, v as Record<string, unknown>)
        : v;
  }
  return out;
}

/**
 * Loads and validates the configuration. Throws `CONFIG_INVALID` naming the setting (never a secret's value)
 * and `CONFIG_UNSAFE` when production mode would start unsafely.
 */
export function loadServiceConfig(options: LoadConfigOptions = {}): ServiceConfig {
  const env = options.env ?? process.env;
  const cwd = options.cwd ?? process.cwd();
  const file = options.file ?? env['TETHER_CONFIG'] ?? (existsSync(join(cwd, 'tether.config.json')) ? join(cwd, 'tether.config.json') : undefined);
  let raw: Record<string, unknown> = file ? readConfigFile(resolve(cwd, file)) : {};
  if ('masterKey' in raw) throw new TetherError('CONFIG_INVALID', 'The master key is read from TETHER_MASTER_KEY only, never from the configuration file.');
  for (const [name, path] of Object.entries(ENV_OVERRIDES)) {
    const value = env[name];
    if (value !== undefined && value !== '') setPath(raw, path, coerce(value));
  }
  // A PostgreSQL URL alone selects the PostgreSQL store.
  const store = raw['store'] as Record<string, unknown> | undefined;
  if (store && store['url'] !== undefined && store['kind'] === undefined) store['kind'] = 'postgres';
  if (store && store['kind'] === 'sqlite') delete store['url'];
  if (options.overrides) raw = merge(raw, options.overrides as Record<string, unknown>);

  const parsed = serviceConfigSchema.safeParse(raw);
  if (!parsed.success) {
    const fields = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw new TetherError('CONFIG_INVALID', `Invalid configuration${file ? ` (${file})` : ''}: ${fields}.`);
  }
  const c = parsed.data;
  const dataDir = isAbsolute(c.dataDir) ? c.dataDir : resolve(cwd, c.dataDir);
  const masterKey = env['TETHER_MASTER_KEY'] || undefined;
  const config: ServiceConfig = {
    ...c,
    dataDir,
    sandbox: { ...c.sandbox, enabled: c.sandbox.enabled ?? c.mode === 'development' },
    masterKey,
  };
  if (config.mode === 'production') assertProductionConfig(config);
  return config;
}

/** The checks production mode makes before anything starts. */
export function assertProductionConfig(config: ServiceConfig): void {
  const problems: string[] = [];
  if (!config.masterKey) problems.push('TETHER_MASTER_KEY is not set (secrets at rest need it)');
  if (config.sandbox.enabled) problems.push('the embedded sandbox EHR is enabled (set sandbox.enabled false / TETHER_SANDBOX=off)');
  if (config.api.auth === undefined) problems.push('api.auth is not set (set it to "api-key" / TETHER_API_AUTH=api-key)');
  if (problems.length > 0) {
    throw new TetherError('CONFIG_UNSAFE', `Refusing to start in production mode: ${problems.join('; ')}.`);
  }
}

/** Production refuses sandbox tenants and plain-HTTP EHR base URLs (checked once the store is open). */
export function assertProductionTenants(tenants: readonly TenantRecord[]): void {
  const problems: string[] = [];
  for (const t of tenants) {
    if (t.environment === 'sandbox') problems.push(`tenant ${t.id} is a sandbox tenant`);
    if (!t.fhirBaseUrl.startsWith('https://')) problems.push(`tenant ${t.id} has a plain-HTTP EHR base URL`);
  }
  if (problems.length > 0) throw new TetherError('CONFIG_UNSAFE', `Refusing to start in production mode: ${problems.join('; ')}.`);
}
