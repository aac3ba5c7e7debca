import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { judgeScenario, orphanDeclarations, verdictFor, type FieldResult } from './compare.js';
import { startSandboxTarget } from './http-target.js';
import { KNOWN_DIFFERENCES } from './known-differences.js';
import { createMedplumTarget } from './medplum-target.js';
import { contract, defineScenario, specEquals, specOneOf, type DifferenceKey, type KnownDifference, type Observation } from './model.js';
import { currentGeneratedSection, renderDifferences, replaceGeneratedSection } from './report.js';
import { SCENARIOS } from './scenarios.js';

/**
 * Cross-checks the sandbox against the FHIR R4 spec and against a FHIR implementation we did not write
 * (`@medplum/fhir-router`'s FhirRouter over MemoryRepository). Each scenario runs on a fresh sandbox over HTTP and on
 * a fresh medplum router in-process; the sandbox must meet every expectation, and every sandbox/medplum difference
 * must be declared in KNOWN_DIFFERENCES (and documented in docs/sandbox.md), which must in turn hold nothing stale.
 *
 * Environment switches:
 * - TETHER_CONFORMANCE_REPORT=<file>: also write every observation of both targets, with verdicts, as JSON.
 * - TETHER_UPDATE_DOCS=1: rewrite the generated section of docs/sandbox.md instead of comparing it.
 */

const DOCS_FILE = fileURLToPath(new URL('../../../../docs/sandbox.md', import.meta.url));

interface Recorded {
  readonly sandbox: Observation;
  readonly medplum: Observation;
  readonly fields: readonly FieldResult[];
}
const recorded = new Map<string, Recorded>();

describe('conformance: sandbox vs FHIR R4 vs @medplum/fhir-router', () => {
  for (const scenario of SCENARIOS) {
    it(scenario.title, async ({ annotate }) => {
      const sandboxTarget = await startSandboxTarget();
      const medplumTarget = createMedplumTarget();
      let sandbox: Observation;
      let medplum: Observation;
      try {
        [sandbox, medplum] = await Promise.all([scenario.run(sandboxTarget), scenario.run(medplumTarget)]);
      } finally {
        await Promise.all([sandboxTarget.close(), medplumTarget.close()]);
      }
      const judgement = judgeScenario(scenario, sandbox, medplum, KNOWN_DIFFERENCES);
      recorded.set(scenario.id, { sandbox, medplum, fields: judgement.fields });
      // The medplum record travels with the test result, so a reader sees what the third party did.
      await annotate(`medplum observations: ${JSON.stringify(medplum)}`, 'observation');
      expect(judgement.problems).toEqual([]);
    });
  }

  it('declares differences only for fields that exist', () => {
    expect(orphanDeclarations(SCENARIOS, KNOWN_DIFFERENCES)).toEqual([]);
  });

  it('a note says "Sandbox bug, pending" exactly when the verdict is sandbox-bug-pending (the docs quote it)', () => {
    const entries = Object.entries(KNOWN_DIFFERENCES);
    expect(entries.length).toBeGreaterThan(0);
    for (const [key, d] of entries) {
      expect(d.note.includes('Sandbox bug, pending'), key).toBe(d.verdict === 'sandbox-bug-pending');
    }
  });

  it('docs/sandbox.md carries the differences section generated from KNOWN_DIFFERENCES', () => {
    const generated = renderDifferences(SCENARIOS, KNOWN_DIFFERENCES);
    const docs = readFileSync(DOCS_FILE, 'utf8');
    if (process.env['TETHER_UPDATE_DOCS'] === '1') {
      const updated = replaceGeneratedSection(docs, generated);
      expect(updated, 'docs/sandbox.md lacks the generated-section markers').toBeDefined();
      if (updated !== undefined) writeFileSync(DOCS_FILE, updated);
      return;
    }
    expect(currentGeneratedSection(docs), 'run with TETHER_UPDATE_DOCS=1 to regenerate').toBe(generated);
    for (const key of Object.keys(KNOWN_DIFFERENCES)) expect(docs).toContain(`\`${key}\``);
  });

  afterAll(() => {
    const file = process.env['TETHER_CONFORMANCE_REPORT'];
    if (!file) return;
    const report = Object.fromEntries(
      [...recorded].map(([id, r]) => [
        id,
        { sandbox: r.sandbox, medplum: r.medplum, verdicts: Object.fromEntries(r.fields.flatMap((f) => (f.verdict ? [[f.key, f.verdict]] : []))) },
      ]),
    );
    writeFileSync(file, `${JSON.stringify(report, null, 2)}\n`);
  });
});

