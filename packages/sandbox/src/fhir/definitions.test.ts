import { evalFhirPathTyped, toTypedValue } from '@medplum/core';
import { describe, expect, it } from 'vitest';
import { compileSimplePath, searchParamsFor } from './definitions.js';

const resources: Record<string, Record<string, unknown>[]> = {
  Observation: [
    {
      resourceType: 'Observation',
      id: 'o1',
      meta: { tag: [{ system: 's', code: 'c' }], lastUpdated: '2024-01-01T00:00:00Z' },
      status: 'final',
      identifier: [{ system: 'a', value: '1' }, { value: '2' }],
      code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] },
      subject: { reference: 'Patient/p1' },
      effectivePeriod: { start: '2024-01-01', end: '2024-01-02' },
    },
    { resourceType: 'Observation', id: 'o2', status: 'final', code: {}, subject: { reference: 'Group/g1' }, effectiveDateTime: '2024-02-02' },
  ],
  Condition: [{ resourceType: 'Condition', id: 'c1', subject: { reference: 'Patient/p2' }, code: { text: 'x' }, recordedDate: '2024-01-01' }],
  DocumentReference: [{ resourceType: 'DocumentReference', id: 'd1', status: 'current', subject: { reference: 'Patient/p3' }, date: '2024-01-01T10:00:00Z', content: [] }],
  Encounter: [{ resourceType: 'Encounter', id: 'e1', status: 'planned', class: { code: 'AMB' }, subject: { reference: 'Patient/p4' }, period: { start: '2024-01-01' } }],
};

describe('compiled search paths', () => {
  it('extract exactly what the FHIRPath engine extracts', () => {
    for (const [type, list] of Object.entries(resources)) {
      for (const [code, param] of searchParamsFor(type)) {
        const fast = compileSimplePath(param.expression, type);
        for (const r of list) {
          const slow = evalFhirPathTyped(param.expression, [toTypedValue(r)]).map((v) => v.value);
          const got = param.extract(r).map((v) => v.value);
          expect(got, `${type}.${code} (${fast ? 'compiled' : 'fhirpath'})`).toEqual(slow);
        }
      }
    }
  });

  it('compiles the common shapes and refuses the others', () => {
    expect(compileSimplePath('Observation.subject.where(resolve() is Patient)', 'Observation')).toBeDefined();
    expect(compileSimplePath('(Observation.effective as dateTime) | Observation.issued', 'Observation')).toBeDefined();
    expect(compileSimplePath('Observation.code.coding.where(system = "x")', 'Observation')).toBeUndefined();
    expect(compileSimplePath('Patient.name', 'Observation')).toBeUndefined();
  });
});
