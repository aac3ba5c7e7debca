import { isDeepStrictEqual } from 'node:util';
import type { DifferenceKey, Expectation, KnownDifference, Observation, ObservedValue, Scenario, Verdict } from './model.js';

/**
 * The judgement of one scenario run: the sandbox against the spec (or its contract), medplum against the sandbox,
 * and both against the declared KNOWN_DIFFERENCES. Pure, so its own tests can feed it invented observations and
 * prove that each kind of problem is actually reported.
 */

export interface FieldResult {
  readonly key: DifferenceKey;
  readonly expectation: Expectation;
  readonly sandbox: ObservedValue | undefined;
  readonly medplum: ObservedValue | undefined;
  /** The verdict the observations call for; undefined when there is nothing to declare. */
  readonly verdict: Verdict | undefined;
}

export interface ScenarioJudgement {
  readonly fields: readonly FieldResult[];
  /** Human-readable problems; the suite fails unless this is empty. */
  readonly problems: readonly string[];
}

const show = (v: ObservedValue | undefined): string => (v === undefined ? '(missing)' : JSON.stringify(v));

/** The verdict two observations of one field call for, or undefined when they need no declaration. */
export function verdictFor(expectation: Expectation, sandbox: ObservedValue, medplum: ObservedValue): Verdict | undefined {
  const differ = !isDeepStrictEqual(sandbox, medplum);
  if (expectation.kind === 'contract') return differ ? 'spec-silent' : undefined;
  const sandboxOk = expectation.accepts(sandbox);
  if (!sandboxOk) return 'sandbox-bug-pending';
  if (!differ) return undefined;
  return expectation.accepts(medplum) ? 'spec-allows-both' : 'medplum-violates-spec';
}

export function judgeScenario(
  scenario: Scenario,
  sandbox: Observation,
  medplum: Observation,
  known: Readonly<Record<DifferenceKey, KnownDifference>>,
): ScenarioJudgement {
  const problems: string[] = [];
  const fields: FieldResult[] = [];
  const expected = Object.keys(scenario.fields).sort();
  for (const [who, obs] of [['sandbox', sandbox], ['medplum', medplum]] as const) {
    const got = Object.keys(obs).sort();
    if (!isDeepStrictEqual(got, expected)) {
      problems.push(`${scenario.id}: the ${who} observation has fields [${got.join(', ')}], the scenario declares [${expected.join(', ')}]`);
    }
  }

  for (const [field, expectation] of Object.entries(scenario.fields)) {
    const key: DifferenceKey = `${scenario.id}.${field}`;
    const s = sandbox[field];
    const m = medplum[field];
    if (s === undefined || m === undefined) continue; // reported above
    const verdict = verdictFor(expectation, s, m);
    fields.push({ key, expectation, sandbox: s, medplum: m, verdict });

    if (expectation.kind === 'contract' && !isDeepStrictEqual(s, expectation.value)) {
      // Not declarable: the sandbox broke behaviour its own docs promise. Fix the sandbox or the contract.
      problems.push(`${key}: sandbox observed ${show(s)} but its documented contract is ${show(expectation.value)} (${expectation.rule})`);
      continue;
    }

    const declared = known[key];
    if (verdict === undefined) {
      if (declared) {
        problems.push(
          `${key}: declared in KNOWN_DIFFERENCES (${declared.verdict}) but no longer occurs: sandbox ${show(s)}, medplum ${show(m)}. Remove the entry (and its docs row).`,
        );
      }
      continue;
    }
    if (!declared) {
      const what =
        verdict === 'sandbox-bug-pending'
          ? `sandbox ${show(s)} violates the spec (${expectation.ref}: ${expectation.rule}; accepted: ${expectation.kind === 'spec' ? expectation.accepted : ''})`
          : `sandbox ${show(s)} differs from medplum ${show(m)}`;
      problems.push(`${key}: undeclared difference (${verdict}): ${what}. Add it to KNOWN_DIFFERENCES and docs/sandbox.md.`);
      continue;
    }
    if (declared.verdict !== verdict) {
      problems.push(`${key}: declared as ${declared.verdict} but the observations make it ${verdict} (sandbox ${show(s)}, medplum ${show(m)})`);
    }
    if (!isDeepStrictEqual(declared.sandbox, s) || !isDeepStrictEqual(declared.medplum, m)) {
      problems.push(
        `${key}: declared sandbox ${show(declared.sandbox)} / medplum ${show(declared.medplum)}, observed sandbox ${show(s)} / medplum ${show(m)}`,
      );
    }
  }
  return { fields, problems };
}

/** Declared keys that name no field of any scenario (typos, or scenarios that were renamed or removed). */
export function orphanDeclarations(scenarios: readonly Scenario[], known: Readonly<Record<DifferenceKey, KnownDifference>>): DifferenceKey[] {
  const valid = new Set<string>(scenarios.flatMap((s) => Object.keys(s.fields).map((f) => `${s.id}.${f}`)));
  return (Object.keys(known) as DifferenceKey[]).filter((k) => !valid.has(k));
}
