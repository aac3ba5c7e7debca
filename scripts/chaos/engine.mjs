// Chaos harness child: one engine process (auth broker, EHR client, write-back worker) on the shared store.
// Library mode: the submitting engine also submits the intent ledger through `submitCommand` (idempotency keys make
// a resubmission after a SIGKILL safe), and every worker, client and broker event is logged as a JSON line.
// API mode (`cfg.api`): the process is `tether start` itself (startService: HTTP API, workers, pino logs), and the
// harness submits over HTTP. Either way it answers `status` requests over IPC.
import { appendFileSync, readFileSync } from 'node:fs';
import {
  createEhrClient,
  createStore,
  Keyring,
  loadServiceConfig,
  parseMasterKey,
  startService,
  submitCommand,
  TokenBroker,
  WritebackWorker,
} from '@tether/engine';

const cfg = JSON.parse(process.argv[2]);
const log = (msg, fields) => appendFileSync(cfg.logFile, `${JSON.stringify({ time: new Date().toISOString(), pid: process.pid, msg, ...fields })}\n`);
const broken = cfg.broken ?? null;


const OPEN_STATES = ['queued', 'in_flight', 'unknown', 'acknowledged', 'retry_wait', 'conflict'];
const answerStatus = (store, submitted) =>
  process.on('message', async (m) => {
    if (m?.type === 'status') {
      const open = await store.commands.list({ tenantId: cfg.tenantId, states: OPEN_STATES, limit: 1 });
      process.send?.({ type: 'status', submitted: submitted(), open: open.length });
    }
  });

if (cfg.api) {
  // The service exactly as `tether start` runs it, with the chaos timeouts and budgets.
  const config = loadServiceConfig({
    env: { TETHER_MASTER_KEY: cfg.masterKey },
    cwd: cfg.dataDir,
    overrides: {
      dataDir: cfg.dataDir,
      http: { host: '127.0.0.1', port: 0 },
      store: cfg.store.kind === 'sqlite' ? { kind: 'sqlite', path: cfg.store.path } : { kind: 'postgres', url: cfg.store.connectionString },
      sandbox: { enabled: false },
      worker: { concurrency: cfg.concurrency, leaseMs: cfg.leaseMs, verifyWindowMs: cfg.verifyWindowMs, pollIntervalMs: 50, maxAttempts: 30, backoffMaxMs: 300_000 },
      client: { attemptTimeoutMs: cfg.attemptTimeoutMs, headersTimeoutMs: cfg.attemptTimeoutMs, deadlineMs: cfg.attemptTimeoutMs * 3, maxRetryAfterMs: 10_000, rateLimit: null },
      log: { level: 'info' },
    },
  });
  const service = await startService(config, {
    logDestination: { write: (line) => appendFileSync(cfg.logFile, line) },
    consoleDir: false,
    ...(broken === 'ack-before-commit' ? { unsafeBroken: broken } : {}),
  });
  answerStatus(service.store, () => true);
  process.on('SIGTERM', async () => {
    await service.close();
    process.exit(0);
  });
  process.send?.({ type: 'ready', url: service.url });
} else {
  await runLibraryEngine();
}

async function runLibraryEngine() {
  const store = createStore(cfg.store);
  await store.migrate();
  const broker = new TokenBroker({ store, keyring: new Keyring(parseMasterKey(cfg.masterKey)) });
  for (const name of ['token:refreshed', 'token:refresh-failed', 'tenant:paused', 'auth:clock-skew']) {
    broker.events.on(name, (payload) => log(name, payload));
  }
  const client = createEhrClient({
    tokenProvider: broker,
    attemptTimeoutMs: cfg.attemptTimeoutMs,
    headersTimeoutMs: cfg.attemptTimeoutMs,
    deadlineMs: cfg.attemptTimeoutMs * 3,
    maxRetryAfterMs: 10_000,
    rateLimit: null,
    ...(cfg.clientConcurrency ? { concurrency: cfg.clientConcurrency } : {}),
    onEvent: (event) => log(`client:${event.name}`, event.payload),
  });
  const worker = new WritebackWorker({
    store,
    client,
    workerId: cfg.workerId,
    concurrency: cfg.concurrency,
    leaseMs: cfg.leaseMs,
    verifyWindowMs: cfg.verifyWindowMs,
    pollIntervalMs: 50,
    maxAttempts: 30,
    ...(broken ? { unsafeBroken: broken } : {}),
    onEvent: (event) => log('writeback', event),
  });
  let submitted = !cfg.submitLedger;
  worker.start();
  log('engine.started', { workerId: cfg.workerId, broken });

  // In ledger order, `submitConcurrency` at a time (default 1: one after the other, as the chaos harness does).
  const submitAll = async (file) => {
    const lines = readFileSync(file, 'utf8').split('\n').filter(Boolean);
    let next = 0;
    const submitter = async () => {
      while (next < lines.length) await submitOne(lines[next++]);
    };
    await Promise.all(Array.from({ length: Math.max(1, cfg.submitConcurrency ?? 1) }, submitter));
    return lines.length;
  };
  if (cfg.warmupLedger) {
    // Benchmark warm-up: deliver these first and wait until none is open.
    await submitAll(cfg.warmupLedger);
    while ((await store.commands.list({ tenantId: cfg.tenantId, states: OPEN_STATES, limit: 1 })).length > 0) await new Promise((r) => setTimeout(r, 20));
  }
  if (cfg.submitLedger) {
    // The benchmark measures from here (not from the process start).
    process.send?.({ type: 'submitting' });
    const count = await submitAll(cfg.submitLedger);
    submitted = true;
    log('engine.submitted', { commands: count });
  }

  async function submitOne(line) {
    const intent = JSON.parse(line);
    for (let tries = 0; ; tries++) {
      try {
        await submitCommand(store, {
          tenantId: cfg.tenantId,
          context: 'system',
          action: intent.engineAction,
          resourceType: intent.resourceType,
          resource: intent.resource,
          businessKey: intent.key,
          idempotencyKey: intent.commandId,
          requestedBy: 'chaos-harness',
          sourceTimestamp: intent.seq,
        }, { dispatch: worker });
        break;
      } catch (err) {
        // 409: the same key is being accepted right now by an earlier incarnation of this process: retry.
        if (err?.code === 'IDEMPOTENCY_KEY_IN_PROGRESS' && tries < 50) {
          await new Promise((r) => setTimeout(r, 50));
          continue;
        }
        log('engine.submit-failed', { code: err?.code ?? 'UNKNOWN' });
        break;
      }
    }
  }

  answerStatus(store, () => submitted);
  process.on('SIGTERM', async () => {
    await worker.stop();
    await client.close();
    await store.close();
    log('engine.stopped', {});
    process.exit(0);
  });
}
