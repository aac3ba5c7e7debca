/**
 * The console end to end, in a real browser: Debian's chromium driven by playwright-core against a real service
 * (embedded SQLite store, workers, the embedded sandbox EHR as tenant `demo`) that serves the built console at `/`.
 *
 * Walks what an operator does: sign in (a bad key shows the API's error), submit a command and watch it reach
 * `verified` on its timeline, see a command the EHR keeps failing (sandbox fault) land in the exception queue with
 * the EHR's current state, retry it with a reason once the EHR is back and watch it verify, resume a paused tenant;
 * and what a viewer sees: masked PHI, no actions. Screenshots of every step go to test-artifacts/console/.
 *
 * Needs chromium at /usr/bin/chromium (CI: `.ci/run` installs it; CHROMIUM_PATH overrides) and the built console
 * (`npm test` builds it first). Without them the suite FAILS with a message saying so: it never skips.
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
// (Browser-side expressions are passed to page.evaluate as strings: this file is type-checked for Node, without DOM.)
// Test harness only: the console itself imports nothing from the engine (DESIGN §3).
import { canaryObservation, startTestService, type TestService } from '../../engine/src/service/__fixtures__/service.js';

const CHROMIUM = process.env['CHROMIUM_PATH'] ?? '/usr/bin/chromium';
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const DIST_INDEX = join(ROOT, 'packages/console/dist/index.html');
const SHOTS = join(ROOT, 'test-artifacts/console');
const CANARY = 'CANARY-CONSOLE-5c2d';
/** Longest wait for a command to move (worker poll 20 ms, backoff at most 200 ms, verify window 500 ms). */
const SETTLE_MS = 25_000;
const UI_MS = 10_000;

let t: TestService;
let browser: Browser;
let admin: BrowserContext;
let page: Page;
let profileDir: string;
let viewerKey = '';
let verifiedId = '';
let exceptionId = '';
const pageErrors: string[] = [];
const foreignRequests: string[] = [];

function watch(p: Page): void {
  p.on('pageerror', (err) => pageErrors.push(`pageerror: ${err.message}`));
  p.on('console', (msg) => {
    // A 4xx the console shows on purpose is logged by chromium as a failed resource load: not a page error.
    if (msg.type() === 'error' && !/Failed to load resource: the server responded with a status of 4\d\d/.test(msg.text())) pageErrors.push(`console: ${msg.text()}`);
  });
  p.on('request', (req) => {
    if (!req.url().startsWith(t.svc.url) && !req.url().startsWith('data:')) foreignRequests.push(req.url());
  });
}

/** Form controls without a label (a `<label for>`, a wrapping label or aria-label): must be none. */
const unlabelled = (p: Page): Promise<string[]> =>
  p.evaluate(`[...document.querySelectorAll('input, select, textarea')]
    .filter((e) => e.labels.length === 0 && !e.getAttribute('aria-label'))
    .map((e) => e.outerHTML.slice(0, 80))`);

const shot = (p: Page, name: string): Promise<Buffer> => p.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });

const stateIs = (p: Page, state: string, timeout = SETTLE_MS): Promise<unknown> =>
  p.locator(`.state-line [data-state="${state}"]`).waitFor({ state: 'visible', timeout });

async function signIn(p: Page, key: string): Promise<void> {
  await p.goto(`${t.svc.url}/`, { timeout: UI_MS });
  await p.getByLabel('API key').fill(key, { timeout: UI_MS });
  await p.getByRole('button', { name: 'Sign in' }).click({ timeout: UI_MS });
  await p.getByRole('heading', { level: 1, name: 'Overview' }).waitFor({ timeout: UI_MS });
}

async function submitThroughForm(p: Page, businessKey: string): Promise<void> {
  await p.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Submit' }).click({ timeout: UI_MS });
  await p.getByLabel('Business key').fill(businessKey, { timeout: UI_MS });
  await p.getByLabel('Resource (FHIR R4 JSON)').fill(JSON.stringify(canaryObservation(CANARY), null, 2));
  await p.getByRole('button', { name: 'Submit command' }).click();
}

