import { FHIR_R4_BASE, type DifferenceKey, type Expectation, type KnownDifference, type Scenario, type Verdict } from './model.js';

/**
 * Renders KNOWN_DIFFERENCES as the "Differences from a third-party FHIR server" section body of docs/sandbox.md.
 * The conformance test compares the docs with this output, so the docs cannot drift from the checked list.
 */

/** Markers around the generated part of docs/sandbox.md. */
export const DOCS_BEGIN = '<!-- conformance-differences:begin (generated from packages/sandbox/src/conformance/known-differences.ts) -->';
export const DOCS_END = '<!-- conformance-differences:end -->';

const GROUPS: readonly { readonly verdict: Verdict; readonly heading: string; readonly intro: string }[] = [
  {
    verdict: 'sandbox-bug-pending',
    heading: 'Sandbox bugs, pending fix',
    intro: 'The sandbox misses a FHIR R4 requirement. Reported to the sandbox owner; do not rely on the current behaviour.',
  },
  {
    verdict: 'medplum-violates-spec',
    heading: 'Where medplum departs from the spec',
    intro: 'The sandbox follows the spec and medplum (router + MemoryRepository) does not. Do not copy these behaviours into the sandbox.',
  },
  {
    verdict: 'spec-allows-both',
    heading: 'Where the spec allows either answer',
    intro: 'Both answers are conformant; a client must accept both.',
  },
  {
    verdict: 'spec-silent',
    heading: 'Where the spec is silent: sandbox contract',
    intro: 'The spec does not prescribe the behaviour; the sandbox documents its own choice and tests hold it to it.',
  },
];

function code(value: unknown): string {
  return `\`${JSON.stringify(value)}\``;
}

function link(ref: string): string {
  // Contract refs point into this document or mix in prose; only bare spec refs become links.
  return /^[a-z-]+\.html(#[\w.-]+)?$/.test(ref) ? `[${ref}](${FHIR_R4_BASE}${ref})` : ref;
}

function expectationText(e: Expectation): string {
  if (e.kind === 'spec') return `Spec (${link(e.ref)}): ${e.rule} Accepted: ${e.accepted}.`;
  return `Sandbox contract (${e.ref}): ${e.rule} Contract value: ${code(e.value)}.`;
}

export function renderDifferences(scenarios: readonly Scenario[], known: Readonly<Record<DifferenceKey, KnownDifference>>): string {
  const expectations = new Map<string, Expectation>();
  for (const s of scenarios) for (const [field, e] of Object.entries(s.fields)) expectations.set(`${s.id}.${field}`, e);
  const entries = Object.entries(known) as [DifferenceKey, KnownDifference][];
  const lines: string[] = [];
  for (const group of GROUPS) {
    const members = entries.filter(([, d]) => d.verdict === group.verdict);
    if (members.length === 0) continue;
    lines.push(`### ${group.heading} (${members.length})`, '', group.intro, '');
    for (const [key, d] of members) {
      const e = expectations.get(key);
      lines.push(
        `- **\`${key}\`**: sandbox ${code(d.sandbox)}, medplum ${code(d.medplum)}.`,
        `  - ${e ? expectationText(e) : '(no such scenario field)'}`,
        `  - Why: ${d.note}`,
      );
    }
    lines.push('');
  }
  return lines.join('\n').trimEnd();
}

/** Replaces (or, when `text` has no markers, reports) the generated section of a docs file. */
export function replaceGeneratedSection(text: string, generated: string): string | undefined {
  const begin = text.indexOf(DOCS_BEGIN);
  const end = text.indexOf(DOCS_END);
  if (begin < 0 || end < begin) return undefined;
  return `${text.slice(0, begin + DOCS_BEGIN.length)}\n${generated}\n${text.slice(end)}`;
}

/** The generated section currently in a docs file, or undefined when the markers are missing. */
export function currentGeneratedSection(text: string): string | undefined {
  const begin = text.indexOf(DOCS_BEGIN);
  const end = text.indexOf(DOCS_END);
  if (begin < 0 || end < begin) return undefined;
  return text.slice(begin + DOCS_BEGIN.length, end).trim();
}
