// Sandbox benchmark: creates/s while loading N resources, then identifier searches/s against the full store.
// The sandbox runs in a child process (its own core), the load generator here with an undici Pool.
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Pool } from 'undici';
import { closedLoop, machine, parseArgs, recordMarkdown, round, writeJson } from './common.mjs';

const SERVER = fileURLToPath(new URL('./sandbox-server.mjs', import.meta.url));

export async function run(argv) {
  const o = parseArgs(argv, { resources: 100_000, searches: 20_000, concurrency: 32, json: undefined, record: false });
  const child = fork(SERVER, [], { execArgv: process.env.BENCH_CPU_PROF ? ['--cpu-prof', '--cpu-prof-dir', process.env.BENCH_CPU_PROF] : [], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const base = await new Promise((resolve, reject) => {
    child.once('message', (m) => resolve(m.fhirBaseUrl));
    child.once('exit', (code) => reject(new Error(`sandbox exited with ${code}`)));
  });
  const origin = new URL(base).origin;
  const path = new URL(base).pathname;
  const pool = new Pool(origin, { connections: o.concurrency, pipelining: 1 });
  const headers = { 'content-type': 'application/fhir+json', accept: 'application/fhir+json' };
  const body = (i) =>
    JSON.stringify({
      resourceType: 'Observation',
      status: 'final',
      identifier: [{ system: 'urn:tether:bench', value: `k-${i}` }],
      code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] },
      subject: { reference: `Patient/p-${i % 2000}` },
      effectiveDateTime: '2024-03-05T10:00:00Z',
      valueQuantity: { value: i % 200, unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' },
    });
  try {
    process.stderr.write(`loading ${o.resources} resources with ${o.concurrency} concurrent creates...\n`);
    const creates = await closedLoop({
      total: o.resources,
      concurrency: o.concurrency,
      fn: async (i) => {
        const res = await pool.request({ method: 'POST', path: `${path}/Observation`, headers, body: body(i) });
        await res.body.dump();
        if (res.statusCode !== 201) throw new Error(String(res.statusCode));
      },
    });
    process.stderr.write(`searching ${o.searches} times by identifier...\n`);
    let misses = 0;
    const searches = await closedLoop({
      total: o.searches,
      concurrency: o.concurrency,
      fn: async (i) => {
        const key = (i * 7919) % o.resources;
        const res = await pool.request({ method: 'GET', path: `${path}/Observation?identifier=urn:tether:bench|k-${key}`, headers });
        const json = await res.body.json();
        if (res.statusCode !== 200) throw new Error(String(res.statusCode));
        if (json.total !== 1) misses++;
      },
    });
    const results = [
      { subject: 'create', ops: creates.ops, errors: creates.errors, opsPerSec: round(creates.opsPerSec), p50Ms: round(creates.p50Ms, 2), p99Ms: round(creates.p99Ms, 2) },
      { subject: 'identifier-search', ops: searches.ops, errors: searches.errors + misses, opsPerSec: round(searches.opsPerSec), p50Ms: round(searches.p50Ms, 2), p99Ms: round(searches.p99Ms, 2) },
    ];
    const out = { benchmark: 'sandbox', date: new Date().toISOString(), machine: machine(), resources: o.resources, concurrency: o.concurrency, results };
    console.table(results);
    writeJson(o.json, out);
    if (o.record) {
      const cmd = `npm run bench -- sandbox --record${o.resources !== 100_000 ? ` --resources ${o.resources}` : ''}`;
      recordMarkdown(
        'sandbox',
        `## Sandbox FHIR server\n\nCommand: \`${cmd}\`  \nDate: ${out.date.slice(0, 10)}  \nMachine: ${out.machine}  \n` +
          `Setup: sandbox in its own process (auth off, faults off, structural validation on ${process.env.VALIDATION_THREADS ?? 1} worker thread as in the CLI default), load generator with an undici Pool, ${o.concurrency} concurrent requests. ` +
          `Creates are measured while loading ${o.resources.toLocaleString('en')} Observations; identifier searches (\`Observation?identifier=system|value\`, one match each) run against the full store.\n\n` +
          `| operation | requests | errors | ops/s | p50 ms | p99 ms | target |\n|---|---|---|---|---|---|---|\n` +
          `| create | ${results[0].ops} | ${results[0].errors} | ${results[0].opsPerSec} | ${results[0].p50Ms} | ${results[0].p99Ms} | ≥ 2,000/s |\n` +
          `| identifier search | ${results[1].ops} | ${results[1].errors} | ${results[1].opsPerSec} | ${results[1].p50Ms} | ${results[1].p99Ms} | ≥ 1,000/s |\n`,
      );
    }
    if (creates.errors > 0 || searches.errors > 0 || misses > 0) process.exitCode = 1;
  } finally {
    await pool.close();
    child.kill('SIGTERM');
  }
}