async function commandIdFromUrl(p: Page): Promise<string> {
  await p.waitForURL(/#\/commands\/[0-9a-f-]{36}$/, { timeout: UI_MS });
  return decodeURIComponent(new URL(p.url()).hash.replace('#/commands/', ''));
}

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`chromium is not installed at ${CHROMIUM}: the console e2e test needs it. Install it with \`apt-get install -y --no-install-recommends chromium\` (CI: .ci/run does), or set CHROMIUM_PATH.`);
  }
  if (!existsSync(DIST_INDEX)) {
    throw new Error(`the console is not built (${DIST_INDEX} is missing): run \`npm run build\` (or \`npm run build -w @tether/console\`) first; \`npm test\` does.`);
  }
  mkdirSync(SHOTS, { recursive: true });
  t = await startTestService({ worker: { pollIntervalMs: 20, verifyWindowMs: 500, backoffBaseMs: 50, backoffMaxMs: 200, maxAttempts: 2 } });
  const created = await t.api('POST', '/v1/api-keys', { body: { name: 'e2e-viewer', role: 'viewer' } });
  expect(created.status).toBe(201);
  viewerKey = created.body.key;
  // A fresh profile per run (launch() would make a temporary one too; this keeps it explicit and removable).
  profileDir = mkdtempSync(join(tmpdir(), 'tether-console-e2e-'));
  browser = await chromium.launch({ executablePath: CHROMIUM, args: [...CHROMIUM_ARGS, `--disk-cache-dir=${join(profileDir, 'cache')}`], timeout: 30_000 });
  admin = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await admin.newPage();
  watch(page);
}, 90_000);

afterAll(async () => {
  await browser?.close();
  await t?.close();
  if (profileDir) rmSync(profileDir, { recursive: true, force: true });
}, 30_000);

