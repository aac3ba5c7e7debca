import { fork, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSandbox, type Sandbox } from '@tether/sandbox';
import { createStore } from '../store/index.js';
import type { Store } from '../store/types.js';
import { generateMasterKey, Keyring, parseMasterKey } from './keyring.js';
import { TenantService } from './tenants.js';

// Runs the built engine in child processes (`npm test` builds before vitest).
const WORKER = fileURLToPath(new URL('./__fixtures__/broker-worker.mjs', import.meta.url));
const ADMIN_URL = process.env['TETHER_TEST_PG_URL'] ?? 'postgres://postgres@127.0.0.1:5432/test';
const PROCESSES = 4;
const CALLERS = 250;
const ROUNDS = 3;
const TOKEN_TTL_SECONDS = 4;

type Reply = { type: 'ready' } | { type: 'done'; tokens: string[] } | { type: 'error'; code: string; message: string };

function next(child: ChildProcess): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const onExit = (code: number | null): void => reject(new Error(`worker exited with ${code}`));
    child.once('exit', onExit);
    child.once('message', (m: Reply) => {
      child.off('exit', onExit);
      if (m.type === 'error') reject(new Error(`${m.code}: ${m.message}`));
      else resolve(m);
    });
  });
}

describe('single-flight refresh across processes (PostgreSQL)', () => {
  const dbName = `tether_auth_${randomBytes(6).toString('hex')}`;
  const connectionString = ADMIN_URL.replace(/\/[^/]*$/, `/${dbName}`);
  const masterKey = generateMasterKey();
  let sandbox: Sandbox;
  let store: Store;
  const children: ChildProcess[] = [];

  beforeAll(async () => {
    const admin = new pg.Client({ connectionString: ADMIN_URL });
    await admin.connect();
    await admin.query(`CREATE DATABASE ${dbName}`);
    await admin.end();
    const { exportJWK, generateKeyPair } = await import('jose');
    const { publicKey, privateKey } = await generateKeyPair('ES384', { extractable: true });
    const scope = 'system/Patient.rs';
    sandbox = await startSandbox({
      auth: true,
      tokenTtlSeconds: TOKEN_TTL_SECONDS,
      clients: [{ client_id: 'svc', scope, jwks: { keys: [{ ...(await exportJWK(publicKey)), kid: 'k', alg: 'ES384' }] } }],
    });
    store = await createStore({ kind: 'postgres', connectionString });
    await store.migrate();
    await new TenantService({ store, keyring: new Keyring(parseMasterKey(masterKey)) }).register({
      id: 'clinic',
      fhirBaseUrl: sandbox.fhirBaseUrl,
      environment: 'sandbox',
      authMethod: 'backend-services',
      clientId: 'svc',
      scopes: scope,
      privateJwk: { ...(await exportJWK(privateKey)), kid: 'k', alg: 'ES384' },
    });
    for (let i = 0; i < PROCESSES; i++) {
      // A plain node process: none of the test runner's loader flags or conditions.
      const child = fork(WORKER, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: [], env: { ...process.env, NODE_OPTIONS: '' } });
      children.push(child);
      const ready = next(child);
      child.send({ type: 'init', connectionString, masterKey });
      await ready;
    }
  }, 60_000);

  afterAll(async () => {
    for (const c of children) {
      if (c.exitCode === null) c.send({ type: 'exit' });
    }
    await new Promise((resolve) => setTimeout(resolve, 300));
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
    await store?.close();
    await sandbox?.close();
    const admin = new pg.Client({ connectionString: ADMIN_URL });
    await admin.connect();
    await admin.query(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`);
    await admin.end();
  });

  it(`${PROCESSES} processes × ${CALLERS} concurrent callers over ${ROUNDS} expiries: one token request per expiry`, async () => {
    const seen: string[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const replies = children.map((c) => next(c));
      for (const c of children) c.send({ type: 'round', tenantId: 'clinic', callers: CALLERS });
      const tokens = new Set((await Promise.all(replies)).flatMap((r) => (r.type === 'done' ? r.tokens : [])));
      // Every caller in every process got the same token in this round.
      expect(tokens.size).toBe(1);
      seen.push(...tokens);
      // Wait for this token to expire, so the next round needs a new one.
      if (round < ROUNDS - 1) await new Promise((resolve) => setTimeout(resolve, TOKEN_TTL_SECONDS * 1000 + 300));
    }
    expect(new Set(seen).size).toBe(ROUNDS);
    const stats = (await (await fetch(`${sandbox.url}/_admin/auth/stats`)).json()) as { tokenRequests: number };
    expect(stats.tokenRequests).toBe(ROUNDS);
  }, 60_000);
});
