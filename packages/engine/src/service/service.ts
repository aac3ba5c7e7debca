/**
 * The engine as a service (`tether start`, `npm start`): store, auth broker, EHR client, write-back workers, the
 * HTTP API with its console, metrics and health; in development also an embedded sandbox EHR registered as
 * tenant `demo`, so a fresh checkout does something real. SIGTERM drains: the API stops accepting, readiness
 * turns false, in-flight attempts finish, then everything closes.
 */
import { chmodSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { startSandbox, type Sandbox } from '@tether/sandbox';
import { buildApi, consolePlugin, createApiKey, findConsoleDist, type ApiDeps } from '../api/index.js';
import { AuditLog } from '../audit/index.js';
import { createKeyring, TenantService, TokenBroker } from '../auth/index.js';
import { createEhrClient, type EhrClient } from '../client/index.js';
import { DEMO_CLIENT_ID, loadOrCreateDemoClient } from './demo-client.js';
import { createLogger, IdentifierTokenizer, ServiceMetrics } from '../observability/index.js';
import { createStore, type Store } from '../store/index.js';
import { ExceptionQueue, WritebackWorker } from '../writeback/index.js';
import { assertProductionTenants, type ServiceConfig } from './config.js';
import { runDoctor } from './doctor.js';

/** The tenant id of the embedded sandbox EHR. */
export const DEMO_TENANT_ID = 'demo';
/** Scopes the demo tenant requests: what the write-back protocol needs for every resource type. */
export const DEMO_TENANT_SCOPES = 'system/*.cruds';

export interface RunningService {
  /** Base URL of the API and console, e.g. `http://127.0.0.1:8080`. */
  readonly url: string;
  readonly config: ServiceConfig;
  readonly store: Store;
  readonly sandbox: Sandbox | undefined;
  /** Where the bootstrap admin key was written on first start (undefined when keys existed already). */
  readonly adminKeyFile: string | undefined;
  readonly app: FastifyInstance;
  readonly client: EhrClient;
  readonly tenants: TenantService;
  readonly worker: WritebackWorker | undefined;
  /** Drains and closes everything; idempotent. */
  close(): Promise<void>;
}

export interface ServiceSeams {
  /** Log destination (tests capture lines to scan for PHI canaries). Default stdout. */
  readonly logDestination?: { write(line: string): void };
  /** Extra API plugins (audit routes, console). */
  readonly plugins?: ApiDeps['plugins'];
  /**
   * The built operator console to serve at `/` (docs/console.md): a `dist/` directory, or false for none. Default:
   * the `@tether/console` package's `dist/` when it was built (`npm run build`), else no console.
   */
  readonly consoleDir?: string | false;
  /** Sensitivity testing only: a deliberately wrong API (see ApiDeps.unsafeBroken). */
  readonly unsafeBroken?: ApiDeps['unsafeBroken'];
}

function consolePlugins(consoleDir: string | false | undefined): NonNullable<ApiDeps['plugins']> {
  const dir = consoleDir === undefined ? findConsoleDist() : consoleDir;
  return dir ? [consolePlugin(dir)] : [];
}

function ensureDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
}

function writeSecretFile(file: string, content: string): void {
  writeFileSync(file, content, { mode: 0o600 });
  chmodSync(file, 0o600);
}