// One browser walk: each step builds on the one before. Every wait inside is bounded (UI_MS, SETTLE_MS).
describe('the console in a browser', { timeout: 60_000 }, () => {
  it('is served at / from the API origin with a strict Content-Security-Policy', async () => {
    const res = await fetch(`${t.svc.url}/`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toContain('text/html');
    expect(res.headers.get('content-security-policy')).toContain("script-src 'self'");
    const html = await res.text();
    expect(html).not.toMatch(/https?:\/\//);
    const asset = /src="\.\/(assets\/[^"]+\.js)"/.exec(html)?.[1];
    expect(asset).toBeDefined();
    const js = await fetch(`${t.svc.url}/${asset}`);
    expect(js.status).toBe(200);
    expect(js.headers.get('cache-control')).toContain('immutable');
    expect(res.headers.get('cache-control')).toBe('no-cache');
    // Unknown paths stay the API's OperationOutcome 404.
    const missing = await fetch(`${t.svc.url}/assets/nothing.js`);
    expect(missing.status).toBe(404);
  });

  it('signs in: a bad key shows the API error, the admin key opens the overview', async () => {
    await page.goto(`${t.svc.url}/`, { timeout: UI_MS });
    await page.getByLabel('API key').fill('tk_notakey_x');
    await page.getByRole('button', { name: 'Sign in' }).click();
    const alert = page.getByRole('alert');
    await alert.waitFor({ timeout: UI_MS });
    expect(await alert.textContent()).toContain('API_UNAUTHENTICATED');
    await shot(page, '01-signin-bad-key');

    // Keyboard: Enter in the field signs in.
    await page.getByLabel('API key').fill(t.adminKey);
    await page.getByLabel('API key').press('Enter');
    await page.getByRole('heading', { level: 1, name: 'Overview' }).waitFor({ timeout: UI_MS });
    await page.locator('[data-table="tenants"] tr[data-tenant="demo"]').waitFor({ timeout: UI_MS });
    expect(await page.locator('[data-role]').textContent()).toBe('admin');
    expect(await page.evaluate('sessionStorage.getItem("tether.console.apiKey")')).toBe(t.adminKey);
    expect(await page.evaluate('localStorage.length + document.cookie.length')).toBe(0);
    await shot(page, '02-overview');
  });

  it('submits a command through the form and watches it reach verified on its timeline', async () => {
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Submit' }).click({ timeout: UI_MS });
    await page.getByLabel('Business key').waitFor({ timeout: UI_MS });
    expect(await unlabelled(page)).toEqual([]);
    await submitThroughForm(page, 'e2e:obs-1');
    verifiedId = await commandIdFromUrl(page);
    await page.getByText('Saved: command').waitFor({ timeout: UI_MS });
    await stateIs(page, 'verified');
    const applied = page.locator('.timeline [data-outcome="applied"]');
    await applied.first().waitFor({ timeout: UI_MS });
    expect(await applied.first().textContent()).toContain('201');
    expect(await page.locator('.timeline [data-event="submitted"]').count()).toBe(1);
    expect(await page.locator('pre.json').textContent()).toContain(CANARY);
    await shot(page, '03-command-verified');
    expect((await t.api('GET', `/v1/commands/${verifiedId}`)).body.command.state).toBe('verified');
  });

  it("shows the API's OperationOutcome message and code for a command it refuses", async () => {
    await submitThroughForm(page, 'e2e|bad');
    const alert = page.getByRole('alert');
    await alert.waitFor({ timeout: UI_MS });
    const text = await alert.textContent();
    expect(text).toContain('REQUEST_INVALID');
    expect(text).toContain('businessKey');
    await shot(page, '04-submit-refused');
  });

  it('a command the EHR keeps failing lands in the exception queue, with the EHR state and its last response', async () => {
    await t.sandboxAdmin('/_admin/faults', { faults: [{ id: 'creates-fail', kind: 'error-before', status: 503, match: { interactions: ['create'] } }] });
    await submitThroughForm(page, 'e2e:exc-1');
    exceptionId = await commandIdFromUrl(page);
    await stateIs(page, 'needs_review');
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Exceptions' }).click();
    const row = page.locator(`[data-table="commands"] tr[data-command="${exceptionId}"]`);
    await row.waitFor({ timeout: UI_MS });
    expect(await row.textContent()).toContain('attempts_exhausted');
    await shot(page, '05-exception-queue');

    await row.getByRole('link').click();
    await page.locator('[data-ehr-state="absent"]').waitFor({ timeout: UI_MS });
    expect(await page.locator('[data-field="last-status"]').textContent()).toBe('503');
    expect(await page.locator('button[data-action]').evaluateAll((bs) => bs.map((b) => b.getAttribute('data-action')))).toEqual(['retry', 'resolve', 'cancel']);
    expect(await unlabelled(page)).toEqual([]);
    await shot(page, '06-exception-detail');
  });

  it('a viewer sees masked PHI and no action buttons', async () => {
    const viewer = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    try {
      const p = await viewer.newPage();
      watch(p);
      await signIn(p, viewerKey);
      expect(await p.locator('[data-role]').textContent()).toBe('viewer');
      expect(await p.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Submit' }).count()).toBe(0);
      expect(await p.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Sandbox' }).count()).toBe(0);

      await p.goto(`${t.svc.url}/#/exceptions/${exceptionId}`);
      await stateIs(p, 'needs_review', UI_MS);
      await p.locator('[data-masked="resource"]').waitFor({ timeout: UI_MS });
      expect(await p.locator('.masked').first().textContent()).toContain('masked');
      expect(await p.locator('button[data-action]').count()).toBe(0);
      expect(await p.locator('#action-reason').count()).toBe(0);
      const content = await p.content();
      expect(content).not.toContain(CANARY);
      expect(content).not.toContain('e2e:exc-1');
      await shot(p, '07-viewer-exception-masked');

      await p.goto(`${t.svc.url}/#/commands`);
      await p.locator(`tr[data-command="${verifiedId}"]`).waitFor({ timeout: UI_MS });
      expect(await p.content()).not.toContain('e2e:obs-1');
      await shot(p, '08-viewer-commands-masked');
    } finally {
      await viewer.close();
    }
  });

  it('an operator retries with a reason once the EHR is back (fault switched off on the Sandbox screen), and it reaches verified', async () => {
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Sandbox' }).click();
    expect(await page.locator('[data-field="fault-count"]').textContent({ timeout: UI_MS })).toBe('1');
    await page.getByRole('button', { name: 'No faults' }).click();
    await page.getByRole('button', { name: 'Apply profile' }).click();
    await page.getByText('Applied.').waitFor({ timeout: UI_MS });
    await page.locator('[data-field="fault-count"]', { hasText: 'none' }).waitFor({ timeout: UI_MS });
    expect(await t.sandboxAdmin('/_admin/faults')).toMatchObject({ faults: [] });
    await shot(page, '09-sandbox-faults-off');

    await page.goto(`${t.svc.url}/#/exceptions/${exceptionId}`);
    await stateIs(page, 'needs_review', UI_MS);
    // Without a reason the form does not submit (required field): still the exception screen, still needs_review.
    await page.getByRole('button', { name: 'Retry' }).click();
    expect(await page.locator('#action-reason').evaluate((el) => (el as unknown as { validity: { valueMissing: boolean } }).validity.valueMissing)).toBe(true);
    expect(page.url()).toContain(`#/exceptions/${exceptionId}`);

    await page.getByLabel('Reason (required, kept in the audit trail)').fill('EHR back up after the 503 outage');
    await page.getByRole('button', { name: 'Retry' }).click();
    await page.waitForURL(new RegExp(`#/commands/${exceptionId}$`), { timeout: UI_MS });
    await page.getByText('Retried: the command is now queued').waitFor({ timeout: UI_MS });
    await stateIs(page, 'verified');
    const retry = page.locator('.timeline [data-event="operator:retry"]');
    expect(await retry.textContent()).toContain('EHR back up after the 503 outage');
    await shot(page, '10-retried-verified');
    expect((await t.api('GET', `/v1/commands/${exceptionId}`)).body.command.state).toBe('verified');
  });

  it('lists commands by tenant and state, and opens one by id', async () => {
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Commands' }).click();
    await page.getByLabel('Tenant').selectOption('demo', { timeout: UI_MS });
    await page.getByLabel('State').selectOption('verified');
    await page.getByRole('button', { name: 'Search' }).click();
    await page.waitForURL(/#\/commands\?tenant=demo&state=verified$/, { timeout: UI_MS });
    // Wait for the filtered list itself: right after the URL changes, the unfiltered list may still be on screen
    // (it holds this row too), and the filtered screen then mounts empty until its first fetch answers.
    const list = page.locator('[data-showing="tenant=demo&state=verified"]');
    await list.locator(`tr[data-command="${exceptionId}"]`).waitFor({ timeout: UI_MS });
    const states = await list.locator('[data-table="commands"] tbody [data-state]').allTextContents();
    expect(states.length).toBeGreaterThanOrEqual(2);
    expect(new Set(states)).toEqual(new Set(['verified']));
    await page.getByLabel('Command id').fill(verifiedId);
    await page.getByLabel('Command id').press('Enter');
    await page.waitForURL(new RegExp(`#/commands/${verifiedId}$`), { timeout: UI_MS });
    await stateIs(page, 'verified', UI_MS);
  });

  it("an action the API refuses shows the OperationOutcome (someone else acted first: 409)", async () => {
    await t.sandboxAdmin('/_admin/faults', { faults: [{ id: 'reject-notes', kind: 'schema-drift', elements: ['Observation.note'] }] });
    try {
      const submitted = await t.api('POST', '/v1/commands', {
        body: { tenantId: 'demo', context: 'system', action: 'create', resourceType: 'Observation', resource: canaryObservation(CANARY), businessKey: 'e2e:rej-1' },
      });
      expect(submitted.status).toBe(202);
      const id: string = submitted.body.id;
      await t.waitFor(id, (s) => s === 'rejected', SETTLE_MS);
      await page.goto(`${t.svc.url}/#/exceptions/${id}`);
      await stateIs(page, 'rejected', UI_MS);
      // A rejected command can be retried or cancelled, not resolved (nothing reached the EHR).
      expect(await page.locator('button[data-action]').evaluateAll((bs) => bs.map((b) => b.getAttribute('data-action')))).toEqual(['retry', 'cancel']);
      // Hold the page's refreshes so it keeps showing the old state, then let another operator cancel it.
      const held: { abort(): Promise<void> }[] = [];
      await page.route(`**/v1/exceptions/${id}`, (route) => void held.push(route));
      expect((await t.api('POST', `/v1/exceptions/${id}/cancel`, { body: { reason: 'duplicate order' } })).status).toBe(200);
      await page.getByLabel('Reason (required, kept in the audit trail)').fill('mapping fixed');
      await page.getByRole('button', { name: 'Retry' }).click();
      const alert = page.locator('.actions-panel [role="alert"]');
      await alert.waitFor({ timeout: UI_MS });
      expect(await alert.textContent()).toContain('COMMAND_NOT_RETRYABLE');
      await page.unroute(`**/v1/exceptions/${id}`);
      await Promise.all(held.map((r) => r.abort().catch(() => undefined)));
      // Refreshes resume: the page shows the state as it is now, and the refusal stays in view.
      await stateIs(page, 'cancelled', UI_MS);
      expect(await page.getByRole('alert').textContent()).toContain('COMMAND_NOT_RETRYABLE');
      await shot(page, '11-action-refused');
    } finally {
      await t.sandboxAdmin('/_admin/faults', { faults: [] });
    }
  });

  it('shows tenant health and resumes a paused tenant', async () => {
    await t.svc.store.tenants.update('demo', { state: 'auth_paused', stateReason: 'AUTH_INVALID_CLIENT' });
    await page.goto(`${t.svc.url}/#/tenants/demo`);
    await page.locator('[data-tenant-state="auth_paused"]').waitFor({ timeout: UI_MS });
    expect(await page.locator('[data-breaker]').textContent()).toContain('closed');
    await shot(page, '12-tenant-paused');
    await page.getByRole('button', { name: 'Resume tenant' }).click();
    await page.getByText('Resumed: the tenant is active').waitFor({ timeout: UI_MS });
    await page.locator('[data-tenant-state="active"]').waitFor({ timeout: UI_MS });
    expect((await t.api('GET', '/v1/tenants/demo')).body.state).toBe('active');
    await shot(page, '13-tenant-resumed');
  });

  it('the overview charts the work: verified per minute, attempt outcomes, the queue', async () => {
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Overview' }).click();
    await page.locator('figure.chart').nth(2).waitFor({ timeout: UI_MS });
    const titles = await page.locator('figure.chart svg > title').allTextContents();
    expect(titles[0]).toMatch(/Verified per minute, last 30 minutes: [2-9]\d* verified/);
    expect(titles[1]).toMatch(/applied/);
    // The 503 before the write counts as an ambiguous outcome (5xx after sending): docs/writeback.md.
    expect(titles[1]).toMatch(/unknown · ambiguous/);
    await shot(page, '14-overview-charts');
  });

  it('signs out and forgets the key', async () => {
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByLabel('API key').waitFor({ timeout: UI_MS });
    expect(await page.evaluate('sessionStorage.length')).toBe(0);
  });

  it('loaded nothing from another origin and raised no page errors (CSP included)', () => {
    expect(foreignRequests).toEqual([]);
    expect(pageErrors).toEqual([]);
  });
});
