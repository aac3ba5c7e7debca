import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { exportJWK, generateKeyPair, type JWK } from 'jose';

/** The demo client the sandbox registers when no `--clients` file is given. */
export const DEMO_CLIENT_ID = 'tether-demo';
/** Scopes of the demo client: every resource, every interaction, SMART v1 and v2 syntax. */
export const DEMO_CLIENT_SCOPE = 'system/*.cruds system/*.read system/*.write';

export interface DemoClientFile {
  readonly client_id: string;
  readonly scope: string;
  /** Private key (ES384) used to sign client assertions. Development only. */
  readonly private_jwk: JWK & { kid: string; alg: string };
  /** The registration the sandbox loads (public key only). */
  readonly registration: { client_id: string; scope: string; jwks: { keys: JWK[] } };
}

/**
 * Loads the demo client from `file`, creating it (a fresh ES384 key pair, file mode 600) on first use, so that
 * tokens obtained with it keep working across sandbox restarts.
 */
export async function loadOrCreateDemoClient(file: string): Promise<DemoClientFile> {
  if (existsSync(file)) return JSON.parse(readFileSync(file, 'utf8')) as DemoClientFile;
  const { publicKey, privateKey } = await generateKeyPair('ES384', { extractable: true });
  const kid = `demo-${Date.now().toString(36)}`;
  const pub = { ...(await exportJWK(publicKey)), kid, alg: 'ES384', use: 'sig' };
  const priv = { ...(await exportJWK(privateKey)), kid, alg: 'ES384' };
  const demo: DemoClientFile = {
    client_id: DEMO_CLIENT_ID,
    scope: DEMO_CLIENT_SCOPE,
    private_jwk: priv,
    registration: { client_id: DEMO_CLIENT_ID, scope: DEMO_CLIENT_SCOPE, jwks: { keys: [pub] } },
  };
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, `${JSON.stringify(demo, null, 2)}\n`, { mode: 0o600 });
  chmodSync(file, 0o600);
  return demo;
}
