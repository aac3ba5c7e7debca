// Client benchmark: GET Patient/{id} against the sandbox (auth on, faults off) through
// (a) a raw undici Pool with a static token, (b) the Tether client (auth broker on an in-memory SQLite store),
// (c) fhir-kit-client, (d) @medplum/core MedplumClient — in the same run, same request count and concurrency.
// Reads cycle through PATIENTS distinct ids so that the Tether client's GET coalescing cannot help it.
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Pool } from 'undici';
import { Client } from 'fhir-kit-client';
import { MedplumClient } from '@medplum/core';
import { createEhrClient, createStore, Keyring, generateMasterKey, parseMasterKey, TenantService, TokenBroker } from '@tether/engine';
import { closedLoop, machine, parseArgs, recordMarkdown, round, writeJson } from './common.mjs';

const SERVER = fileURLToPath(new URL('./client-sandbox.mjs', import.meta.url));

export async function run(argv) {
  const o = parseArgs(argv, { requests: 20_000, concurrency: 16, patients: 1000, warmup: 1000, rounds: 5, json: undefined, record: false, only: undefined });
  const child = fork(SERVER, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], env: { ...process.env, PATIENTS: String(o.patients) } });
  const info = await new Promise((resolve, reject) => {
    child.once('message', resolve);
    child.once('exit', (code) => reject(new Error(`sandbox exited with ${code}`)));
  });
  const base = new URL(info.fhirBaseUrl);
  const ids = info.ids;
  const cleanups = [() => child.kill('SIGTERM')];
  try {
    // The Tether client and its auth broker, as the engine wires them.
    const store = createStore({ kind: 'sqlite', path: ':memory:' });
    await store.migrate();
    cleanups.push(() => store.close());
    const keyring = new Keyring(parseMasterKey(generateMasterKey()));
    const broker = new TokenBroker({ store, keyring });
    await new TenantService({ store, keyring, broker }).register({
      id: 'bench',
      fhirBaseUrl: info.fhirBaseUrl,
      environment: 'sandbox',
      authMethod: 'backend-services',
      clientId: info.clientId,
      scopes: info.scope,
      privateJwk: info.privateJwk,
    });
    const token = await broker.getAccessToken('bench', 'system');
    const tether = createEhrClient({ tokenProvider: broker, concurrency: o.concurrency, rateLimit: null });
    cleanups.push(() => tether.close());
    const target = { tenantId: 'bench', baseUrl: info.fhirBaseUrl };

    const pool = new Pool(base.origin, { connections: o.concurrency });
    cleanups.push(() => pool.close());
    const fkc = new Client({ baseUrl: info.fhirBaseUrl, customHeaders: { Authorization: `Bearer ${token}` } });
    const medplum = new MedplumClient({ baseUrl: `${base.origin}/`, fhirUrlPath: base.pathname.replace(/^\//, ''), cacheTime: 0, fetch: globalThis.fetch });
    medplum.setAccessToken(token);

    const id = (i) => ids[i % ids.length];
    const subjects = {
      'raw-undici': async (i) => {
        const res = await pool.request({
          method: 'GET',
          path: `${base.pathname}/Patient/${id(i)}`,
          headers: { authorization: `Bearer ${token}`, accept: 'application/fhir+json' },
        });
        const body = await res.body.json();
        if (res.statusCode !== 200 || body.id !== id(i)) throw new Error(String(res.statusCode));
      },
      tether: async (i) => {
        const res = await tether.read(target, 'system', 'Patient', id(i));
        if (res.body.id !== id(i)) throw new Error('wrong body');
      },
      'fhir-kit-client': async (i) => {
        const body = await fkc.read({ resourceType: 'Patient', id: id(i) });
        if (body.id !== id(i)) throw new Error('wrong body');
      },
      medplum: async (i) => {
        const body = await medplum.readResource('Patient', id(i), { cache: 'no-cache' });
        if (body.id !== id(i)) throw new Error('wrong body');
      },
    };
    // Subjects run interleaved in rounds (rotating the order each round) so that drift in the shared sandbox
    // process (JIT warm-up, GC, the machine's other load) spreads evenly over all of them.
    const names = Object.keys(subjects).filter((n) => !o.only || o.only === n);
    for (const n of names) await closedLoop({ total: o.warmup, concurrency: o.concurrency, fn: subjects[n] });
    const acc = Object.fromEntries(names.map((n) => [n, { ops: 0, errors: 0, seconds: 0, latencies: [] }]));
    const rounds = o.rounds;
    for (let r = 0; r < rounds; r++) {
      const order = names.map((_, i) => names[(i + r) % names.length]);
      for (const n of order) {
        const res = await closedLoop({ total: Math.ceil(o.requests / rounds), concurrency: o.concurrency, fn: subjects[n], keepLatencies: true });
        acc[n].ops += res.ops;
        acc[n].errors += res.errors;
        acc[n].seconds += res.seconds;
        acc[n].latencies.push(...res.latencies);
      }
      process.stderr.write(`round ${r + 1}/${rounds} done\n`);
    }
    const results = names.map((n) => {
      const a = acc[n];
      const sorted = a.latencies.sort((x, y) => x - y);
      const pct = (p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? 0;
      return { subject: n, ops: a.ops, errors: a.errors, opsPerSec: round(a.ops / a.seconds), p50Ms: round(pct(50), 2), p99Ms: round(pct(99), 2) };
    });
    if (o.only) {
      console.table(results);
      return;
    }
    const by = Object.fromEntries(results.map((r) => [r.subject, r]));
    const ratio = (a, b) => round(by[a].opsPerSec / by[b].opsPerSec, 2);
    const ratios = {
      'tether/raw-undici': ratio('tether', 'raw-undici'),
      'tether/fhir-kit-client': ratio('tether', 'fhir-kit-client'),
      'tether/medplum': ratio('tether', 'medplum'),
    };
    const out = { benchmark: 'client', date: new Date().toISOString(), machine: machine(), requests: o.requests, concurrency: o.concurrency, results, ratios };
    console.table(results);
    console.log(ratios);
    writeJson(o.json, out);
    if (o.record) {
      recordMarkdown(
        'client',
        `## EHR client: GET Patient/{id}\n\nCommand: \`npm run bench -- client --record\`  \nDate: ${out.date.slice(0, 10)}  \nMachine: ${out.machine}  \n` +
          `Setup: sandbox in its own process (auth on, faults off); each subject reads ${o.requests.toLocaleString('en')} times with ${o.concurrency} concurrent requests after ${o.warmup} warm-up reads, interleaved in ${o.rounds} rounds with a rotating order, cycling over ${o.patients} Patients (so GET coalescing does not help Tether). ` +
          `raw-undici: an undici Pool with a static token; tether: the Tether client with its auth broker (token from an in-memory SQLite store), breaker, concurrency limiter, trace headers and scope checks on; fhir-kit-client and medplum (\`MedplumClient\`, cache off) with a static token.\n\n` +
          `| subject | requests | errors | ops/s | p50 ms | p99 ms |\n|---|---|---|---|---|---|\n` +
          results.map((r) => `| ${r.subject} | ${r.ops} | ${r.errors} | ${r.opsPerSec} | ${r.p50Ms} | ${r.p99Ms} |`).join('\n') +
          `\n\nRatios: tether / raw-undici = **${ratios['tether/raw-undici']}** (target ≥ 0.9); tether / fhir-kit-client = **${ratios['tether/fhir-kit-client']}** (target ≥ 1.5); tether / medplum = **${ratios['tether/medplum']}** (target ≥ 1.5).\n`,
      );
    }
    if (results.some((r) => r.errors > 0)) process.exitCode = 1;
  } finally {
    for (const c of cleanups.reverse()) await c();
  }
}
