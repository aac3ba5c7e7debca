// Child process of the sandbox benchmark: a sandbox with auth and faults off and the CLI's default of one
// validation thread; reports its URL over IPC.
import { startSandbox } from '@tether/sandbox';

const sandbox = await startSandbox({ auth: false, port: 0, validationThreads: Number(process.env.VALIDATION_THREADS ?? 1) });
process.send?.({ fhirBaseUrl: sandbox.fhirBaseUrl });
process.on('SIGTERM', () => {
  sandbox.close().then(() => process.exit(0));
});
