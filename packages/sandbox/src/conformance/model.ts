import { isDeepStrictEqual } from 'node:util';
import type { FhirTarget } from './target.js';

/**
 * The data model of the conformance suite: what a scenario observes, what the FHIR R4 specification (or, where the
 * spec is silent, the sandbox's own documented contract) expects of each observed field, and how a recorded
 * difference between the sandbox and a third-party server is declared.
 */

/** A normalised observation value: JSON data only, never ids, timestamps or anything else that varies per run. */
export type ObservedValue = string | number | boolean | null | readonly ObservedValue[];

/** One scenario's observation record: field name → value. */
export type Observation<F extends string = string> = Readonly<Record<F, ObservedValue>>;

/** Base of the R4 specification; `ref`s below are relative to it (`http.html#delete`). */
export const FHIR_R4_BASE = 'https://hl7.org/fhir/R4/';

/**
 * What a field must be.
 * - `spec`: a requirement of FHIR R4 (SHALL, or a SHOULD the sandbox commits to). Both targets are judged by it.
 * - `contract`: the spec leaves this open; the value is the sandbox's documented behaviour (docs/sandbox.md), which
 *   Tether's clients rely on. Only the sandbox is judged by it; a third-party server differing here is not wrong.
 */
export type Expectation =
  | {
      readonly kind: 'spec';
      /** Spec section relative to {@link FHIR_R4_BASE}. */
      readonly ref: string;
      /** The requirement in words, for failure messages and docs. */
      readonly rule: string;
      /** Human-readable form of the accepted values. */
      readonly accepted: string;
      readonly accepts: (value: ObservedValue) => boolean;
    }
  | {
      readonly kind: 'contract';
      /** Where the contract is written down, and the spec section that leaves it open. */
      readonly ref: string;
      readonly rule: string;
      readonly value: ObservedValue;
    };

/** Spec expectation: exactly this value. */
export function specEquals(value: ObservedValue, ref: string, rule: string): Expectation {
  return { kind: 'spec', ref, rule, accepted: JSON.stringify(value), accepts: (v) => isDeepStrictEqual(v, value) };
}

/** Spec expectation: any of these values (the spec allows a choice, e.g. 200 or 204 for a delete). */
export function specOneOf(values: readonly ObservedValue[], ref: string, rule: string): Expectation {
  return {
    kind: 'spec',
    ref,
    rule,
    accepted: `one of ${values.map((v) => JSON.stringify(v)).join(', ')}`,
    accepts: (v) => values.some((x) => isDeepStrictEqual(v, x)),
  };
}

/** Spec expectation given by a predicate (e.g. "any 4xx or 5xx"). */
export function specWhere(accepted: string, accepts: (value: ObservedValue) => boolean, ref: string, rule: string): Expectation {
  return { kind: 'spec', ref, rule, accepted, accepts };
}

/** Sandbox contract where the spec is silent. */
export function contract(value: ObservedValue, ref: string, rule: string): Expectation {
  return { kind: 'contract', ref, rule, value };
}

export interface Scenario<F extends string = string> {
  /** Stable key used in KNOWN_DIFFERENCES (`crud`, `transaction`...). */
  readonly id: string;
  readonly title: string;
  /** Every field the scenario observes, with its expectation: a field without one cannot exist. */
  readonly fields: Readonly<Record<F, Expectation>>;
  /** Runs the scenario against a fresh target and returns exactly the fields above. */
  run(target: FhirTarget): Promise<Observation<F>>;
}

/** Typed constructor: `run` must return exactly the keys of `fields`. */
export function defineScenario<F extends string>(scenario: Scenario<F>): Scenario<F> {
  return scenario;
}

/**
 * How a declared difference relates to the spec; computed by the comparison from the two observations and the
 * field's expectation, and checked against the declaration.
 * - `medplum-violates-spec`: the sandbox meets the spec requirement, medplum does not.
 * - `spec-allows-both`: both meet the spec requirement, which permits either value.
 * - `spec-silent`: the field is a sandbox contract the spec does not prescribe; medplum chose otherwise.
 * - `sandbox-bug-pending`: the sandbox does not meet the spec requirement (medplum may or may not). The sandbox
 *   owner fixes it; until then the declaration keeps the suite green and the test fails once it is fixed.
 */
export type Verdict = 'medplum-violates-spec' | 'spec-allows-both' | 'spec-silent' | 'sandbox-bug-pending';

/** `scenario.field`. */
export type DifferenceKey = `${string}.${string}`;

export interface KnownDifference {
  readonly verdict: Verdict;
  /** The values observed; the test fails when either changes, so this list (and the docs made from it) stays true. */
  readonly sandbox: ObservedValue;
  readonly medplum: ObservedValue;
  /** What the spec requires and why the targets differ (rendered into docs/sandbox.md). */
  readonly note: string;
}
