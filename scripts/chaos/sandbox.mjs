// Chaos harness child: the sandbox EHR with the chaos fault mix. Config comes as JSON in argv[2]; it reports its
// URLs over IPC and logs one JSON line per FHIR request (no bodies, no PHI) to the log file.
import { appendFileSync, readFileSync } from 'node:fs';
import { startSandbox } from '@tether/sandbox';

const cfg = JSON.parse(process.argv[2]);
const faults = JSON.parse(readFileSync(cfg.faultsFile, 'utf8'));
const sandbox = await startSandbox({
  auth: true,
  port: 0,
  seed: cfg.seed,
  faults,
  tokenTtlSeconds: cfg.tokenTtlSeconds,
  clients: cfg.clients,
  validationThreads: 1,
  // No log file: the benchmark measures the sandbox without per-request file writes.
  ...(cfg.logFile ? { log: (line) => appendFileSync(cfg.logFile, `${JSON.stringify(line)}\n`) } : {}),
});
process.send?.({ fhirBaseUrl: sandbox.fhirBaseUrl, url: sandbox.url });
process.on('SIGTERM', () => {
  sandbox.close().then(() => process.exit(0));
});
