// Write-back latency of a service that keeps up: one command at a time, with pauses, submit → `verified`, on SQLite
// with the service's default poll interval. Two engines side by side in the same run: `handoff` (the worker takes
// the command at submission, as `tether start` does) and `queued` (the command waits for the worker's next lease
// query). docs/writeback.md "Hand-off at submission".
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { createEhrClient, createStore, generateMasterKey, Keyring, parseMasterKey, submitCommand, TenantService, TokenBroker, WritebackWorker } from '@tether/engine';
import { machine, parseArgs, recordMarkdown, round, startBenchSandbox, writeJson, benchObservation } from './common.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? 0;

const observation = benchObservation;

export async function run(argv) {
  // poll: the service's default `worker.pollIntervalMs`; pause: the idle time between two submissions (ms, a
  // seeded spread between pause and 2 × pause, so that submissions land anywhere in the poll cycle).
  const o = parseArgs(argv, { commands: 60, poll: 200, pause: 150, warmup: 20, json: undefined, record: false });
  const scope = 'system/Observation.cruds';
  const { dir, fhirBaseUrl, privateJwk, stop: stopSandbox } = await startBenchSandbox('wbl', scope);
  const keyring = new Keyring(parseMasterKey(generateMasterKey()));
  const engines = {};
  try {
    for (const subject of ['handoff', 'queued']) {
      const store = createStore({ kind: 'sqlite', path: join(dir, `${subject}.db`) });
      await store.migrate();
      const broker = new TokenBroker({ store, keyring });
      await new TenantService({ store, keyring, broker }).register({ id: 'wbl', fhirBaseUrl, environment: 'sandbox', authMethod: 'backend-services', clientId: 'wbl', scopes: scope, privateJwk });
      const client = createEhrClient({ tokenProvider: broker, rateLimit: null });
      const verified = new Map();
      const worker = new WritebackWorker({
        store,
        client,
        pollIntervalMs: o.poll,
        onEvent: (e) => {
          if (e.name === 'command:settled' && e.state === 'verified') verified.get(e.commandId)?.(performance.now());
        },
      });
      worker.start();
      engines[subject] = { store, client, worker, verified, latencies: [] };
    }
    // Alternate the two engines command by command, so that both see the same machine at the same time.
    let seed = 7;
    const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    for (let i = 0; i < o.warmup + o.commands; i++) {
      for (const [subject, e] of Object.entries(engines)) {
        const input = { tenantId: 'wbl', context: 'system', action: 'create', resourceType: 'Observation', resource: observation(i), businessKey: `wbl-${subject}-${i}`, requestedBy: 'bench' };
        const t0 = performance.now();
        const { id } = await submitCommand(e.store, input, subject === 'handoff' ? { dispatch: e.worker } : {});
        const done = await new Promise((resolve) => {
          e.verified.set(id, resolve);
          // Settled before the listener was set (possible with the hand-off): read it back.
          void e.store.commands.get(id).then((c) => c?.state === 'verified' && resolve(performance.now()));
        });
        e.verified.delete(id);
        if (i >= o.warmup) e.latencies.push(done - t0);
        await sleep(o.pause + random() * o.pause);
      }
    }
  } finally {
    for (const e of Object.values(engines)) {
      await e.worker.stop();
      await e.client.close();
      await e.store.close();
    }
    await stopSandbox();
    rmSync(dir, { recursive: true, force: true });
  }
  const results = Object.entries(engines).map(([subject, e]) => {
    const s = [...e.latencies].sort((a, b) => a - b);
    return { subject, commands: s.length, p50Ms: round(pct(s, 50), 1), p90Ms: round(pct(s, 90), 1), p99Ms: round(pct(s, 99), 1), maxMs: round(s.at(-1) ?? 0, 1) };
  });
  const out = { benchmark: 'writeback-latency', date: new Date().toISOString(), machine: machine(), pollIntervalMs: o.poll, results };
  console.table(results);
  writeJson(o.json, out);
  if (o.record) {
    recordMarkdown(
      'writeback-latency',
      `## Write-back latency of a service that keeps up\n\nCommand: \`npm run bench -- writeback-latency --record\`  \nDate: ${out.date.slice(0, 10)}  \nMachine: ${out.machine}  \n` +
        `Setup: sandbox in its own process (auth on, faults off); two SQLite engines in one process, each a worker with the service's default poll interval (${o.poll} ms). ` +
        `One command at a time, alternating between the engines, ${o.pause}-${o.pause * 2} ms apart; latency from the submit call to the worker's \`verified\` event; ${o.warmup} warm-up commands each, not counted. ` +
        `handoff: \`submitCommand(…, { dispatch: worker })\`, as the service does (docs/writeback.md "Hand-off at submission"); queued: without it (the command waits for the next lease query).\n\n` +
        `| subject | commands | p50 ms | p90 ms | p99 ms | max ms |\n|---|---|---|---|---|---|\n` +
        results.map((r) => `| ${r.subject} | ${r.commands} | ${r.p50Ms} | ${r.p90Ms} | ${r.p99Ms} | ${r.maxMs} |`).join('\n') +
        '\n',
    );
  }
}
