import { afterEach, describe, expect, it } from 'vitest';
import { startSandbox, type Sandbox } from '@tether/sandbox';
import { generateMasterKey, Keyring, parseMasterKey, TenantService, TokenBroker } from '../auth/index.js';
import { createEhrClient, type EhrClient } from '../client/index.js';
import { createStore } from '../store/index.js';

// The auth broker and the EHR client together against the sandbox: tokens expiring mid-run, early 401s and
// revoked tokens under concurrent load.

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function setup(faults: unknown, tokenTtlSeconds: number, concurrency = 16): Promise<{ sandbox: Sandbox; client: EhrClient; broker: TokenBroker; ids: string[] }> {
  const { exportJWK, generateKeyPair } = await import('jose');
  const { publicKey, privateKey } = await generateKeyPair('ES384', { extractable: true });
  const scope = 'system/Patient.rs';
  const sandbox = await startSandbox({
    auth: true,
    tokenTtlSeconds,
    faults,
    clients: [{ client_id: 'svc', scope, jwks: { keys: [{ ...(await exportJWK(publicKey)), kid: 'k', alg: 'ES384' }] } }],
  });
  cleanups.push(() => sandbox.close());
  const ids: string[] = [];
  for (let i = 0; i < 20; i++) {
    ids.push(sandbox.store.create({ resourceType: 'Patient', gender: 'female' }, { requestId: 'seed', interaction: 'create', now: Date.now() }).id);
  }
  const store = createStore({ kind: 'sqlite', path: ':memory:' });
  await store.migrate();
  cleanups.push(() => store.close());
  const keyring = new Keyring(parseMasterKey(generateMasterKey()));
  const broker = new TokenBroker({ store, keyring });
  await new TenantService({ store, keyring, broker }).register({
    id: 'clinic',
    fhirBaseUrl: sandbox.fhirBaseUrl,
    environment: 'sandbox',
    authMethod: 'backend-services',
    clientId: 'svc',
    scopes: scope,
    privateJwk: { ...(await exportJWK(privateKey)), kid: 'k', alg: 'ES384' },
  });
  const client = createEhrClient({ tokenProvider: broker, concurrency, rateLimit: null });
  cleanups.push(() => client.close());
  return { sandbox, client, broker, ids };
}

async function faultCount(sandbox: Sandbox, id: string): Promise<number> {
  const stats = (await (await fetch(`${sandbox.url}/_admin/faults/stats`)).json()) as { byFault: Record<string, { count: number }> };
  return stats.byFault[id]?.count ?? 0;
}

async function tokenRequests(sandbox: Sandbox): Promise<number> {
  return ((await (await fetch(`${sandbox.url}/_admin/auth/stats`)).json()) as { tokenRequests: number }).tokenRequests;
}

describe('auth broker + EHR client under load', () => {
  it('tokens expiring mid-run: every read succeeds, with a handful of token requests, not one per read', async () => {
    // 2 s tokens, reads spread over ~5 s (20 ms latency each, 16 at a time).
    const { sandbox, client } = await setup({ faults: [{ id: 'slow', kind: 'latency', fixedMs: 20 }] }, 2);
    const target = { tenantId: 'clinic', baseUrl: sandbox.fhirBaseUrl };
    const started = Date.now();
    // Each search is distinct, so the client's coalescing of identical GETs does not shrink the load.
    const results = await Promise.allSettled(Array.from({ length: 3000 }, (_, i) => client.search(target, 'system', 'Patient', { identifier: `urn:load|${i}` })));
    const elapsed = Date.now() - started;
    expect(results.filter((r) => r.status === 'rejected').map((r) => (r as PromiseRejectedResult).reason?.code)).toEqual([]);
    const requests = await tokenRequests(sandbox);
    // At least one refresh happened during the run, and far fewer token requests than reads.
    expect(elapsed).toBeGreaterThan(2_000);
    expect(requests).toBeGreaterThanOrEqual(2);
    expect(requests).toBeLessThanOrEqual(Math.ceil(elapsed / 1000) + 2);
  });

  it('early 401s are absorbed by one refresh each, without a storm', async () => {
    const { sandbox, client, ids } = await setup({ faults: [{ id: 'e401', kind: 'early-401', probability: 0.03 }] }, 300);
    const target = { tenantId: 'clinic', baseUrl: sandbox.fhirBaseUrl };
    const results = await Promise.allSettled(
      Array.from({ length: 1000 }, (_, i) => (i % 2 === 0 ? client.read(target, 'system', 'Patient', ids[i % ids.length] as string) : client.search(target, 'system', 'Patient', { identifier: `urn:load|${i}` }))),
    );
    const failures = results.filter((r) => r.status === 'rejected').map((r) => (r as PromiseRejectedResult).reason?.code);
    const fired = (await faultCount(sandbox, 'e401'));
    expect(fired).toBeGreaterThan(10);
    // A call fails only when its one resend after the refresh is hit by the 3% fault again.
    expect(failures.length).toBeLessThanOrEqual(5);
    expect(failures.every((c) => c === 'EHR_UNAUTHORIZED')).toBe(true);
    expect(await tokenRequests(sandbox)).toBeLessThanOrEqual(fired + 1);
  });

  it('a revoked token is replaced once and the call that met it is resent with the new one', async () => {
    // One call at a time: a revocation then hits exactly the request that carried the token.
    const { sandbox, client, ids } = await setup({ faults: [{ id: 'revoke', kind: 'revoke-token', probability: 0.05 }] }, 300, 1);
    const target = { tenantId: 'clinic', baseUrl: sandbox.fhirBaseUrl };
    const failures: string[] = [];
    for (let i = 0; i < 300; i++) {
      try {
        await client.read(target, 'system', 'Patient', ids[i % ids.length] as string);
      } catch (err) {
        failures.push((err as { code: string }).code);
      }
    }
    const fired = await faultCount(sandbox, 'revoke');
    expect(fired).toBeGreaterThan(5);
    // Only a resend that is itself revoked (5%) can fail.
    expect(failures.length).toBeLessThanOrEqual(3);
    expect(failures.every((c) => c === 'EHR_UNAUTHORIZED')).toBe(true);
    // Exactly one new token per revocation (plus the first one).
    expect(await tokenRequests(sandbox)).toBe(fired + 1);
  });
});
