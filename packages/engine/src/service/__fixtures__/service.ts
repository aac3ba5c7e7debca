/**
 * A real service for tests: temp data dir, embedded SQLite store, embedded sandbox EHR (tenant `demo`), API on
 * 127.0.0.1 port 0, logs captured (to scan for PHI canaries).
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { loadServiceConfig, startService, type RunningService, type ServiceConfigInput, type ServiceSeams } from '../index.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- test convenience: API answers are JSON read field by field in assertions */

export interface TestService {
  readonly svc: RunningService;
  readonly adminKey: string;
  readonly logs: string[];
  readonly dir: string;
  api(method: string, path: string, options?: { key?: string | null; body?: unknown; headers?: Record<string, string> }): Promise<{ status: number; headers: Record<string, unknown>; body: any }>;
  /** Polls GET /v1/commands/:id until `until(state)` or the time is up; returns the last body. */
  waitFor(id: string, until: (state: string) => boolean, timeoutMs?: number): Promise<any>;
  sandboxAdmin(path: string, body?: unknown): Promise<any>;
  /** Stops the service; removes the data directory unless `keepFiles`. */
  close(keepFiles?: boolean): Promise<void>;
}

export async function startTestService(overrides: ServiceConfigInput = {}, seams: ServiceSeams = {}): Promise<TestService> {
  const dir = mkdtempSync(join(tmpdir(), 'tether-svc-'));
  const config = loadServiceConfig({
    env: {},
    cwd: dir,
    overrides: {
      http: { port: 0 },
      sandbox: { port: 0 },
      worker: { pollIntervalMs: 20, verifyWindowMs: 500, backoffBaseMs: 50, backoffMaxMs: 200 },
      log: { level: 'debug' },
      ...overrides,
    },
  });
  const logs: string[] = [];
  const svc = await startService(config, { logDestination: { write: (line: string) => void logs.push(line) }, ...seams });
  const adminKey = readFileSync(join(config.dataDir, 'admin-api-key'), 'utf8').trim();

  const api: TestService['api'] = async (method, path, options = {}) => {
    const key = options.key === undefined ? adminKey : options.key;
    const headers: Record<string, string> = { ...(key ? { authorization: `Bearer ${key}` } : {}), ...(options.headers ?? {}) };
    let body: string | undefined;
    if (options.body !== undefined) {
      body = typeof options.body === 'string' ? options.body : JSON.stringify(options.body);
      headers['content-type'] ??= 'application/json';
    }
    const res = await request(`${svc.url}${path}`, { method: method as 'GET', headers, ...(body !== undefined ? { body } : {}) });
    const text = await res.body.text();
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // not JSON (metrics)
    }
    return { status: res.statusCode, headers: res.headers as Record<string, unknown>, body: parsed };
  };

  return {
    svc,
    adminKey,
    logs,
    dir,
    api,
    async waitFor(id, until, timeoutMs = 20_000) {
      const end = Date.now() + timeoutMs;
      let last: any;
      while (Date.now() < end) {
        last = (await api('GET', `/v1/commands/${id}`)).body;
        if (until(last?.command?.state)) return last;
        await new Promise((r) => setTimeout(r, 50));
      }
      throw new Error(`command ${id} stayed ${String(last?.command?.state)}`);
    },
    async sandboxAdmin(path, body) {
      if (!svc.sandbox) throw new Error('no sandbox');
      const res = await request(`${svc.sandbox.url}${path}`, {
        method: body === undefined ? 'GET' : 'POST',
        ...(body === undefined ? {} : { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } }),
      });
      const text = await res.body.text();
      // The write log is NDJSON; everything else JSON.
      return res.headers['content-type']?.toString().includes('ndjson') ? text.split('\n').filter(Boolean).map((l) => JSON.parse(l)) : JSON.parse(text);
    },
    async close(keepFiles = false) {
      await svc.close();
      if (!keepFiles) rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** An Observation with planted PHI canaries (patient reference, note text, identifier). */
export function canaryObservation(canary: string): Record<string, unknown> {
  return {
    resourceType: 'Observation',
    status: 'final',
    code: { coding: [{ system: 'http://loinc.org', code: '8867-4', display: 'Heart rate' }] },
    subject: { reference: `Patient/${canary}-patient`, display: `${canary} Name` },
    valueQuantity: { value: 72, unit: 'beats/minute', system: 'http://unitsofmeasure.org', code: '/min' },
    note: [{ text: `${canary} note text` }],
  };
}
