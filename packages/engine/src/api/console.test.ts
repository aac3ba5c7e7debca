/**
 * Serving the console: a real service with a stand-in `dist/` (no build needed), so this runs without the console
 * having been built. The browser test (packages/console/src/console.e2e.test.ts) drives the real build.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestService, type TestService } from '../service/__fixtures__/service.js';
import { consolePlugin } from './console.js';

let dir: string;
let dist: string;
let t: TestService;

const get = async (path: string): Promise<{ status: number; headers: Record<string, unknown>; body: string }> => {
  const res = await request(`${t.svc.url}${path}`);
  return { status: res.statusCode, headers: res.headers as Record<string, unknown>, body: await res.body.text() };
};

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'tether-console-dist-'));
  dist = join(dir, 'dist');
  mkdirSync(join(dist, 'assets'), { recursive: true });
  writeFileSync(join(dist, 'index.html'), '<!doctype html><title>console</title><script type="module" src="./assets/app-1a2b.js"></script>');
  writeFileSync(join(dist, 'assets', 'app-1a2b.js'), 'console.log(1);');
  writeFileSync(join(dist, 'favicon.svg'), '<svg xmlns="http://www.w3.org/2000/svg"/>');
  writeFileSync(join(dist, '.secret'), 'dotfile');
  writeFileSync(join(dir, 'outside.txt'), 'not served');
  t = await startTestService({ worker: { enabled: false } }, { consoleDir: dist });
}, 60_000);

afterAll(async () => {
  await t?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('consolePlugin', () => {
  it('serves index.html at / with no-cache and a Content-Security-Policy that allows this origin only', async () => {
    const res = await get('/');
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toContain('text/html');
    expect(res.headers['cache-control']).toBe('no-cache');
    expect(res.headers['content-security-policy']).toContain("default-src 'self'");
    expect(res.headers['content-security-policy']).toContain("frame-ancestors 'none'");
    expect(res.headers['x-content-type-options']).toBe('nosniff');
    expect(res.body).toContain('<title>console</title>');
  });

  it('serves hashed assets as immutable and the top-level files of dist/', async () => {
    const js = await get('/assets/app-1a2b.js');
    expect(js.status).toBe(200);
    expect(js.headers['content-type']).toContain('javascript');
    expect(js.headers['cache-control']).toContain('immutable');
    expect((await get('/favicon.svg')).status).toBe(200);
  });

  it('answers anything else with the API 404 OperationOutcome: missing assets, dotfiles, paths outside dist/', async () => {
    for (const path of ['/assets/missing.js', '/.secret', '/index.html/x', '/assets/../outside.txt', '/assets/%2e%2e/%2e%2e/outside.txt', '/commands']) {
      const res = await get(path);
      expect({ path, status: res.status }).toEqual({ path, status: 404 });
      expect(res.body).not.toContain('not served');
    }
    const missing = await get('/assets/missing.js');
    expect(missing.headers['content-type']).toContain('application/fhir+json');
    expect(missing.body).toContain('API_NOT_FOUND');
  });

  it('declares its routes public and leaves the API behind its key', async () => {
    const open = t.svc.app.tetherRoutes.filter((r) => 'public' in r.access).map((r) => r.url);
    expect(open).toEqual(expect.arrayContaining(['/', '/assets/*', '/favicon.svg']));
    expect((await get('/v1/me')).status).toBe(401);
    expect((await get('/v1/commands')).status).toBe(401);
  });

  it('refuses a directory without index.html', () => {
    expect(() => consolePlugin(join(dir, 'nope'))).toThrow(/index\.html/);
  });
});
