import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

// These tests run the built CLI exactly as a user does (`npm test` builds first).
const BIN = fileURLToPath(new URL('../../bin/tether.js', import.meta.url));

function run(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

function waitFor(child: ChildProcessWithoutNullStreams, pattern: RegExp, timeoutMs = 15_000): Promise<RegExpMatchArray> {
  return new Promise((resolve, reject) => {
    let seen = '';
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${pattern}; saw: ${seen}`)), timeoutMs);
    child.stdout.on('data', (d: Buffer) => {
      seen += d.toString();
      const m = seen.match(pattern);
      if (m) {
        clearTimeout(timer);
        resolve(m);
      }
    });
  });
}

describe('tether sandbox + tether token (as a user runs them)', () => {
  let dir: string;
  let child: ChildProcessWithoutNullStreams;
  let base: string;
  const env = (): NodeJS.ProcessEnv => ({ TETHER_DATA_DIR: join(dir, '.tether') });

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tether-cli-'));
    child = spawn(process.execPath, [BIN, 'sandbox', '--port', '0', '--seed', '7'], { env: { ...process.env, ...env() } });
    const m = await waitFor(child, /FHIR base URL:\s+(\S+)/);
    base = m[1] as string;
  });
  afterAll(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('prints the FHIR base URL and creates a private demo key', () => {
    expect(base).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/fhir\/R4$/);
    const mode = statSync(join(dir, '.tether', 'sandbox', 'demo-client.json')).mode & 0o777;
    expect(mode).toBe(0o600);
  });

  it('gets a token with a signed assertion that the FHIR server accepts', async () => {
    const res = await run(['token', '--url', base, '--scope', 'system/Patient.cruds'], env());
    expect(res.code).toBe(0);
    const token = JSON.parse(res.stdout) as { access_token: string; token_type: string; scope: string };
    expect(token.token_type).toBe('Bearer');
    expect(token.scope).toBe('system/Patient.cruds');
    const created = await fetch(`${base}/Patient`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token.access_token}`, 'content-type': 'application/fhir+json' },
      body: JSON.stringify({ resourceType: 'Patient', gender: 'female' }),
    });
    expect(created.status).toBe(201);
    // Validation runs on the worker thread in the CLI's default configuration: errors still name the element.
    const invalid = await fetch(`${base}/Patient`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token.access_token}`, 'content-type': 'application/fhir+json' },
      body: JSON.stringify({ resourceType: 'Patient', id: 'client-id', gender: 'female', birthDate: 'not-a-date' }),
    });
    expect(invalid.status).toBe(400);
    const outcome = await invalid.text();
    expect(outcome).toContain('FHIR_INVALID_RESOURCE');
    expect(outcome).toContain('Patient.birthDate');
    const denied = await fetch(`${base}/Observation`, { headers: { authorization: `Bearer ${token.access_token}` } });
    expect(denied.status).toBe(403);
    expect(denied.headers.get('www-authenticate')).toContain('insufficient_scope');
  });

  it('stops cleanly on SIGTERM', async () => {
    const closed = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.kill('SIGTERM');
    expect(await closed).toBe(0);
    expect(out).toContain('Sandbox stopped.');
  });
});

describe('tether start (as a user runs it)', () => {
  let dir: string;

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'tether-start-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('starts the service with the demo tenant, answers the API, and drains on SIGTERM with exit 0', async () => {
    const child = spawn(process.execPath, [BIN, 'start', '--port', '0'], { cwd: dir, env: { ...process.env, TETHER_DATA_DIR: '', TETHER_MASTER_KEY: '', TETHER_LOG_LEVEL: 'warn' } });
    try {
      let err = '';
      const url = await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no banner; stderr: ${err}`)), 30_000);
        child.stderr.on('data', (d: Buffer) => {
          err += d.toString();
          const m = /Console and API:\s+(\S+)/.exec(err);
          if (m && err.includes('Press Ctrl+C')) {
            clearTimeout(timer);
            resolve(m[1] as string);
          }
        });
      });
      expect(err).toContain('Admin API key:    .tether/admin-api-key');
      expect(err).toContain('Demo tenant:      demo -> embedded sandbox EHR http://127.0.0.1:');
      expect(statSync(join(dir, '.tether', 'admin-api-key')).mode & 0o777).toBe(0o600);
      const key = (await import('node:fs')).readFileSync(join(dir, '.tether', 'admin-api-key'), 'utf8').trim();
      const health = await fetch(`${url}/v1/tenants/demo/health`, { headers: { authorization: `Bearer ${key}` } });
      expect(health.status).toBe(200);
      expect((await fetch(`${url}/readyz`)).status).toBe(200);
      const closed = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
      child.kill('SIGTERM');
      expect(await closed).toBe(0);
      expect(err).toContain('Tether stopped.');
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });

  it('production mode without a master key refuses to start: exit 2, CONFIG_UNSAFE named', async () => {
    const res = await run(['start', '--production', '--port', '0'], { TETHER_MASTER_KEY: '', TETHER_DATA_DIR: join(dir, 'prod') });
    expect(res.code).toBe(2);
    expect(res.stderr).toContain('Refusing to start in production mode');
    expect(res.stderr).toContain('TETHER_MASTER_KEY');
  });
});

describe('usage errors', () => {
  it('exit 2 with a clear message on a bad option', async () => {
    const res = await run(['sandbox', '--port', 'abc'], {});
    expect(res.code).toBe(2);
    expect(res.stderr).toContain('--port must be an integer from 0 to 65535');
  });

  it('exit 2 on an unreadable faults file, exit 0 on --help', async () => {
    const bad = await run(['sandbox', '--port', '0', '--faults', '/nonexistent/faults.json'], {});
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('cannot read the faults file');
    const help = await run(['--help'], {});
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('sandbox');
  });

  it('exit 2 on an invalid fault profile', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tether-cli-'));
    try {
      const file = join(dir, 'f.json');
      (await import('node:fs')).writeFileSync(file, JSON.stringify({ faults: [{ kind: 'reset', probability: 2 }] }));
      const res = await run(['sandbox', '--port', '0', '--no-auth', '--faults', file], {});
      expect(res.code).toBe(2);
      expect(res.stderr).toMatch(/probability/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
