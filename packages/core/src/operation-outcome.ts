import { ERROR_CATALOGUE, type ErrorCode, isTetherError } from './errors.js';

/** A minimal FHIR R4 OperationOutcome, as Tether emits it on every HTTP error. */
export interface OperationOutcomeJson {
  resourceType: 'OperationOutcome';
  issue: Array<{
    severity: 'fatal' | 'error' | 'warning' | 'information';
    code: string;
    details?: { coding?: Array<{ system: string; code: string }>; text?: string };
    diagnostics?: string;
    expression?: string[];
  }>;
}

/** The coding system of Tether error codes inside `OperationOutcome.issue.details`. */
export const TETHER_ERROR_SYSTEM = 'https://tether.dev/fhir/CodeSystem/error-code';

/**
 * Builds an OperationOutcome for a catalogue code. `diagnostics` must not contain PHI: name the field, not the
 * value.
 */
export function operationOutcome(
  code: ErrorCode,
  diagnostics?: string,
  expression?: string[],
): OperationOutcomeJson {
  const entry = ERROR_CATALOGUE[code];
  return {
    resourceType: 'OperationOutcome',
    issue: [
      {
        severity: 'error',
        code: entry.issueCode,
        details: { coding: [{ system: TETHER_ERROR_SYSTEM, code }], text: entry.summary },
        ...(diagnostics ? { diagnostics } : {}),
        ...(expression && expression.length > 0 ? { expression } : {}),
      },
    ],
  };
}

/** OperationOutcome for any thrown value: Tether errors keep their code, anything else becomes INTERNAL. */
export function operationOutcomeFromError(err: unknown): { status: number; body: OperationOutcomeJson } {
  if (isTetherError(err)) {
    return { status: err.httpStatus, body: operationOutcome(err.code, err.message) };
  }
  return { status: 500, body: operationOutcome('INTERNAL') };
}

/** Reads the Tether error code out of an OperationOutcome, if it carries one. */
export function errorCodeOf(outcome: unknown): string | undefined {
  const issues = (outcome as OperationOutcomeJson | undefined)?.issue;
  if (!Array.isArray(issues)) return undefined;
  for (const issue of issues) {
    const coding = issue.details?.coding?.find((c) => c.system === TETHER_ERROR_SYSTEM);
    if (coding) return coding.code;
  }
  return undefined;
}
