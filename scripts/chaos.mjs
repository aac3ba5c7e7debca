#!/usr/bin/env node
// Chaos harness: proves the write-back promise end to end.
//   npm run chaos -- --commands N --seed S --engines K --store sqlite|postgres [--submit library|api]
//                    [--broken VARIANT] [--hot-keys H] [--json FILE] [--keep]
// Starts the sandbox with the chaos fault mix, K engine processes on one store, submits N commands (creates and
// updates of Observation, Condition and DocumentReference for ~200 patients, with planted PHI canaries) from an
// intent ledger written BEFORE submission, SIGKILLs engine processes 3 times at seeded random moments (each
// restarted), waits until every command is settled, then runs the independent checker over the ledger, the
// engine's claims, the sandbox write log, a final read by business key and every log file.
// `--submit library` (default): engine-0 submits the ledger through `submitCommand`. `--submit api`: every engine
// process is `tether start` (the service), and this harness submits over HTTP (`POST /v1/commands`, Idempotency-Key
// = the command id), paced over the first 26 s so that the SIGKILLs land while commands are arriving; every 202 is
// a receipt the checker holds the engine to (a receipted command the engine then has no record of is `lost`).
// Every loop is bounded (--timeout seconds); all traffic stays on 127.0.0.1.
import { fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { appendFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { exportJWK, generateKeyPair } from 'jose';
import { canonicalContentHash, check, isViolation } from '@tether/checker';
import {
  BUSINESS_KEY_SYSTEM,
  createApiKey,
  createEhrClient,
  createStore,
  generateMasterKey,
  Keyring,
  parseMasterKey,
  stampBusinessKey,
  TenantService,
  TokenBroker,
} from '@tether/engine';

const here = (p) => fileURLToPath(new URL(p, import.meta.url));

/**
 * Deliberately wrong engine behaviours and the violation the checker must then report. A checker that cannot
 * fail proves nothing: with `--broken`, the run passes only if the expected violation is detected.
 */
const SENSITIVITY = {
  'retry-without-verify': { expect: 'duplicated', detected: (r) => r.duplicated > 0 },
  // Commands of one business key in flight at once (a create and an upsert of the same key, leased together):
  // each finds nothing (search lag) and creates.
  'no-key-lock': { expect: 'duplicated', detected: (r) => r.duplicated > 0 },
  // The API answers 202 before the command is stored (and stores it 1 s later, a write-behind buffer): a SIGKILL in between loses a
  // command the submitter was told is safe. Needs the HTTP submission path.
  'ack-before-commit': { expect: 'lost', detected: (r) => r.lost > 0, submit: 'api' },
};

/** Seconds over which `--submit api` spreads the submissions (the SIGKILLs land between 2 s and 27 s). */
const API_SUBMIT_SPREAD_MS = 26_000;

function args(argv) {
  const o = { commands: 1000, seed: 1, engines: 1, store: 'sqlite', patients: 200, timeout: 300, json: undefined, keep: false, kills: 3, broken: undefined, submit: undefined, hotKeys: 0 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) continue;
    const key = a.slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    const next = argv[i + 1];
    if (next === undefined || next.startsWith('--')) o[key] = true;
    else {
      o[key] = typeof o[key] === 'number' ? Number(next) : next;
      i++;
    }
  }
  if (o.store !== 'sqlite' && o.store !== 'postgres') throw new Error('--store must be sqlite or postgres');
  if (!Number.isInteger(o.hotKeys) || o.hotKeys < 0) throw new Error('--hot-keys must be a whole number (0: updates pick any earlier key)');
  if (o.store === 'sqlite' && o.engines !== 1) throw new Error('the SQLite store is single-process: use --engines 1');
  if (o.broken !== undefined && !(o.broken in SENSITIVITY)) throw new Error(`--broken must be one of ${Object.keys(SENSITIVITY).join(', ')}`);
  const required = o.broken ? SENSITIVITY[o.broken].submit : undefined;
  o.submit ??= required ?? 'library';
  if (o.submit !== 'library' && o.submit !== 'api') throw new Error('--submit must be library or api');
  if (required && o.submit !== required) throw new Error(`--broken ${o.broken} needs --submit ${required}`);
  if (o.submit === 'api' && o.broken && !required) throw new Error(`--broken ${o.broken} is a worker variant: use --submit library`);
  return o;
}

/** Seeded PRNG (mulberry32): the workload and the kill schedule replay from the seed. */
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function once(child, type) {
  return new Promise((resolve, reject) => {
    const onExit = (code) => reject(new Error(`child exited with ${code}`));
    child.once('exit', onExit);
    const onMessage = (m) => {
      if (type && m?.type !== type) return;
      child.off('message', onMessage);
      child.off('exit', onExit);
      resolve(m);
    };
    child.on('message', onMessage);
  });
}

/** One resource of the workload, with canary strings where PHI would be (notes, descriptions). */
function resourceFor(type, patient, canary, variant) {
  const subject = { reference: `Patient/p-${patient}` };
  if (type === 'Observation') {
    return {
      resourceType: 'Observation',
      status: variant === 0 ? 'final' : 'amended',
      code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] },
      subject,
      effectiveDateTime: '2026-11-01T10:00:00Z',
      valueQuantity: { value: 60 + variant, unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' },
      note: [{ text: `Patient ${canary} reports palpitations (v${variant})` }],
    };
  }
  if (type === 'Condition') {
    return {
      resourceType: 'Condition',
      subject,
      code: { coding: [{ system: 'http://snomed.info/sct', code: '49436004' }] },
      clinicalStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: variant === 0 ? 'active' : 'resolved' }] },
      note: [{ text: `History given by ${canary} (v${variant})` }],
    };
  }
  return {
    resourceType: 'DocumentReference',
    status: 'current',
    subject,
    type: { coding: [{ system: 'http://loinc.org', code: '11506-3' }] },
    description: `Progress note for ${canary} (v${variant})`,
    content: [{ attachment: { contentType: 'text/plain', data: Buffer.from(`note ${variant}`).toString('base64') } }],
  };
}