export async function startService(config: ServiceConfig, seams: ServiceSeams = {}): Promise<RunningService> {
  ensureDir(config.dataDir);
  const logger = createLogger({ level: config.log.level, ...(seams.logDestination ? { destination: seams.logDestination } : {}) });
  const devKeyFile = join(config.dataDir, 'master-key');
  if (!config.masterKey && config.mode === 'development' && !existsSync(devKeyFile)) {
    logger.warn({ file: devKeyFile }, 'development mode: generating a master key file; set TETHER_MASTER_KEY in production');
  }
  const keyring = await createKeyring({ masterKey: config.masterKey, production: config.mode === 'production', devKeyFile });
  // Keyed hashes of identifiers in logs and masked API views: a key derived by the keyring, never stored.
  const tokenizer = new IdentifierTokenizer(keyring.deriveKey('tether identifier tokens'));

  const store = createStore(
    config.store.kind === 'sqlite'
      ? { kind: 'sqlite', path: config.store.path ?? join(config.dataDir, 'tether.db') }
      : { kind: 'postgres', connectionString: config.store.url },
  );
  const closers: (() => Promise<void>)[] = [];
  const closeAll = async (): Promise<void> => {
    for (const close of closers.splice(0).reverse()) {
      try {
        await close();
      } catch (err) {
        logger.error({ code: (err as { code?: string }).code ?? 'INTERNAL' }, 'service: a component failed to close');
      }
    }
  };
  closers.push(() => store.close());

  try {
    await store.migrate();
    if (config.mode === 'production') assertProductionTenants(await store.tenants.list());

    const broker = new TokenBroker({ store, keyring });
    const tenants = new TenantService({ store, keyring, broker });
    const vendors = new Map<string, string>();
    const vendorOf = (tenant: string): string => vendors.get(tenant) ?? 'generic';
    const metrics = new ServiceMetrics({ vendorOf });
    for (const name of ['token:refreshed', 'token:refresh-failed', 'tenant:paused', 'auth:clock-skew', 'tenant:resumed'] as const) {
      broker.events.on(name, (payload: { tenantId: string; code?: string; reason?: string }) => {
        metrics.observeBroker(name, payload.tenantId);
        logger.info({ event: name, tenant: payload.tenantId, code: payload.code, reasonCode: payload.reason }, 'auth event');
      });
    }

    const client = createEhrClient({
      ...config.client,
      tokenProvider: broker,
      onEvent: (event) => {
        metrics.observeClient(event);
        if (event.name.startsWith('breaker:') || event.name === 'http:rate-limited') logger.warn({ event: event.name, ...event.payload }, 'ehr client event');
      },
    });
    closers.push(() => client.close());

    // The embedded sandbox EHR and its tenant (development).
    let sandbox: Sandbox | undefined;
    if (config.sandbox.enabled) {
      const demo = await loadOrCreateDemoClient(join(config.dataDir, 'sandbox', 'demo-client.json'));
      sandbox = await startSandbox({
        port: config.sandbox.port,
        host: '127.0.0.1',
        seed: config.sandbox.seed,
        auth: true,
        clients: [demo.registration],
        tokenTtlSeconds: config.sandbox.tokenTtlSeconds,
        snapshotFile: join(config.dataDir, 'sandbox', 'ehr.ndjson'),
      });
      const running = sandbox;
      closers.push(() => running.close());
      const existing = await store.tenants.get(DEMO_TENANT_ID);
      if (!existing) {
        await tenants.register({
          id: DEMO_TENANT_ID,
          vendor: 'generic',
          fhirBaseUrl: sandbox.fhirBaseUrl,
          environment: 'sandbox',
          authMethod: 'backend-services',
          clientId: DEMO_CLIENT_ID,
          scopes: DEMO_TENANT_SCOPES,
          ...(sandbox.tokenEndpoint ? { tokenEndpoint: sandbox.tokenEndpoint } : {}),
          privateJwk: demo.private_jwk as unknown as Record<string, unknown>,
        });
        logger.info({ tenant: DEMO_TENANT_ID }, 'registered the demo tenant (embedded sandbox EHR)');
      } else if (existing.fhirBaseUrl !== sandbox.fhirBaseUrl || existing.tokenEndpoint !== sandbox.tokenEndpoint) {
        // The sandbox listens on a new port after a restart: point the tenant at it.
        await tenants.update(DEMO_TENANT_ID, { fhirBaseUrl: sandbox.fhirBaseUrl, tokenEndpoint: sandbox.tokenEndpoint ?? null });
      }
    }
    for (const t of await store.tenants.list()) vendors.set(t.id, t.vendor);

    // Workers.
    let worker: WritebackWorker | undefined;
    if (config.worker.enabled) {
      const created = new WritebackWorker({
        store,
        client,
        concurrency: config.worker.concurrency,
        leaseMs: config.worker.leaseMs,
        pollIntervalMs: config.worker.pollIntervalMs,
        verifyWindowMs: config.worker.verifyWindowMs,
        maxAttempts: config.worker.maxAttempts,
        backoffBaseMs: config.worker.backoffBaseMs,
        backoffMaxMs: config.worker.backoffMaxMs,
        patientFailureBudget: config.worker.patientFailureBudget,
        patientFailureWindowMs: config.worker.patientFailureWindowMs,
        onEvent: (event) => {
          if (event.name === 'command:settled' && event.state === 'verified') {
            void store.commands.get(event.commandId).then(
              (cmd) => metrics.observeWorker(event, cmd?.createdAt),
              () => metrics.observeWorker(event),
            );
          } else {
            metrics.observeWorker(event);
          }
          if (event.name === 'command:settled' || event.name === 'attempt:error' || event.name === 'command:lease-lost') {
            logger.info({ event: event.name, commandId: event.commandId, tenant: event.tenantId, attempt: event.attempt, state: event.state, reasonCode: event.reason, worker: event.workerId }, 'writeback');
          }
        },
      });
      worker = created;
      created.start();
      closers.push(() => created.stop());
    }
    const exceptions = new ExceptionQueue({ store, client });

    // The audit chain: command events are copied in by its tailer; token events through the broker.
    const audit = new AuditLog({ store, log: (line) => logger.warn({ code: line.code, count: line.count }, `audit: ${line.msg}`) });
    const detachAudit = audit.attachBroker(broker);
    audit.start();
    closers.push(async () => {
      detachAudit();
      await audit.stop();
    });

    // Bootstrap admin key.
    let adminKeyFile: string | undefined;
    if ((await store.apiKeys.list()).length === 0) {
      const { key } = await createApiKey(store, { name: 'bootstrap-admin', role: 'admin', tenants: null, createdBy: 'system' });
      adminKeyFile = join(config.dataDir, 'admin-api-key');
      writeSecretFile(adminKeyFile, `${key}\n`);
      logger.info({ file: adminKeyFile }, 'created the first admin API key');
    }

    let draining = false;
    const app = await buildApi({
      store,
      tenants,
      exceptions,
      client,
      metrics,
      logger,
      tokenizer,
      bodyLimitBytes: config.http.bodyLimitBytes,
      metricsRequireAuth: config.api.metricsRequireAuth,
      audit,
      doctor: (tenantId) => runDoctor({ store, broker, client }, tenantId),
      ...(worker ? { dispatch: worker } : {}),
      ...(sandbox ? { sandbox: { url: sandbox.url, fhirBaseUrl: sandbox.fhirBaseUrl, tenantId: DEMO_TENANT_ID } } : {}),
      readiness: async () => {
        const checks: Record<string, string> = {};
        try {
          await store.tenants.list();
          checks['store'] = 'ok';
        } catch (err) {
          checks['store'] = (err as { code?: string }).code ?? 'error';
        }
        checks['workers'] = !config.worker.enabled ? 'disabled' : worker ? 'running' : 'stopped';
        checks['draining'] = draining ? 'yes' : 'no';
        if (sandbox) checks['sandbox'] = 'running';
        return { ready: checks['store'] === 'ok' && !draining, checks };
      },
      plugins: [...(seams.plugins ?? []), ...consolePlugins(seams.consoleDir)],
      ...(seams.unsafeBroken ? { unsafeBroken: seams.unsafeBroken } : {}),
    });
    await app.listen({ host: config.http.host, port: config.http.port });
    closers.push(async () => {
      draining = true;
      await app.close();
    });
    const address = app.server.address();
    const port = typeof address === 'object' && address ? address.port : config.http.port;
    const url = `http://${config.http.host.includes(':') ? `[${config.http.host}]` : config.http.host}:${port}`;
    logger.info({ url, store: store.kind, sandbox: sandbox?.fhirBaseUrl ?? null }, 'tether is running');

    let closing: Promise<void> | undefined;
    return {
      url,
      config,
      store,
      sandbox,
      adminKeyFile,
      app,
      client,
      tenants,
      worker,
      close: () => (closing ??= (async () => {
        draining = true;
        logger.info({}, 'tether is draining');
        await closeAll();
        logger.info({}, 'tether stopped');
        logger.flush?.();
      })()),
    };
  } catch (err) {
    await closeAll();
    throw err;
  }
}
