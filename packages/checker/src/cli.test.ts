import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { History, obs, SYSTEM } from './__fixtures__/history.js';
import { main } from './cli.js';
import type { CheckReport } from './types.js';

const PACKAGE_DIR = join(dirname(fileURLToPath(import.meta.url)), '..');
const CANARY = 'Quillfeather Canarybrook';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tether-checker-cli-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const ndjson = (rows: readonly unknown[]): string => rows.map((r) => `${JSON.stringify(r)}\n`).join('');

/** Writes a history's inputs as files into a fresh folder; returns the standard arguments. */
async function files(name: string, h: History, extra: { faults?: unknown } = {}): Promise<{ args: string[]; at: (f: string) => string }> {
  const at = (f: string): string => join(dir, name, f);
  await mkdir(join(dir, name), { recursive: true });
  await writeFile(at('ledger.ndjson'), ndjson(h.ledger));
  await writeFile(at('claims.ndjson'), ndjson(h.claims));
  await writeFile(at('write-log.ndjson'), ndjson(h.writeLog));
  await writeFile(at('final.ndjson'), ndjson(h.finalRead()));
  const args = ['--ledger', at('ledger.ndjson'), '--write-log', at('write-log.ndjson'), '--final', at('final.ndjson'), '--claims', at('claims.ndjson')];
  if (extra.faults !== undefined) {
    await writeFile(at('faults.json'), JSON.stringify(extra.faults));
    args.push('--faults', at('faults.json'));
  }
  return { args, at };
}

async function run(args: readonly string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const code = await main(args, { stdout: { write: (t: string) => (stdout += t) }, stderr: { write: (t: string) => (stderr += t) } });
  return { code, stdout, stderr };
}

function clean(): History {
  const h = new History();
  h.intent('c1', 'a', obs('a', 70), { canaries: [CANARY] });
  h.intent('c2', 'a', obs('a', 72), { seq: 2, action: 'update' });
  h.claim('c1', 'verified').claim('c2', 'verified');
  h.update(h.create(obs('a', 70)), obs('a', 72));
  return h;
}

