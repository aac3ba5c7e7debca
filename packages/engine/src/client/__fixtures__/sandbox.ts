/**
 * Test support for the EHR client: a real sandbox (auth on, real sockets on 127.0.0.1 port 0) and a small
 * TokenProvider that gets real tokens from it with a signed client assertion (`testClient` from the sandbox).
 * Test-only (`__fixtures__` is excluded from the build).
 */
import { TetherError, scopesAllow, type ScopedInteraction } from '@tether/core';
import { observation, startSandbox, testClient, writeLog, type Sandbox, type SandboxLogLine, type SandboxOptions } from '@tether/sandbox';
import type { EhrClientEvent } from '../events.js';
import type { ClientLogger } from '../options.js';
import type { FhirResource } from '../types.js';
import type { TokenProvider } from '../token-provider.js';

/** Scopes the sandbox registers for the test client. */
export const ALL_SCOPES = 'system/Patient.cruds system/Observation.cruds system/Encounter.rs';

/** A TokenProvider over the sandbox's token endpoint, with counters and hooks for tests. */
export class SandboxTokenProvider implements TokenProvider {
  readonly #token: (scope: string) => Promise<string>;
  /** The scope requested for every token (and checked by `assertScope`). */
  scope: string;
  readonly cache = new Map<string, string>();
  getCalls = 0;
  refreshCalls = 0;
  /** Runs inside `refreshAfterUnauthorized`, before the new token is returned (e.g. to clear a fault). */
  onRefresh: (() => Promise<void>) | undefined;

  constructor(token: (scope: string) => Promise<string>, scope: string) {
    this.#token = token;
    this.scope = scope;
  }

  async getAccessToken(tenantId: string, context: string): Promise<string> {
    this.getCalls++;
    const key = `${tenantId}|${context}`;
    const cached = this.cache.get(key);
    if (cached) return cached;
    const token = await this.#token(this.scope);
    this.cache.set(key, token);
    return token;
  }

  async refreshAfterUnauthorized(tenantId: string, context: string, rejected: string): Promise<string> {
    this.refreshCalls++;
    const key = `${tenantId}|${context}`;
    if (this.cache.get(key) === rejected) this.cache.delete(key);
    const token = await this.getAccessToken(tenantId, context);
    await this.onRefresh?.();
    return token;
  }

  assertScope(_tenantId: string, _context: string, resourceType: string, interaction: ScopedInteraction): Promise<void> {
    const decision = scopesAllow(this.scope, { resourceType, interaction, context: 'system' });
    if (!decision.allowed) {
      return Promise.reject(
        new TetherError('EHR_SCOPE_MISSING', `The tenant lacks the scope ${decision.required}.`, { details: { required: decision.required } }),
      );
    }
    return Promise.resolve();
  }
}

export interface TestEhr {
  readonly sandbox: Sandbox;
  readonly tokens: SandboxTokenProvider;
  /** Every sandbox log line, with the sandbox clock at the time it was logged. */
  readonly log: (SandboxLogLine & { readonly at: number })[];
  setFaults(profile: unknown): Promise<void>;
  stats(): Promise<{ requestsSeen: number; byFault: Record<string, { count: number }> }>;
  writes(): Promise<Record<string, unknown>[]>;
  /** FHIR request log lines (one per FHIR request the sandbox handled). */
  requests(): (SandboxLogLine & { readonly at: number; readonly requestId?: string; readonly status?: number })[];
}

/** Starts a sandbox with auth on and a registered backend-services client. Close it with `sandbox.close()`. */
export async function startTestEhr(options: Omit<SandboxOptions, 'auth' | 'clients' | 'log'> & { scope?: string } = {}): Promise<TestEhr> {
  const { scope = ALL_SCOPES, ...rest } = options;
  const client = await testClient('tether-client-test', ALL_SCOPES);
  const log: (SandboxLogLine & { at: number })[] = [];
  const clock = rest.clock ?? Date.now;
  const sandbox = await startSandbox({ ...rest, auth: true, clients: [client.registration], log: (line) => log.push({ ...line, at: clock() }) });
  const tokenEndpoint = sandbox.tokenEndpoint;
  if (!tokenEndpoint) throw new Error('sandbox without token endpoint');
  const tokens = new SandboxTokenProvider((s) => client.token(tokenEndpoint, s), scope);
  return {
    sandbox,
    tokens,
    log,
    async setFaults(profile) {
      const res = await fetch(`${sandbox.url}/_admin/faults`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(profile),
      });
      if (res.status !== 200) throw new Error(`fault profile refused: ${await res.text()}`);
    },
    async stats() {
      return (await (await fetch(`${sandbox.url}/_admin/faults/stats`)).json()) as { requestsSeen: number; byFault: Record<string, { count: number }> };
    },
    writes: () => writeLog(sandbox.url),
    requests: () => log.filter((l) => l.msg === 'sandbox.request') as (SandboxLogLine & { at: number; requestId?: string; status?: number })[],
  };
}

/** Collects every event of a client (through `onEvent`). */
export function eventRecorder(): { events: EhrClientEvent[]; sink: (e: EhrClientEvent) => void; names: () => string[] } {
  const events: EhrClientEvent[] = [];
  return { events, sink: (e) => events.push(e), names: () => events.map((e) => e.name) };
}

/** A logger that keeps every line as JSON text (for PHI canary checks). */
export function memoryLogger(): { logger: ClientLogger; lines: string[] } {
  const lines: string[] = [];
  const write = (level: string) => (fields: Record<string, unknown>, msg: string) => {
    lines.push(JSON.stringify({ level, msg, ...fields }));
  };
  return { logger: { debug: write('debug'), info: write('info'), warn: write('warn'), error: write('error') }, lines };
}

/** A free TCP port on 127.0.0.1 that nobody listens on (bound, then released). */
export async function closedPort(): Promise<number> {
  const { createServer } = await import('node:net');
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address !== null ? address.port : 0;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** The sandbox's test Observation (with a business-key identifier), typed as a FHIR resource. */
export function obs(patientId: string, key: string, extra: Record<string, unknown> = {}): FhirResource & { readonly resourceType: 'Observation' } {
  return { ...observation(patientId, key, extra), resourceType: 'Observation' };
}
