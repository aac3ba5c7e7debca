// Child process of the sandbox benchmark: a sandbox with auth and faults off; reports its URL over IPC.
import { startSandbox } from '@tether/sandbox';

const sandbox = await startSandbox({ auth: false, port: 0 });
process.send?.({ fhirBaseUrl: sandbox.fhirBaseUrl });
process.on('SIGTERM', () => {
  sandbox.close().then(() => process.exit(0));
});