/**
 * The judge itself, on invented observations: each kind of problem the suite promises to catch must be reported,
 * or a green conformance run would prove nothing.
 */
describe('conformance judge', () => {
  const fake = defineScenario({
    id: 'fake',
    title: 'fake',
    fields: {
      status: specEquals(201, 'http.html#create', 'created'),
      deleted: specOneOf([200, 204], 'http.html#delete', 'either'),
      style: contract('x', 'docs/sandbox.md', 'sandbox choice'),
    },
    run: () => Promise.resolve({ status: 201, deleted: 204, style: 'x' }),
  });
  const good: Observation = { status: 201, deleted: 204, style: 'x' };
  const judge = (s: Observation, m: Observation, known: Readonly<Record<DifferenceKey, KnownDifference>> = {}): readonly string[] =>
    judgeScenario(fake, s, m, known).problems;

  it('accepts identical, conforming observations with nothing declared', () => {
    expect(judge(good, good)).toEqual([]);
  });

  it('computes the verdict from the expectation', () => {
    expect(verdictFor(fake.fields.status, 201, 200)).toBe('medplum-violates-spec');
    expect(verdictFor(fake.fields.deleted, 204, 200)).toBe('spec-allows-both');
    expect(verdictFor(fake.fields.style, 'x', 'y')).toBe('spec-silent');
    expect(verdictFor(fake.fields.status, 500, 201)).toBe('sandbox-bug-pending');
    expect(verdictFor(fake.fields.status, 500, 500)).toBe('sandbox-bug-pending');
    expect(verdictFor(fake.fields.status, 201, 201)).toBeUndefined();
  });

  it('fails on an undeclared difference and passes once it is declared', () => {
    const medplum = { ...good, status: 200 };
    expect(judge(good, medplum)).toEqual([expect.stringContaining('fake.status: undeclared difference (medplum-violates-spec)')]);
    const declared = { 'fake.status': { verdict: 'medplum-violates-spec', sandbox: 201, medplum: 200, note: 'n' } } as const;
    expect(judge(good, medplum, declared)).toEqual([]);
  });

  it('fails on a declared difference that no longer occurs', () => {
    const declared = { 'fake.deleted': { verdict: 'spec-allows-both', sandbox: 204, medplum: 200, note: 'n' } } as const;
    expect(judge(good, good, declared)).toEqual([expect.stringContaining('fake.deleted: declared in KNOWN_DIFFERENCES')]);
  });

  it('fails when the declared verdict or values are stale', () => {
    const medplum = { ...good, deleted: 200 };
    const wrongVerdict = { 'fake.deleted': { verdict: 'medplum-violates-spec', sandbox: 204, medplum: 200, note: 'n' } } as const;
    expect(judge(good, medplum, wrongVerdict)).toEqual([expect.stringContaining('declared as medplum-violates-spec')]);
    const wrongValue = { 'fake.deleted': { verdict: 'spec-allows-both', sandbox: 204, medplum: 202, note: 'n' } } as const;
    expect(judge(good, medplum, wrongValue)).toEqual([expect.stringContaining('declared sandbox 204 / medplum 202')]);
  });

  it('fails when the sandbox misses the spec, even where medplum agrees with it', () => {
    const bad = { ...good, status: 200 };
    expect(judge(bad, bad)).toEqual([expect.stringContaining('fake.status: undeclared difference (sandbox-bug-pending)')]);
    const pending = { 'fake.status': { verdict: 'sandbox-bug-pending', sandbox: 200, medplum: 200, note: 'Sandbox bug, pending.' } } as const;
    expect(judge(bad, bad, pending)).toEqual([]);
  });

  it('fails, undeclarably, when the sandbox breaks its own contract', () => {
    const bad = { ...good, style: 'y' };
    const declared = { 'fake.style': { verdict: 'spec-silent', sandbox: 'y', medplum: 'x', note: 'n' } } as const;
    expect(judge(bad, good, declared)).toEqual([expect.stringContaining('documented contract')]);
  });

  it('fails when an observation lacks or adds fields', () => {
    const { style: _dropped, ...missing } = good;
    expect(judge(missing, good)).toEqual([expect.stringContaining('the sandbox observation has fields')]);
    expect(judge(good, { ...good, extra: 1 })).toEqual([expect.stringContaining('the medplum observation has fields')]);
  });

  it('finds declarations for fields no scenario has', () => {
    const declared = { 'fake.nope': { verdict: 'spec-silent', sandbox: 1, medplum: 2, note: 'n' } } as const;
    expect(orphanDeclarations([fake], declared)).toEqual(['fake.nope']);
  });
});
