import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ERROR_CATALOGUE, ERROR_CODES, TetherError, isTetherError } from './errors.js';
import { errorCodeOf, operationOutcome, operationOutcomeFromError } from './operation-outcome.js';

const docPath = fileURLToPath(new URL('../../../docs/errors.md', import.meta.url));

/** Codes documented in docs/errors.md: the first cell of each table row, in backticks. */
function documentedCodes(): string[] {
  const text = readFileSync(docPath, 'utf8');
  return [...text.matchAll(/^\|\s*`([A-Z][A-Z0-9_]+)`\s*\|/gm)].map((m) => m[1] as string);
}

describe('error catalogue', () => {
  it('documents every code in docs/errors.md, and nothing else', () => {
    const documented = documentedCodes();
    expect(new Set(documented).size).toBe(documented.length);
    expect([...documented].sort()).toEqual([...ERROR_CODES].sort());
  });

  it('documents the same category, retry class and HTTP status as the code', () => {
    const text = readFileSync(docPath, 'utf8');
    for (const code of ERROR_CODES) {
      const row = text.split('\n').find((l) => l.startsWith(`| \`${code}\` |`));
      const cells = row?.split('|').map((c) => c.trim()) ?? [];
      const entry = ERROR_CATALOGUE[code];
      expect(cells.slice(2, 5), code).toEqual([entry.category, entry.retryClass, String(entry.httpStatus)]);
    }
  });
});

describe('TetherError', () => {
  it('carries the catalogue facts and is recognised across copies by its brand', () => {
    const err = new TetherError('FHIR_VERSION_CONFLICT', undefined, { details: { current: '3' } });
    expect(err.code).toBe('FHIR_VERSION_CONFLICT');
    expect(err.httpStatus).toBe(412);
    expect(err.category).toBe('precondition-failed');
    expect(err.message).toBe(ERROR_CATALOGUE.FHIR_VERSION_CONFLICT.summary);
    expect(isTetherError(err)).toBe(true);
    const lookalike = Object.assign(new Error('x'), { [Symbol.for('tether.error')]: true });
    expect(lookalike instanceof TetherError).toBe(true);
    expect(isTetherError(new Error('plain'))).toBe(false);
    expect(Object.isFrozen(err.details)).toBe(true);
  });

  it('becomes an OperationOutcome that carries its code', () => {
    const { status, body } = operationOutcomeFromError(new TetherError('FHIR_ID_MISMATCH', 'Body id differs from URL id.'));
    expect(status).toBe(400);
    expect(body.issue[0]?.diagnostics).toBe('Body id differs from URL id.');
    expect(errorCodeOf(body)).toBe('FHIR_ID_MISMATCH');
    expect(operationOutcomeFromError(new Error('secret detail')).body.issue[0]?.diagnostics).toBeUndefined();
    expect(errorCodeOf(operationOutcome('INTERNAL'))).toBe('INTERNAL');
    expect(errorCodeOf({})).toBeUndefined();
  });
});
