import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { TenantRecord } from '../store/index.js';
import { assertProductionTenants, loadServiceConfig } from './config.js';

const dir = mkdtempSync(join(tmpdir(), 'tether-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const MASTER = 'a'.repeat(64);

function file(name: string, value: unknown): string {
  const path = join(dir, name);
  writeFileSync(path, typeof value === 'string' ? value : JSON.stringify(value));
  return path;
}

describe('loadServiceConfig', () => {
  it('defaults: development, ./.tether, 127.0.0.1:8080, SQLite, embedded sandbox on', () => {
    const c = loadServiceConfig({ env: {}, cwd: dir });
    expect(c).toMatchObject({ mode: 'development', dataDir: join(dir, '.tether'), http: { host: '127.0.0.1', port: 8080 }, store: { kind: 'sqlite' }, sandbox: { enabled: true } });
    expect(c.masterKey).toBeUndefined();
  });

  it('reads ./tether.config.json, and the environment overrides it', () => {
    const cwd = mkdtempSync(join(dir, 'cwd-'));
    writeFileSync(join(cwd, 'tether.config.json'), JSON.stringify({ http: { port: 9000 }, worker: { concurrency: 3 } }));
    expect(loadServiceConfig({ env: {}, cwd })).toMatchObject({ http: { port: 9000 }, worker: { concurrency: 3 } });
    const c = loadServiceConfig({ env: { TETHER_PORT: '9100', TETHER_DATA_DIR: '/var/lib/tether', TETHER_POSTGRES_URL: 'postgres://db/tether', TETHER_SANDBOX: 'off' }, cwd });
    expect(c).toMatchObject({ http: { port: 9100 }, dataDir: '/var/lib/tether', store: { kind: 'postgres', url: 'postgres://db/tether' }, sandbox: { enabled: false }, worker: { concurrency: 3 } });
  });

  it('names the bad setting, never a value, for invalid files and values', () => {
    expect(() => loadServiceConfig({ env: {}, cwd: dir, file: file('bad.json', '{ nope') })).toThrow(expect.objectContaining({ code: 'CONFIG_INVALID', message: expect.stringContaining('not valid JSON') }));
    expect(() => loadServiceConfig({ env: {}, cwd: dir, file: file('typo.json', { htp: { port: 1 } }) })).toThrow(expect.objectContaining({ code: 'CONFIG_INVALID', message: expect.stringContaining('htp') }));
    expect(() => loadServiceConfig({ env: { TETHER_PORT: '70000' }, cwd: dir })).toThrow(expect.objectContaining({ code: 'CONFIG_INVALID', message: expect.stringContaining('http.port') }));
    expect(() => loadServiceConfig({ env: {}, cwd: dir, file: join(dir, 'missing.json') })).toThrow(expect.objectContaining({ code: 'CONFIG_INVALID' }));
    expect(() => loadServiceConfig({ env: {}, cwd: dir, file: file('key.json', { masterKey: 'SECRET-VALUE' }) })).toThrow(
      expect.objectContaining({ code: 'CONFIG_INVALID', message: expect.not.stringContaining('SECRET-VALUE') }),
    );
  });


  it('takes EHR client settings (docs/client.md) and names a bad one', () => {
    const c = loadServiceConfig({ env: {}, cwd: dir, file: file('client.json', { client: { attemptTimeoutMs: 4_000, rateLimit: null } }) });
    expect(c.client).toMatchObject({ attemptTimeoutMs: 4_000, rateLimit: null, deadlineMs: expect.any(Number) as unknown });
    expect(loadServiceConfig({ env: {}, cwd: dir }).client).toBeUndefined();
    expect(() => loadServiceConfig({ env: {}, cwd: dir, file: file('client-bad.json', { client: { attemptTimeoutMs: -1 } }) })).toThrow(
      expect.objectContaining({ code: 'CONFIG_INVALID', message: expect.stringContaining('client.attemptTimeoutMs') }),
    );
    expect(() => loadServiceConfig({ env: {}, cwd: dir, file: file('client-typo.json', { client: { atemptTimeoutMs: 1 } }) })).toThrow(
      expect.objectContaining({ code: 'CONFIG_INVALID', message: expect.stringContaining('atemptTimeoutMs') }),
    );
  });
  it('production fails closed: no master key, the embedded sandbox, or no API auth setting', () => {
    const safe = { TETHER_MODE: 'production', TETHER_MASTER_KEY: MASTER, TETHER_SANDBOX: 'off', TETHER_API_AUTH: 'api-key' };
    expect(loadServiceConfig({ env: safe, cwd: dir })).toMatchObject({ mode: 'production', sandbox: { enabled: false }, api: { auth: 'api-key' } });
    const cases: [Record<string, string | undefined>, string][] = [
      [{ TETHER_MASTER_KEY: undefined }, 'TETHER_MASTER_KEY'],
      [{ TETHER_SANDBOX: 'on' }, 'sandbox'],
      [{ TETHER_API_AUTH: undefined }, 'api.auth'],
    ];
    for (const [change, needle] of cases) {
      const env = { ...safe, ...change };
      expect(() => loadServiceConfig({ env, cwd: dir })).toThrow(expect.objectContaining({ code: 'CONFIG_UNSAFE', message: expect.stringContaining(needle) }));
    }
  });

  it('production refuses sandbox tenants and plain-HTTP EHR URLs', () => {
    const tenant = (over: Partial<TenantRecord>) => ({ id: 't1', environment: 'production', fhirBaseUrl: 'https://ehr.example/fhir', ...over }) as TenantRecord;
    expect(() => assertProductionTenants([tenant({})])).not.toThrow();
    expect(() => assertProductionTenants([tenant({ environment: 'sandbox' })])).toThrow(expect.objectContaining({ code: 'CONFIG_UNSAFE', message: expect.stringContaining('sandbox tenant') }));
    expect(() => assertProductionTenants([tenant({ fhirBaseUrl: 'http://ehr.example/fhir' })])).toThrow(expect.objectContaining({ code: 'CONFIG_UNSAFE', message: expect.stringContaining('plain-HTTP') }));
  });
});
