#!/usr/bin/env node
// Benchmark dispatcher: `npm run bench -- <name> [--json FILE] [options]`.
// Each benchmark lives in scripts/bench/<name>.mjs, runs against the built packages (npm run bench builds
// first), prints a table, writes JSON with --json, and appends its figures to docs/benchmarks.md with --record.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const [name, ...rest] = process.argv.slice(2);
const available = ['sandbox', 'client', 'writeback', 'writeback-latency'];
if (!name || !available.includes(name)) {
  process.stderr.write(`usage: npm run bench -- <${available.join('|')}> [--json FILE] [--record]\n`);
  process.exit(2);
}
const file = fileURLToPath(new URL(`./bench/${name}.mjs`, import.meta.url));
if (!existsSync(file)) {
  process.stderr.write(`no benchmark ${name}\n`);
  process.exit(2);
}
const mod = await import(file);
await mod.run(rest);