async function main() {
  const o = args(process.argv.slice(2));
  const random = rng(o.seed);
  const dir = mkdtempSync(join(tmpdir(), 'tether-chaos-'));
  const started = Date.now();
  const say = (msg) => process.stderr.write(`[chaos ${((Date.now() - started) / 1000).toFixed(1)}s] ${msg}\n`);
  const children = new Set();
  let dbName;
  const adminUrl = process.env.TETHER_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
  try {
    // --- The store.
    let storeOptions;
    if (o.store === 'postgres') {
      dbName = `tether_chaos_${randomBytes(5).toString('hex')}`;
      const admin = new pg.Client({ connectionString: adminUrl });
      await admin.connect();
      await admin.query(`CREATE DATABASE ${dbName}`);
      await admin.end();
      storeOptions = { kind: 'postgres', connectionString: adminUrl.replace(/\/[^/]*$/, `/${dbName}`), poolSize: 6 };
    } else {
      storeOptions = { kind: 'sqlite', path: join(dir, 'engine.db') };
    }

    // --- The sandbox with the chaos mix: the storm starts 8 s in so that short runs meet it too.
    const { publicKey, privateKey } = await generateKeyPair('ES384', { extractable: true });
    const scope = 'system/Observation.cruds system/Condition.cruds system/DocumentReference.cruds';
    const faults = JSON.parse(readFileSync(here('../packages/sandbox/faults/chaos.json'), 'utf8'));
    for (const f of faults.faults) if (f.kind === 'storm') f.startMs = 8_000;
    writeFileSync(join(dir, 'faults.json'), JSON.stringify(faults));
    const sandboxLog = join(dir, 'sandbox.log');
    const sandbox = fork(here('./chaos/sandbox.mjs'), [
      JSON.stringify({
        seed: o.seed,
        faultsFile: join(dir, 'faults.json'),
        tokenTtlSeconds: 30,
        logFile: sandboxLog,
        clients: [{ client_id: 'chaos', scope, jwks: { keys: [{ ...(await exportJWK(publicKey)), kid: 'chaos', alg: 'ES384' }] } }],
      }),
    ], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    children.add(sandbox);
    const { fhirBaseUrl, url: sandboxUrl } = await once(sandbox);
    say(`sandbox at ${fhirBaseUrl} (seed ${o.seed})`);

    // --- The tenant (registered before any engine holds the store), and in API mode the submitter's API key.
    const masterKey = generateMasterKey();
    let apiKey;
    {
      const store = createStore(storeOptions);
      await store.migrate();
      await new TenantService({ store, keyring: new Keyring(parseMasterKey(masterKey)) }).register({
        id: 'chaos-clinic',
        fhirBaseUrl,
        environment: 'sandbox',
        authMethod: 'backend-services',
        clientId: 'chaos',
        scopes: scope,
        privateJwk: { ...(await exportJWK(privateKey)), kid: 'chaos', alg: 'ES384' },
      });
      if (o.submit === 'api') {
        ({ key: apiKey } = await createApiKey(store, { name: 'chaos-submitter', role: 'submitter', tenants: ['chaos-clinic'], createdBy: 'chaos-harness' }));
      }
      await store.close();
    }

    // --- The intent ledger, written before anything is submitted.
    const types = ['Observation', 'Condition', 'DocumentReference'];
    const keys = [];
    const ledgerFile = join(dir, 'ledger.ndjson');
    const checkerLedger = [];
    const seqByKey = new Map();
    // `--hot-keys H`: an update targets one of the H newest keys, so that it is due together with its key's create
    // (the contention the per-key lease exists for); 0 (default): any earlier key.
    for (let i = 0; i < o.commands; i++) {
      const update = keys.length > 0 && random() < 0.3;
      const pool = o.hotKeys > 0 ? keys.slice(-o.hotKeys) : keys;
      const key = update ? pool[Math.floor(random() * pool.length)] : { key: `chaos-${o.seed}-${i}`, type: types[Math.floor(random() * 3)], patient: Math.floor(random() * o.patients) };
      if (!update) keys.push(key);
      const seq = (seqByKey.get(key.key) ?? 0) + 1;
      seqByKey.set(key.key, seq);
      const canary = `Zqx${o.seed}Canary${i}Vlk`;
      const resource = resourceFor(key.type, key.patient, canary, seq - 1);
      const commandId = `cmd-${o.seed}-${i}`;
      const stamped = stampBusinessKey(resource, key.key);
      const entry = {
        commandId,
        businessKey: `${BUSINESS_KEY_SYSTEM}|${key.key}`,
        resourceType: key.type,
        action: update ? 'update' : 'create',
        expect: 'accept',
        contentHash: canonicalContentHash(stamped),
        seq,
        canaries: [canary],
      };
      checkerLedger.push(entry);
      appendFileSync(ledgerFile, `${JSON.stringify({ ...entry, key: key.key, engineAction: update ? 'upsert' : 'create', resource })}\n`);
    }
    say(`ledger: ${o.commands} commands over ${keys.length} business keys`);

    // --- Engines.
    const engines = [];
    const engineConfig = (n) => ({
      store: storeOptions,
      masterKey,
      tenantId: 'chaos-clinic',
      workerId: `engine-${n}`,
      concurrency: 8,
      leaseMs: 20_000,
      verifyWindowMs: 2_000,
      attemptTimeoutMs: 5_000,
      logFile: join(dir, `engine-${n}.log`),
      submitLedger: n === 0 && o.submit === 'library' ? ledgerFile : null,
      api: o.submit === 'api',
      dataDir: join(dir, `engine-${n}-data`),
      broken: o.broken ?? null,
    });
    const apiUrls = [];
    const spawnEngine = (n) => {
      const child = fork(here('./chaos/engine.mjs'), [JSON.stringify(engineConfig(n))], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
      children.add(child);
      apiUrls[n] = undefined;
      child.on('message', (m) => {
        if (m?.type === 'ready' && engines[n] === child) apiUrls[n] = m.url;
      });
      child.once('exit', () => {
        children.delete(child);
        if (engines[n] === child) apiUrls[n] = undefined;
      });
      engines[n] = child;
      return child;
    };
    for (let n = 0; n < o.engines; n++) spawnEngine(n);

    // --- API mode: this process is the submitter. Receipts (HTTP 202s) are recorded as they arrive.
    const receipts = [];
    const submitStats = { accepted: 0, replayed: 0, retries: 0, failed: 0 };
    let apiSubmitted = o.submit !== 'api';
    const apiSubmission = o.submit === 'api'
      ? submitOverApi({ lines: readFileSync(ledgerFile, 'utf8').split('\n').filter(Boolean), apiUrls, apiKey, started, deadline: started + o.timeout * 1000, receipts, stats: submitStats }).then(() => {
          apiSubmitted = true;
          say(`submitted over the API: ${JSON.stringify(submitStats)}`);
        })
      : Promise.resolve();
    // Awaited after the wait loop; until then a failure (the timeout) must not count as an unhandled rejection.
    apiSubmission.catch(() => {});

    // --- SIGKILLs at seeded moments in the first part of the run, each engine restarted at once.
    const killAt = Array.from({ length: o.kills }, () => 2_000 + Math.floor(random() * 25_000)).sort((a, b) => a - b);
    const killTargets = killAt.map(() => Math.floor(random() * o.engines));
    let kills = 0;
    const deadline = started + o.timeout * 1000;
    let settled = false;
    while (Date.now() < deadline) {
      const elapsed = Date.now() - started;
      while (kills < killAt.length && elapsed >= killAt[kills]) {
        const n = killTargets[kills];
        say(`SIGKILL engine-${n}`);
        engines[n].kill('SIGKILL');
        await new Promise((r) => (engines[n].exitCode !== null || engines[n].signalCode !== null ? r() : engines[n].once('exit', r)));
        spawnEngine(n);
        kills++;
      }
      await sleep(1_000);
      if (kills < killAt.length) continue;
      try {
        const reply = once(engines[0], 'status');
        engines[0].send({ type: 'status' });
        const status = await Promise.race([reply, sleep(5_000).then(() => undefined)]);
        if (status?.submitted && apiSubmitted && status.open === 0) {
          settled = true;
          break;
        }
      } catch {
        // The engine is restarting.
      }
    }
    say(settled ? 'every command settled' : 'timed out before every command settled');
    await apiSubmission;

    // --- Stop the engines, switch faults off, collect the evidence.
    for (const e of engines) e.kill('SIGTERM');
    await Promise.all(engines.map((e) => new Promise((r) => (e.exitCode !== null || e.signalCode !== null ? r() : e.once('exit', r)))));
    const faultStats = await (await fetch(`${sandboxUrl}/_admin/faults/stats`)).json();
    await fetch(`${sandboxUrl}/_admin/faults`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"faults":[]}' });
    const writeLog = (await (await fetch(`${sandboxUrl}/_admin/write-log`)).text()).split('\n').filter(Boolean).map((l) => JSON.parse(l));

    const store = createStore(storeOptions);
    await store.migrate();
    const broker = new TokenBroker({ store, keyring: new Keyring(parseMasterKey(masterKey)) });
    const client = createEhrClient({ tokenProvider: broker, rateLimit: null });
    const target = { tenantId: 'chaos-clinic', baseUrl: fhirBaseUrl };
    const claims = [];
    const finalRead = [];
    let unsettled = 0;
    const stateCounts = {};
    for (const k of keys) {
      for (const c of await store.commands.list({ tenantId: 'chaos-clinic', businessKey: k.key, limit: 1000 })) {
        claims.push({ commandId: c.idempotencyKey, state: c.state, ...(c.stateReason ? { reason: c.stateReason } : {}), ...(c.ehrId ? { ehrId: c.ehrId } : {}) });
        stateCounts[c.state] = (stateCounts[c.state] ?? 0) + 1;
        if (!['verified', 'superseded', 'cancelled', 'rejected', 'needs_review'].includes(c.state)) unsettled++;
        if ((c.state === 'rejected' || c.state === 'needs_review') && !c.stateReason) unsettled++;
      }
      for await (const page of client.searchPages(target, 'system', k.type, { identifier: `${BUSINESS_KEY_SYSTEM}|${k.key}` })) {
        for (const e of page.entry ?? []) finalRead.push(e.resource);
      }
    }
    await client.close();
    await store.close();

    const logs = [sandboxLog, ...Array.from({ length: o.engines }, (_, n) => join(dir, `engine-${n}.log`))].map((name) => {
      try {
        return { name, text: readFileSync(name, 'utf8') };
      } catch {
        return { name, text: '' };
      }
    });
    const report = check({
      ledger: checkerLedger,
      claims,
      ...(o.submit === 'api' ? { receipts } : {}),
      writeLog,
      finalRead,
      logs,
      faults: faultStats,
      seed: o.seed,
      businessKeySystem: BUSINESS_KEY_SYSTEM,
    });
    const sensitivity = o.broken ? { variant: o.broken, expected: `${SENSITIVITY[o.broken].expect} > 0`, detected: SENSITIVITY[o.broken].detected(report) } : undefined;
    const out = { ...report, store: o.store, engines: o.engines, submit: o.submit, hotKeys: o.hotKeys, ...(o.submit === 'api' ? { submissions: submitStats } : {}), kills, settled, unsettled, states: stateCounts, seconds: Math.round((Date.now() - started) / 1000), ...(sensitivity ? { sensitivity } : {}) };
    process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
    if (o.json && o.json !== true) writeFileSync(o.json, `${JSON.stringify(out, null, 2)}\n`);
    if (sensitivity) process.exitCode = sensitivity.detected ? 0 : 1;
    else if (isViolation(report) || !settled || unsettled > 0) process.exitCode = 1;
    if (o.keep) say(`evidence kept in ${dir}`);
  } finally {
    for (const c of children) c.kill('SIGKILL');
    if (!o.keep) rmSync(dir, { recursive: true, force: true });
    if (dbName) {
      const admin = new pg.Client({ connectionString: adminUrl });
      await admin.connect();
      await admin.query(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`);
      await admin.end();
    }
  }
}

/**
 * Submits the ledger over HTTP in ledger order, paced over API_SUBMIT_SPREAD_MS, to whichever engine is up (they
 * restart after SIGKILLs on new ports). A 202 is a receipt; a connection error, a 5xx or a 409 (the same key still
 * being accepted) is retried with the same Idempotency-Key, which is what makes the retry safe.
 */
async function submitOverApi({ lines, apiUrls, apiKey, started, deadline, receipts, stats }) {
  const interval = API_SUBMIT_SPREAD_MS / Math.max(1, lines.length);
  for (const [i, line] of lines.entries()) {
    const wait = started + i * interval - Date.now();
    if (wait > 0) await sleep(wait);
    const intent = JSON.parse(line);
    const body = JSON.stringify({
      tenantId: 'chaos-clinic',
      context: 'system',
      action: intent.engineAction,
      resourceType: intent.resourceType,
      resource: intent.resource,
      businessKey: intent.key,
      sourceTimestamp: intent.seq,
      requestedBy: 'chaos-harness',
    });
    for (let attempt = 0; ; attempt++) {
      if (Date.now() > deadline) throw new Error(`API submission did not finish before the timeout (at ${intent.commandId})`);
      const up = apiUrls.filter(Boolean);
      const url = up[(i + attempt) % Math.max(1, up.length)];
      if (!url) {
        await sleep(50);
        continue;
      }
      let res;
      try {
        res = await fetch(`${url}/v1/commands`, {
          method: 'POST',
          headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json', 'idempotency-key': intent.commandId },
          body,
          signal: AbortSignal.timeout(10_000),
        });
      } catch {
        stats.retries++;
        await sleep(50);
        continue;
      }
      const answer = await res.json().catch(() => ({}));
      if (res.status === 202) {
        receipts.push(intent.commandId);
        if (answer.created === false) stats.replayed++;
        else stats.accepted++;
        break;
      }
      if (res.status === 409 || res.status >= 500) {
        stats.retries++;
        await sleep(50);
        continue;
      }
      stats.failed++;
      process.stderr.write(`[chaos] ${intent.commandId} refused by the API: HTTP ${res.status} ${answer?.issue?.[0]?.details?.coding?.[0]?.code ?? ''}\n`);
      break;
    }
  }
}

main().catch((err) => {
  process.stderr.write(`chaos: ${err?.stack ?? err}\n`);
  process.exitCode = 2;
});
