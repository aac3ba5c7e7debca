#!/usr/bin/env node
// Where a process's time goes, by kind of work, from a V8 CPU profile (`node --cpu-prof`):
//   node --cpu-prof --cpu-prof-dir=/tmp/prof scripts/bench.mjs writeback --subjects sqlite --rounds 3
//   node scripts/bench/profile-summary.mjs /tmp/prof/<largest>.cpuprofile [--per N]
// Each sample goes to the first category found walking its stack from the leaf up (so the SQLite statement a
// worker runs counts as `store`, not as `worker`). `--per N` also prints milliseconds per unit (e.g. per command).
// The categories are coarse on purpose: they answer "is it the store, the HTTP client, or our own code?".
import { readFileSync } from 'node:fs';

const CATEGORIES = [
  ['idle', (f) => f.functionName === '(idle)'],
  ['gc', (f) => f.functionName === '(garbage collector)'],
  ['store: SQLite', (f) => /better-sqlite3|\/store\/sqlite-store\.js/.test(f.url)],
  ['store: PostgreSQL driver', (f) => /node_modules\/(pg|pg-pool|pg-protocol)\//.test(f.url)],
  ['store: other', (f) => /\/engine\/dist\/store\//.test(f.url)],
  ['http client (undici)', (f) => /node_modules\/undici\//.test(f.url)],
  ['validation (zod)', (f) => /node_modules\/zod\//.test(f.url)],
  ['hashing and canonical JSON', (f) => /stable-json\.js|internal\/crypto/.test(f.url)],
  ['socket writes', (f) => f.functionName === 'writev' || f.functionName === 'writeBuffer' || f.functionName === 'writeUtf8String'],
  ['engine: EHR client', (f) => /\/engine\/dist\/client\//.test(f.url)],
  ['engine: write-back', (f) => /\/engine\/dist\/writeback\//.test(f.url)],
  ['engine: other', (f) => /\/engine\/dist\//.test(f.url)],
  ['module loading and top-level code', (f) => /internal\/modules\//.test(f.url) || f.functionName === 'compileSourceTextModule'],
];

const [file, ...rest] = process.argv.slice(2);
if (!file) {
  console.error('usage: node scripts/bench/profile-summary.mjs FILE.cpuprofile [--per N]');
  process.exit(2);
}
const perIndex = rest.indexOf('--per');
const per = perIndex >= 0 ? Number(rest[perIndex + 1]) : undefined;

const profile = JSON.parse(readFileSync(file, 'utf8'));
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const parent = new Map();
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);

/** The category of a node: the first one matching along its stack, leaf first; memoised per node. */
const memo = new Map();
function categoryOf(id) {
  if (memo.has(id)) return memo.get(id);
  const frame = byId.get(id).callFrame;
  const own = CATEGORIES.find(([, match]) => match(frame))?.[0];
  const up = parent.get(id);
  const category = own ?? (up === undefined ? 'other' : categoryOf(up));
  memo.set(id, category);
  return category;
}

const micros = new Map();
let total = 0;
profile.samples.forEach((id, i) => {
  const dt = profile.timeDeltas[i] ?? 0;
  total += dt;
  const c = categoryOf(id);
  micros.set(c, (micros.get(c) ?? 0) + dt);
});
const busy = total - (micros.get('idle') ?? 0);
const rows = [...micros]
  .sort((a, b) => b[1] - a[1])
  .map(([category, us]) => ({
    category,
    ms: Math.round(us / 1000),
    'share of busy': category === 'idle' ? '' : `${((100 * us) / busy).toFixed(1)}%`,
    ...(per ? { 'ms per unit': Number((us / 1000 / per).toFixed(3)) } : {}),
  }));
console.log(`${file}: ${Math.round(total / 1000)} ms sampled, ${Math.round(busy / 1000)} ms busy${per ? ` (${(busy / 1000 / per).toFixed(3)} ms per unit over ${per})` : ''}`);
console.table(rows);
