// Client benchmark: GET Patient/{id} against the sandbox (auth on, faults off) through
// (a) a raw undici Pool with a static token, (b) the Tether client (auth broker on an in-memory SQLite store),
// (c) fhir-kit-client, (d) @medplum/core MedplumClient — in the same run, same request count and concurrency.
// Reads cycle through PATIENTS distinct ids so that the Tether client's GET coalescing cannot help it.
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Pool } from 'undici';
import { Client } from 'fhir-kit-client';
import { MedplumClient } from '@medplum/core';
import {
  createEhrClient,
  createStore,
  DEFAULT_BODY_TIMEOUT_MS,
  DEFAULT_CONNECT_TIMEOUT_MS,
  DEFAULT_HEADERS_TIMEOUT_MS,
  DEFAULT_KEEP_ALIVE_TIMEOUT_MS,
  Keyring,
  generateMasterKey,
  parseMasterKey,
  TenantService,
  TokenBroker,
} from '@tether/engine';
import { closedLoop, machine, parseArgs, recordMarkdown, round, writeJson } from './common.mjs';

const SERVER = fileURLToPath(new URL('./client-sandbox.mjs', import.meta.url));

export async function run(argv) {
  const o = parseArgs(argv, { requests: 40_000, concurrency: 16, patients: 1000, warmup: 2000, rounds: 20, json: undefined, record: false, only: undefined });
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
    // Same pool for both (sockets, pipelining, timeouts: the client's defaults), so that the ratio measures the
    // client's own work. The tenant's token bucket is on, sized so that it never makes a request wait: every read
    // still takes a token, as in production.
    const poolOptions = {
      connections: o.concurrency,
      pipelining: 1,
      connect: { timeout: DEFAULT_CONNECT_TIMEOUT_MS },
      headersTimeout: DEFAULT_HEADERS_TIMEOUT_MS,
      bodyTimeout: DEFAULT_BODY_TIMEOUT_MS,
      keepAliveTimeout: DEFAULT_KEEP_ALIVE_TIMEOUT_MS,
    };
    const tether = createEhrClient({
      tokenProvider: broker,
      concurrency: o.concurrency,
      poolConnections: poolOptions.connections,
      rateLimit: { capacity: 1_000_000, refillPerSecond: 1_000_000 },
    });
    cleanups.push(() => tether.close());
    const target = { tenantId: 'bench', baseUrl: info.fhirBaseUrl };

    const pool = new Pool(base.origin, poolOptions);
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
    const acc = Object.fromEntries(names.map((n) => [n, { ops: 0, errors: 0, seconds: 0, cpuMicros: 0, latencies: [], perRound: [] }]));
    const rounds = o.rounds;
    for (let r = 0; r < rounds; r++) {
      const order = names.map((_, i) => names[(i + r) % names.length]);
      for (const n of order) {
        // CPU of this process (the subject's client; the sandbox runs in its own process): less sensitive to
        // other load on the machine than throughput.
        const cpu0 = process.cpuUsage();
        const res = await closedLoop({ total: Math.ceil(o.requests / rounds), concurrency: o.concurrency, fn: subjects[n], keepLatencies: true });
        const cpu = process.cpuUsage(cpu0);
        acc[n].cpuMicros += cpu.user + cpu.system;
        acc[n].ops += res.ops;
        acc[n].errors += res.errors;
        acc[n].seconds += res.seconds;
        acc[n].latencies.push(...res.latencies);
        acc[n].perRound.push(res.opsPerSec);
      }
      process.stderr.write(`round ${r + 1}/${rounds} done\n`);
    }
    // ops/s is the median of the per-round throughputs, and each ratio the median of the per-round ratios: the
    // machine is shared (the sandbox, and whatever else runs), and a burst of other load during a few rounds would
    // otherwise decide the figures. The same statistic applies to every subject; `meanOpsPerSec` (all requests over
    // all time) is kept in the JSON.
    const median = (xs) => {
      const s = [...xs].sort((x, y) => x - y);
      return s.length === 0 ? 0 : s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
    };
    const results = names.map((n) => {
      const a = acc[n];
      const sorted = a.latencies.sort((x, y) => x - y);
      const pct = (p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? 0;
      return {
        subject: n,
        ops: a.ops,
        errors: a.errors,
        opsPerSec: round(median(a.perRound)),
        meanOpsPerSec: round(a.ops / a.seconds),
        clientCpuUsPerReq: round(a.cpuMicros / a.ops, 1),
        p50Ms: round(pct(50), 2),
        p99Ms: round(pct(99), 2),
      };
    });
    if (o.only) {
      console.table(results);
      return;
    }
    const ratio = (a, b) => round(median(acc[a].perRound.map((x, r) => x / acc[b].perRound[r])), 2);
    const ratios = {
      'tether/raw-undici': ratio('tether', 'raw-undici'),
      'tether/fhir-kit-client': ratio('tether', 'fhir-kit-client'),
      'tether/medplum': ratio('tether', 'medplum'),
    };
    const out = {
      benchmark: 'client',
      date: new Date().toISOString(),
      machine: machine(),
      requests: o.requests,
      concurrency: o.concurrency,
      rounds: o.rounds,
      results,
      ratios,
      perRound: Object.fromEntries(names.map((n) => [n, acc[n].perRound.map((x) => round(x))])),
    };
    console.table(results);
    const perRound = acc.tether.perRound.map((x, r) => round(x / acc['raw-undici'].perRound[r], 2));
    console.log(ratios, 'per round tether/raw-undici:', perRound.join(' '));
    writeJson(o.json, out);
    if (o.record) {
      recordMarkdown(
        'client',
        `## EHR client: GET Patient/{id}\n\nCommand: \`npm run bench -- client --record\`  \nDate: ${out.date.slice(0, 10)}  \nMachine: ${out.machine}  \n` +
          `Setup: sandbox in its own process (auth on, faults off); each subject reads ${o.requests.toLocaleString('en')} times with ${o.concurrency} concurrent requests after ${o.warmup} warm-up reads, interleaved in ${o.rounds} rounds with a rotating order, cycling over ${o.patients} Patients (so GET coalescing does not help Tether). ` +
          `raw-undici: an undici Pool with a static token; tether: the Tether client with its auth broker (token from an in-memory SQLite store), scope precheck, breaker, per-tenant concurrency limiter, token bucket (sized never to make a read wait), deadline and attempt timeouts, correlation id and traceparent on; both on the same Pool options (${o.concurrency} connections, pipelining 1, the client's default timeouts). fhir-kit-client and medplum (\`MedplumClient\`, cache off) with a static token. ` +
          `ops/s is the median of the per-round throughputs and each ratio the median of the per-round ratios (the machine is shared; a burst of other load in a few rounds would otherwise decide the figures). Client CPU is this process's CPU time (user + system, GC threads included) per read: the load generator and the subject's client, not the sandbox.\n\n` +
          `| subject | requests | errors | ops/s (median of rounds) | ops/s (all requests / all time) | client CPU µs/read | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|---|\n` +
          results.map((r) => `| ${r.subject} | ${r.ops} | ${r.errors} | ${r.opsPerSec} | ${r.meanOpsPerSec} | ${r.clientCpuUsPerReq} | ${r.p50Ms} | ${r.p99Ms} |`).join('\n') +
          `\n\nRatios: tether / raw-undici = **${ratios['tether/raw-undici']}** (target ≥ 0.9); tether / fhir-kit-client = **${ratios['tether/fhir-kit-client']}** (target ≥ 1.5); tether / medplum = **${ratios['tether/medplum']}** (target ≥ 1.5).  \n` +
          `Per round, tether / raw-undici: ${perRound.join(' ')}.\n`,
      );
    }
    if (results.some((r) => r.errors > 0)) process.exitCode = 1;
  } finally {
    for (const c of cleanups.reverse()) await c();
  }
}
