// Write-back benchmark: direct creates/s to the sandbox (faults off) versus engine commands/s from submit to
// `verified`, on SQLite (one process) and PostgreSQL (two engine processes), plus submit→durable latency.
import { fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { Pool } from 'undici';
import {
  createEhrClient,
  createStore,
  generateMasterKey,
  Keyring,
  parseMasterKey,
  submitCommand,
  TenantService,
  TokenBroker,
  WritebackWorker,
} from '@tether/engine';
import { closedLoop, machine, parseArgs, recordMarkdown, round, startBenchSandbox, writeJson, benchObservation } from './common.mjs';

const ENGINE = fileURLToPath(new URL('../chaos/engine.mjs', import.meta.url));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const observation = benchObservation;

const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? 0;

const OPEN_STATES = ['queued', 'in_flight', 'unknown', 'acknowledged', 'retry_wait', 'conflict'];

/**
 * Resolves once `total` commands settled as verified (counted from the worker's events, so that the benchmark does
 * not poll the engine's store while it measures it), then confirms in the store that none is left open.
 */
async function waitSettled(store, tenantId, settled, total, deadlineMs) {
  const until = Date.now() + deadlineMs;
  while (Date.now() < until && settled.verified < total) await sleep(5);
  while (Date.now() < until) {
    const left = await store.commands.list({ tenantId, states: OPEN_STATES, limit: 1 });
    if (left.length === 0) return true;
    await sleep(20);
  }
  return false;
}

/** The next IPC message of `type` from a child. */
const nextMessage = (child, type) =>
  new Promise((resolve) => {
    const on = (m) => {
      if (m?.type !== type) return;
      child.off('message', on);
      resolve(m);
    };
    child.on('message', on);
  });

export async function run(argv) {
  const o = parseArgs(argv, { commands: 2000, concurrency: 16, submitters: 16, slots: 16, pool: 8, warmup: 500, rounds: 3, json: undefined, record: false, keep: false, subjects: 'direct,sqlite,sqlite-serial,postgres-2' });
  const subjects = new Set(String(o.subjects).split(','));
  const scope = 'system/Observation.cruds';
  const { dir, fhirBaseUrl, privateJwk, stop: stopSandbox } = await startBenchSandbox('wb', scope);
  const masterKey = generateMasterKey();
  const keyring = new Keyring(parseMasterKey(masterKey));
  let results = [];
  // Run in reverse order: stop the sandbox (and wait for it), then remove the directory.
  const cleanups = [
    () => (o.keep ? console.error(`evidence kept in ${dir}`) : rmSync(dir, { recursive: true, force: true })),
    stopSandbox,
  ];
  try {
   // Rounds, interleaved (direct, sqlite, sqlite-serial, postgres-2, then again): the machine is shared and its speed
   // drifts, so each figure is the median over rounds, and each ratio compares medians.
   for (let rnd = 0; rnd < o.rounds; rnd++) {
    // (a) direct: creates with an undici Pool and a static token.
    if (subjects.has('direct')) {
      const store = createStore({ kind: 'sqlite', path: ':memory:' });
      await store.migrate();
      const broker = new TokenBroker({ store, keyring });
      await new TenantService({ store, keyring, broker }).register({ id: 'wb', fhirBaseUrl, environment: 'sandbox', authMethod: 'backend-services', clientId: 'wb', scopes: scope, privateJwk });
      const token = await broker.getAccessToken('wb', 'system');
      await store.close();
      const base = new URL(fhirBaseUrl);
      const pool = new Pool(base.origin, { connections: o.concurrency });
      const post = async (i) => {
        const res = await pool.request({ method: 'POST', path: `${base.pathname}/Observation`, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/fhir+json' }, body: JSON.stringify(observation(i)) });
        await res.body.dump();
        if (res.statusCode !== 201) throw new Error(String(res.statusCode));
      };
      // Warm-up (not measured): the sandbox's JIT and the pool's connections, so that direct is not measured cold.
      await closedLoop({ total: o.warmup, concurrency: o.concurrency, fn: (i) => post(1_000_000 + i) });
      const r = await closedLoop({ total: o.commands, concurrency: o.concurrency, fn: post });
      await pool.close();
      results.push({ subject: 'direct', ops: r.ops, errors: r.errors, opsPerSec: round(r.opsPerSec), p50Ms: round(r.p50Ms, 2), p99Ms: round(r.p99Ms, 2) });
    }

    // (b) SQLite, one process: submit everything (measuring submit→durable), the worker delivers to `verified`.
    // `sqlite`: `submitters` concurrent submissions (an API serving that many requests at once); `sqlite-serial`: one
    // submission after the other, where submit→durable is one commit each (the latency target is defined there).
    for (const [subject, submitters] of [['sqlite', o.submitters], ['sqlite-serial', 1]]) {
      if (!subjects.has(subject)) continue;
      const store = createStore({ kind: 'sqlite', path: join(dir, `${subject}-${rnd}.db`) });
      await store.migrate();
      const broker = new TokenBroker({ store, keyring });
      await new TenantService({ store, keyring, broker }).register({ id: 'wb', fhirBaseUrl, environment: 'sandbox', authMethod: 'backend-services', clientId: 'wb', scopes: scope, privateJwk });
      const client = createEhrClient({ tokenProvider: broker, rateLimit: null, concurrency: o.slots });
      const settled = { verified: 0 };
      const onEvent = (e) => {
        if (e.name === 'command:settled' && e.state === 'verified') settled.verified++;
      };
      const worker = new WritebackWorker({ store, client, concurrency: o.slots, pollIntervalMs: 5, onEvent });
      worker.start();
      // Warm-up (not measured), as for direct: the engine's JIT, the client's connections and the token, with
      // `warmup` commands delivered to `verified` through the same store and worker first.
      // `dispatch`: the worker takes a new command at submission when it has a free slot, as the service does.
      const submitOne = (key, i) => submitCommand(store, { tenantId: 'wb', context: 'system', action: 'create', resourceType: 'Observation', resource: observation(i), businessKey: key, requestedBy: 'bench' }, { dispatch: worker });
      await closedLoop({ total: o.warmup, concurrency: submitters, fn: (i) => submitOne(`wb-${subject}-${rnd}-warmup-${i}`, i) });
      if (!(await waitSettled(store, 'wb', settled, o.warmup, 120_000))) throw new Error('warm-up did not settle');
      settled.verified = 0;
      const t0 = performance.now();
      const cpu0 = process.cpuUsage();
      const submitted = await closedLoop({
        total: o.commands,
        concurrency: submitters,
        keepLatencies: true,
        fn: (i) => submitOne(`wb-${subject}-${rnd}-${i}`, i),
      });
      const durable = submitted.latencies;
      const ok = await waitSettled(store, 'wb', settled, o.commands, 300_000);
      const seconds = (performance.now() - t0) / 1000;
      const cpu = process.cpuUsage(cpu0);
      const verified = (await store.commands.list({ tenantId: 'wb', states: ['verified'], limit: 1 })).length;
      await worker.stop();
      await client.close();
      await store.close();
      // The engine's CPU (all its threads) per command: steadier than ops/s on a shared machine.
      const cpuMsPerCommand = round((cpu.user + cpu.system) / 1000 / o.commands, 3);
      results.push({ subject, ops: o.commands, errors: ok && verified ? 0 : 1, opsPerSec: round(o.commands / seconds), p50Ms: round(pct(durable, 50), 2), p99Ms: round(pct(durable, 99), 2), cpuMsPerCommand });
    }

    // (c) PostgreSQL, two engine processes (the chaos engine without faults or kills); engine 0 submits.
    if (subjects.has('postgres-2')) {
      const admin = process.env.TETHER_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
      const db = `tether_bench_${randomBytes(4).toString('hex')}`;
      const c = new pg.Client({ connectionString: admin });
      await c.connect();
      await c.query(`CREATE DATABASE ${db}`);
      await c.end();
      cleanups.push(async () => {
        const d = new pg.Client({ connectionString: admin });
        await d.connect();
        await d.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
        await d.end();
      });
      const storeOptions = { kind: 'postgres', connectionString: admin.replace(/\/[^/]*$/, `/${db}`), poolSize: o.pool };
      const store = createStore(storeOptions);
      await store.migrate();
      await new TenantService({ store, keyring }).register({ id: 'wb', fhirBaseUrl, environment: 'sandbox', authMethod: 'backend-services', clientId: 'wb', scopes: scope, privateJwk });
      const ledgerOf = (name, n) => {
        const file = join(dir, `${name}-${rnd}.ndjson`);
        writeFileSync(file, Array.from({ length: n }, (_, i) => JSON.stringify({ commandId: `wb-${name}-${i}`, key: `wb-pg-${name}-${rnd}-${i}`, seq: 1, engineAction: 'create', resourceType: 'Observation', resource: observation(i) })).join('\n') + '\n');
        return file;
      };
      const ledger = ledgerOf('ledger', o.commands);
      // Engine 0 first delivers these (not measured) and waits until they are verified: both engines' JIT, pools
      // and tokens warm, as for direct.
      const warmupLedger = ledgerOf('warmup', o.warmup);
      const engines = [0, 1].map((n) =>
        fork(ENGINE, [JSON.stringify({ store: storeOptions, masterKey, tenantId: 'wb', workerId: `bench-${n}`, concurrency: Math.max(1, Math.round(o.slots / 2)), clientConcurrency: Math.max(1, Math.round(o.slots / 2)), leaseMs: 30_000, verifyWindowMs: 2_000, attemptTimeoutMs: 10_000, logFile: join(dir, `engine-${rnd}-${n}.log`), submitLedger: n === 0 ? ledger : null, warmupLedger: n === 0 ? warmupLedger : null, submitConcurrency: o.submitters })], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }),
      );
      // Measured from engine 0's first submission (the engines' start-up is not part of it), as for SQLite.
      await nextMessage(engines[0], 'submitting');
      const t0 = performance.now();
      // Wait until every command exists and none is open.
      const until = Date.now() + 300_000;
      let ok = false;
      while (Date.now() < until) {
        const all = await store.commands.list({ tenantId: 'wb', states: ['verified'], limit: 1 });
        const open = await store.commands.list({ tenantId: 'wb', states: OPEN_STATES, limit: 1 });
        if (all.length > 0 && open.length === 0) {
          const reply = nextMessage(engines[0], 'status');
          engines[0].send({ type: 'status' });
          const status = await reply;
          if (status.submitted && status.open === 0) {
            ok = true;
            break;
          }
        }
        await sleep(20);
      }
      const seconds = (performance.now() - t0) / 1000;
      for (const e of engines) e.kill('SIGTERM');
      await sleep(300);
      await store.close();
      results.push({ subject: 'postgres-2', ops: o.commands, errors: ok ? 0 : 1, opsPerSec: round(o.commands / seconds), p50Ms: null, p99Ms: null });
    }
   }
  } finally {
    for (const c of cleanups.reverse()) await c();
  }
  const runs = results;
  const median = (xs) => {
    const v = xs.filter((x) => typeof x === 'number').sort((a, b) => a - b);
    return v.length === 0 ? null : v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
  };
  const bySubject = [...new Set(runs.map((r) => r.subject))].map((subject) => {
    const rs = runs.filter((r) => r.subject === subject);
    return {
      subject,
      ops: rs[0].ops,
      errors: rs.reduce((n, r) => n + r.errors, 0),
      opsPerSec: round(median(rs.map((r) => r.opsPerSec))),
      p50Ms: median(rs.map((r) => r.p50Ms)) === null ? null : round(median(rs.map((r) => r.p50Ms)), 2),
      p99Ms: median(rs.map((r) => r.p99Ms)) === null ? null : round(median(rs.map((r) => r.p99Ms)), 2),
      roundsOpsPerSec: rs.map((r) => r.opsPerSec),
      cpuMsPerCommand: median(rs.map((r) => r.cpuMsPerCommand)) === null ? null : round(median(rs.map((r) => r.cpuMsPerCommand)), 3),
    };
  });
  results = bySubject;
  const direct = results.find((r) => r.subject === 'direct')?.opsPerSec ?? NaN;
  const ratios = Object.fromEntries(results.filter((r) => r.subject !== 'direct').map((r) => [`${r.subject}/direct`, round(r.opsPerSec / direct, 2)]));
  const out = { benchmark: 'writeback', date: new Date().toISOString(), machine: machine(), commands: o.commands, concurrency: o.concurrency, rounds: o.rounds, results, ratios, runs };
  console.table(results.map(({ roundsOpsPerSec, ...r }) => ({ ...r, rounds: roundsOpsPerSec.join(' / ') })));
  console.log(ratios);
  writeJson(o.json, out);
  if (o.record) {
    recordMarkdown(
      'writeback',
      `## Write-back: submit to verified\n\nCommand: \`npm run bench -- writeback --record\`  \nDate: ${out.date.slice(0, 10)}  \nMachine: ${out.machine}  \n` +
        `Setup: sandbox in its own process (auth on, faults off), ${o.commands.toLocaleString('en')} Observation creates. ` +
        `direct: POSTs through an undici Pool with a static token, ${o.concurrency} concurrent, after ${o.warmup} unmeasured warm-up POSTs (no durability, no verification). ` +
        `sqlite: one process, ${o.submitters} concurrent submitters (submit→durable latency measured per call) while a worker with ${o.slots} slots delivers (and takes commands at submission while it has a free slot, as the service does); first ${o.warmup} unmeasured warm-up commands through the same store and worker, then ops/s counts from the first submit until every command is \`verified\` (create with If-None-Exist; the sandbox profile verifies from the create's answer, so one EHR call per command); engine CPU is the process's user+system time per command. ` +
        `sqlite-serial: the same with one submission after the other (the submit→durable target is defined on this one). ` +
        `postgres-2: two engine processes on one PostgreSQL (pool ${o.pool} each, ${Math.max(1, Math.round(o.slots / 2))} slots each; engine 0 submits with ${o.submitters} concurrent submitters, after delivering ${o.warmup} unmeasured warm-up commands), measured from engine 0's first submission until every command is \`verified\`. ` +
        `${o.rounds} rounds, the subjects interleaved in each; the table gives medians over rounds (and every round's ops/s), the ratios compare medians.\n\n` +
        `| subject | commands per round | errors | ops/s (median) | rounds ops/s | submit→durable p50 ms | p99 ms | engine CPU ms/command |\n|---|---|---|---|---|---|---|---|\n` +
        results.map((r) => `| ${r.subject} | ${r.ops} | ${r.errors} | ${r.opsPerSec} | ${r.roundsOpsPerSec.join(' / ')} | ${r.subject === 'direct' ? `(request ${r.p50Ms})` : r.p50Ms ?? '—'} | ${r.subject === 'direct' ? `(request ${r.p99Ms})` : r.p99Ms ?? '—'} | ${r.cpuMsPerCommand ?? '—'} |`).join('\n') +
        `\n\nRatios: ${Object.entries(ratios).map(([k, v]) => `${k} = **${v}**`).join('; ')} (target ≥ 0.8 on both stores; submit→durable p99 ≤ 5 ms on SQLite, serial).\n`,
    );
  }
  if (results.some((r) => r.errors > 0)) process.exitCode = 1;
}
