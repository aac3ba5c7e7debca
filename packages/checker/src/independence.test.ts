import { readdir, readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const SRC = dirname(fileURLToPath(import.meta.url));

describe('independence', () => {
  it('no runtime source file of the checker imports another Tether package', async () => {
    // The auditor shares no code with what it audits: a bug in a shared helper (say, the canonical hash) would
    // otherwise cancel out and hide itself. Tests may use Tether packages as fixtures and oracles.
    const files = (await readdir(SRC, { recursive: true }))
      .filter((f) => f.endsWith('.ts') && !f.endsWith('.test.ts') && !f.includes('__fixtures__'));
    expect(files.length).toBeGreaterThan(5);
    for (const f of files) {
      const text = await readFile(join(SRC, f), 'utf8');
      expect(text, f).not.toMatch(/(?:from|import\s*\()\s*['"]@tether\//);
    }
  });

  it('the package declares no dependencies', async () => {
    const pkg = JSON.parse(await readFile(join(SRC, '..', 'package.json'), 'utf8')) as Record<string, unknown>;
    expect(pkg['dependencies']).toBeUndefined();
    expect(pkg['peerDependencies']).toBeUndefined();
  });
});
