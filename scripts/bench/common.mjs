// Shared pieces of the benchmarks: argument parsing, a bounded closed-loop load generator, percentiles, the
// machine description, recording results in docs/benchmarks.md, and a sandbox EHR to measure against.
import { fork } from 'node:child_process';
import { appendFileSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { exportJWK, generateKeyPair } from 'jose';

export function parseArgs(argv, defaults) {
  const out = { ...defaults };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) continue;
    const key = a.slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    const next = argv[i + 1];
    if (next === undefined || next.startsWith('--')) out[key] = true;
    else {
      out[key] = typeof defaults[key] === 'number' ? Number(next) : next;
      i++;
    }
  }
  return out;
}

/**
 * Runs `total` operations with `concurrency` workers in a closed loop; each op is `fn(i)`. Bounded by count and
 * by `maxSeconds`. Returns ops/s and latency percentiles in ms.
 */
export async function closedLoop({ total, concurrency, fn, maxSeconds = 300, keepLatencies = false }) {
  const latencies = new Float64Array(total);
  let next = 0;
  let done = 0;
  let errors = 0;
  const deadline = performance.now() + maxSeconds * 1000;
  const started = performance.now();
  async function worker() {
    while (next < total && performance.now() < deadline) {
      const i = next++;
      const t0 = performance.now();
      try {
        await fn(i);
      } catch {
        errors++;
      }
      latencies[i] = performance.now() - t0;
      done++;
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker));
  const seconds = (performance.now() - started) / 1000;
  const sorted = Array.from(latencies.subarray(0, done)).sort((a, b) => a - b);
  const pct = (p) => (sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]);
  return { ops: done, errors, seconds, opsPerSec: done / seconds, p50Ms: pct(50), p99Ms: pct(99), ...(keepLatencies ? { latencies: sorted } : {}) };
}

export function machine() {
  const cpus = os.cpus();
  return `${cpus.length} × ${cpus[0]?.model ?? 'unknown CPU'}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}, ${os.platform()} ${os.release()}`;
}

export function round(n, digits = 1) {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}

/** Writes the JSON result file if asked. */
export function writeJson(file, result) {
  if (file && file !== true) writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
}

/**
 * Replaces the section `<!-- bench:NAME -->...<!-- /bench:NAME -->` of docs/benchmarks.md with `markdown`
 * (appends the section if missing), so re-running a benchmark updates its figures in place.
 */
export function recordMarkdown(name, markdown) {
  const file = fileURLToPath(new URL('../../docs/benchmarks.md', import.meta.url));
  const start = `<!-- bench:${name} -->`;
  const end = `<!-- /bench:${name} -->`;
  let text = '';
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    text = '# Benchmarks\n';
  }
  const block = `${start}\n${markdown.trim()}\n${end}`;
  const i = text.indexOf(start);
  const j = text.indexOf(end);
  if (i >= 0 && j > i) text = `${text.slice(0, i)}${block}${text.slice(j + end.length)}`;
  else text = `${text.trimEnd()}\n\n${block}\n`;
  writeFileSync(file, text);
  void appendFileSync;
}

/**
 * The chaos harness's sandbox in its own process (auth on, faults off, no log) with one backend-services client
 * `clientId` (ES384 key pair made here), in a new temporary directory. Answers what a benchmark needs to register a
 * tenant on it, and `stop()` (waits for the process to exit).
 */
export async function startBenchSandbox(clientId, scope) {
  const dir = mkdtempSync(join(os.tmpdir(), `tether-bench-${clientId}-`));
  const { publicKey, privateKey } = await generateKeyPair('ES384', { extractable: true });
  const jwk = { ...(await exportJWK(publicKey)), kid: clientId, alg: 'ES384' };
  const privateJwk = { ...(await exportJWK(privateKey)), kid: clientId, alg: 'ES384' };
  writeFileSync(join(dir, 'faults.json'), '{"faults":[]}');
  const script = fileURLToPath(new URL('../chaos/sandbox.mjs', import.meta.url));
  const config = { seed: 1, faultsFile: join(dir, 'faults.json'), tokenTtlSeconds: 3600, logFile: null, clients: [{ client_id: clientId, scope, jwks: { keys: [jwk] } }] };
  const sandbox = fork(script, [JSON.stringify(config)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const { fhirBaseUrl } = await new Promise((resolve) => sandbox.once('message', resolve));
  const stop = () =>
    new Promise((resolve) => {
      sandbox.once('exit', resolve);
      sandbox.kill('SIGTERM');
    });
  return { dir, fhirBaseUrl, privateJwk, stop };
}

/** The heart-rate Observation the write-back benchmarks submit, number `i`, for one of 200 patients. */
export function benchObservation(i) {
  return {
    resourceType: 'Observation',
    status: 'final',
    code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] },
    subject: { reference: `Patient/p-${i % 200}` },
    effectiveDateTime: '2026-11-01T10:00:00Z',
    valueQuantity: { value: i % 150, unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' },
  };
}
