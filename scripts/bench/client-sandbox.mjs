// Child process of the client benchmark: a sandbox with auth on and faults off, one backend-services client, and
// N Patients to read. Reports URLs, ids and the client's private key over IPC.
import { exportJWK, generateKeyPair } from 'jose';
import { startSandbox } from '@tether/sandbox';

const count = Number(process.env.PATIENTS ?? 1000);
const { publicKey, privateKey } = await generateKeyPair('ES384', { extractable: true });
const scope = 'system/Patient.rs';
const sandbox = await startSandbox({
  auth: true,
  port: 0,
  tokenTtlSeconds: 3600,
  clients: [{ client_id: 'bench', scope, jwks: { keys: [{ ...(await exportJWK(publicKey)), kid: 'bench', alg: 'ES384' }] } }],
});
const ids = [];
for (let i = 0; i < count; i++) {
  const v = sandbox.store.create(
    { resourceType: 'Patient', gender: i % 2 ? 'female' : 'male', identifier: [{ system: 'urn:bench', value: `p-${i}` }] },
    { requestId: 'seed', interaction: 'create', now: Date.now() },
  );
  ids.push(v.id);
}
process.send?.({
  fhirBaseUrl: sandbox.fhirBaseUrl,
  tokenEndpoint: sandbox.tokenEndpoint,
  clientId: 'bench',
  scope,
  privateJwk: { ...(await exportJWK(privateKey)), kid: 'bench', alg: 'ES384' },
  ids,
});
process.on('SIGTERM', () => {
  sandbox.close().then(() => process.exit(0));
});