describe('tether-check main(argv)', () => {
  it('exits 0 on a clean run and prints exactly the report fields', async () => {
    const { args } = await files('clean', clean(), { faults: { seed: 11, total: 3, byKind: { reset: 3 } } });
    const { code, stdout, stderr } = await run(args);
    expect(code).toBe(0);
    const report = JSON.parse(stdout) as CheckReport;
    expect(Object.keys(report)).toEqual([
      'seed', 'commands', 'acknowledged', 'ambiguous', 'recovered', 'lost', 'duplicated', 'unexpected', 'corrupt',
      'stale', 'dropped', 'quarantined', 'canaryHits', 'faults', 'details',
    ]);
    expect(report).toMatchObject({ seed: 11, commands: 2, acknowledged: 2, lost: 0, faults: { total: 3 } });
    expect(stderr).toMatch(/seed 11: 2 commands.*0 lost, 0 duplicated.*→ OK\n$/);
  });

  it('--receipts: a receipted command the engine has no record of is lost (exit 1)', async () => {
    const h = new History();
    h.intent('c1', 'a', obs('a', 70));
    h.intent('c2', 'b', obs('b', 71));
    h.claim('c2', 'verified');
    h.create(obs('b', 71));
    const { args, at } = await files('receipts', h);
    await writeFile(at('receipts.ndjson'), ndjson([{ commandId: 'c1' }, { commandId: 'c2' }]));
    const withReceipts = await run([...args, '--receipts', at('receipts.ndjson')]);
    expect(withReceipts.code).toBe(1);
    expect(JSON.parse(withReceipts.stdout)).toMatchObject({ lost: 1, dropped: 0 });
    const without = await run(args);
    expect(JSON.parse(without.stdout)).toMatchObject({ lost: 0, dropped: 1 });
  });

  it('exits 1 on a violation, 0 for stale with --allow-stale, and writes --json', async () => {
    const h = new History();
    h.intent('c1', 'a', obs('a', 70));
    h.intent('c2', 'a', obs('a', 72), { seq: 2, action: 'update' });
    h.claim('c1', 'verified').claim('c2', 'verified');
    h.create(obs('a', 70)); // the update never landed
    const { args, at } = await files('stale', h);
    const strict = await run([...args, '--seed', 'nightly-3', '--json', at('report.json')]);
    expect(strict.code).toBe(1);
    expect(strict.stderr).toContain('1 stale');
    expect(strict.stderr).toContain('VIOLATION');
    const written = JSON.parse(await readFile(at('report.json'), 'utf8')) as CheckReport;
    expect(written).toEqual(JSON.parse(strict.stdout));
    expect(written.seed).toBe('nightly-3');
    expect((await run([...args, '--allow-stale'])).code).toBe(0);
  });

  it('exits 1 on a canary in a log, scanning directories too, and never prints the canary', async () => {
    const { args, at } = await files('canary', clean());
    await mkdir(at('logs/nested'), { recursive: true });
    await writeFile(at('logs/nested/worker.log'), `{"level":30,"msg":"mapped patient ${CANARY}"}\n`);
    await writeFile(at('logs/api.log'), '{"level":30,"msg":"ok"}\n');
    await writeFile(at('engine.log'), `${CANARY}\n${CANARY}\n`);
    const { code, stdout, stderr } = await run([...args, '--logs', at('logs'), at('engine.log')]);
    expect(code).toBe(1);
    const report = JSON.parse(stdout) as CheckReport;
    expect(report.canaryHits).toBe(2);
    expect(report.details.canaryHits).toEqual([
      { file: at('logs/nested/worker.log'), canaries: 1, occurrences: 1 },
      { file: at('engine.log'), canaries: 1, occurrences: 2 },
    ]);
    expect(`${stdout}${stderr}`).not.toContain(CANARY);
  });

  it('exits 2 on a malformed line, naming file and line, without echoing it', async () => {
    const { args, at } = await files('malformed', clean());
    const final = await readFile(at('final.ndjson'), 'utf8');
    await writeFile(at('final.ndjson'), `${final}\n{"resourceType":"Patient","name":"${CANARY}"\n`);
    const { code, stdout, stderr } = await run(args);
    expect(code).toBe(2);
    expect(stdout).toBe('');
    expect(stderr).toBe(`tether-check: bad input: ${at('final.ndjson')}:3: not valid JSON\n`);
  });

  it('exits 2 on a missing file, a missing option, an unknown option or an ambiguous business-key system', async () => {
    const { args, at } = await files('usage', clean());
    const missingFile = await run([...args.slice(0, 1), at('nope.ndjson'), ...args.slice(2)]);
    expect(missingFile).toMatchObject({ code: 2, stderr: expect.stringContaining('nope.ndjson: cannot read the file (ENOENT)') as unknown });
    expect(await run(args.slice(2))).toMatchObject({ code: 2, stderr: expect.stringContaining('missing --ledger') as unknown });
    expect(await run([...args, '--frobnicate'])).toMatchObject({ code: 2, stderr: expect.stringContaining("Unknown option '--frobnicate'") as unknown });

    const two = clean();
    two.ledger.push({ ...two.ledger[0]!, commandId: 'other', businessKey: 'urn:other|x' });
    const { args: twoArgs } = await files('two-systems', two);
    expect(await run(twoArgs)).toMatchObject({ code: 2, stderr: expect.stringContaining('the ledger uses 2 identifier systems; pass --business-key-system') as unknown });
    // With the flag, the other system's key is audited like any other: here it has no claim and nothing was
    // written, so it was dropped.
    const flagged = await run([...twoArgs, '--business-key-system', SYSTEM]);
    expect(flagged.code).toBe(1);
    expect(JSON.parse(flagged.stdout) as CheckReport).toMatchObject({ dropped: 1, lost: 0 });
  });

  it('prints help and exits 0', async () => {
    const { code, stdout } = await run(['--help']);
    expect(code).toBe(0);
    expect(stdout).toContain('Usage: tether-check --ledger FILE --write-log FILE --final FILE');
  });
});

// The bin runs the compiled CLI; `npm test` builds it first. Under a bare `npx vitest run` without a build there
// is nothing to run, and the in-process tests above cover the same code.
describe.skipIf(!existsSync(join(PACKAGE_DIR, 'dist', 'cli.js')))('bin/tether-check.js', () => {
  it('exits with the code main() returns', async () => {
    const h = new History();
    h.intent('c1', 'a', obs('a', 70));
    h.claim('c1', 'verified');
    const { args } = await files('bin', h);
    const bin = join(PACKAGE_DIR, 'bin', 'tether-check.js');
    const err = await promisify(execFile)(process.execPath, [bin, ...args]).then(
      () => undefined,
      (e: unknown) => e as { code: number; stdout: string },
    );
    expect(err?.code).toBe(1);
    expect((JSON.parse(err?.stdout ?? '{}') as CheckReport).lost).toBe(1);
  });
});
