/**
 * PHI canaries: plant unique patient names and identifiers in resources, search values, conditional headers and ids,
 * drive the client through successes and every kind of failure, and check that no event, log line or error (message,
 * details, cause) ever carries one of them.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { isTetherError } from '@tether/core';
import { eventRecorder, memoryLogger, startTestEhr } from './__fixtures__/sandbox.js';
import { createEhrClient, type EhrClient, type WriteResult } from './index.js';

const CANARY_NAME = 'Qzxcanaryfamily';
const CANARY_GIVEN = 'Wvbcanarygiven';
const CANARY_MRN = 'MRN-CANARY-77123';
const CANARY_SSN = '999-41-7788';
const CANARIES = [CANARY_NAME, CANARY_GIVEN, CANARY_MRN, CANARY_SSN, 'canary'];

const open: { close(): Promise<void> }[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((x) => x.close()));
});

/** Everything about an error that could end up in a log or an exception queue preview. */
function errorText(err: unknown): string {
  const parts: string[] = [];
  let current: unknown = err;
  for (let depth = 0; depth < 5 && current !== undefined && current !== null; depth++) {
    if (current instanceof Error) {
      parts.push(current.name, current.message, current.stack ?? '');
      if (isTetherError(current)) parts.push(JSON.stringify(current.details));
      current = current.cause;
    } else {
      parts.push(JSON.stringify(current));
      break;
    }
  }
  return parts.join('\n');
}

describe('PHI canaries', () => {
  it('no canary in any event, log line or error, through successes, retries, rejections and unknown outcomes', async () => {
    const ehr = await startTestEhr();
    open.push(ehr.sandbox);
    const rec = eventRecorder();
    const { logger, lines } = memoryLogger();
    // A clock that the injected sleep advances: backoff and Retry-After cost no real time.
    let now = Date.now();
    const client: EhrClient = createEhrClient({
      tokenProvider: ehr.tokens,
      onEvent: rec.sink,
      logger,
      maxAttempts: 2,
      breakerFailureThreshold: 100,
      clock: () => now,
      sleep: (ms) => {
        now += ms;
        return Promise.resolve();
      },
    });
    open.push(client);
    const target = { tenantId: 'clinic-1', baseUrl: ehr.sandbox.fhirBaseUrl };
    const patient = {
      resourceType: 'Patient',
      identifier: [
        { system: 'urn:mrn', value: CANARY_MRN },
        { system: 'http://hl7.org/fhir/sid/us-ssn', value: CANARY_SSN },
      ],
      name: [{ family: CANARY_NAME, given: [CANARY_GIVEN] }],
    };
    const errors: unknown[] = [];
    const writes: WriteResult[] = [];
    const attempt = async (fn: () => Promise<unknown>): Promise<void> => {
      try {
        const r = await fn();
        if (typeof r === 'object' && r !== null && 'outcome' in r) writes.push(r as WriteResult);
      } catch (err) {
        errors.push(err);
      }
    };

    // Successes: create (conditional on the MRN), search by the MRN (GET and POST), read, paginate.
    await attempt(() => client.create(target, 'system', patient, { ifNoneExist: { identifier: `urn:mrn|${CANARY_MRN}` } }));
    const id = writes[0]?.body?.['id'] as string;
    await attempt(() => client.search(target, 'system', 'Patient', { identifier: `urn:mrn|${CANARY_MRN}`, name: CANARY_NAME }));
    await attempt(() => client.search(target, 'system', 'Patient', { identifier: `urn:mrn|${CANARY_MRN}` }, { method: 'POST' }));
    await attempt(() => client.read(target, 'system', 'Patient', id));
    await attempt(async () => {
      for await (const page of client.searchPages(target, 'system', 'Patient', { identifier: CANARY_MRN, _count: 1 })) void page;
    });

    // Failures of every kind, each with canaries in the URL or the body.
    await ehr.setFaults({ faults: [{ id: 'u', kind: 'error-before', status: 503 }] });
    await attempt(() => client.search(target, 'system', 'Patient', { identifier: CANARY_MRN }));
    await ehr.setFaults({ faults: [{ id: 'r', kind: 'reset' }] });
    await attempt(() => client.search(target, 'system', 'Patient', { name: CANARY_NAME }));
    await attempt(() => client.create(target, 'system', patient));
    await ehr.setFaults({ faults: [{ id: 'rl', kind: 'rate-limit', retryAfterSeconds: 1 }] });
    await attempt(() => client.search(target, 'system', 'Patient', { identifier: CANARY_SSN }));
    await ehr.setFaults({ faults: [{ id: 'd', kind: 'commit-then-drop' }] });
    await attempt(() => client.create(target, 'system', patient));
    await ehr.setFaults({ faults: [{ id: 'ea', kind: 'error-after', status: 500 }] });
    await attempt(() => client.update(target, 'system', { ...patient, id }));
    await ehr.setFaults({ faults: [{ id: 's', kind: 'timeout', delayMs: 2000 }] });
    await attempt(() => client.search(target, 'system', 'Patient', { name: CANARY_GIVEN }, { deadlineMs: 300 }));
    await ehr.setFaults({ faults: [] });
    // The EHR rejects content that carries canaries (invalid gender code) and a stale version.
    await attempt(() => client.create(target, 'system', { ...patient, gender: CANARY_NAME }));
    await attempt(() => client.update(target, 'system', { ...patient, id }, { ifMatch: 'W/"99"' }));
    // Canaries in places a careless client might echo: the id of a read, a conditional create header.
    await attempt(() => client.read(target, 'system', 'Patient', CANARY_MRN));
    await attempt(() => client.create(target, 'system', patient, { ifNoneExist: `identifier=${CANARY_MRN}` }));
    // Caller bugs with canaries in the arguments.
    await attempt(() => client.read(target, 'system', 'Patient', `${CANARY_NAME} ${CANARY_GIVEN}`));
    await attempt(() => client.create(target, 'system', patient, { ifNoneExist: `name=${CANARY_NAME}\r\n` }));

    // The run exercised what it claims to (so a silent client cannot pass this test).
    const names = new Set(rec.names());
    for (const n of ['http:response', 'http:retry', 'http:rate-limited']) expect(names).toContain(n);
    expect(writes.map((w) => w.outcome)).toEqual(expect.arrayContaining(['applied', 'unknown', 'rejected']));
    expect(errors.length).toBeGreaterThanOrEqual(5);
    expect(lines.length).toBeGreaterThan(15);
    // The canaries really went to the EHR and came back (the data path is not censored, only the telemetry).
    expect(JSON.stringify(writes[0]?.body)).toContain(CANARY_NAME);

    const telemetry = [
      ...rec.events.map((e) => JSON.stringify(e)),
      ...lines,
      ...errors.map(errorText),
      ...writes.map((w) => errorText(w.error)),
      ...writes.map((w) => JSON.stringify({ ...w, body: undefined, error: undefined })),
    ].join('\n');
    for (const canary of CANARIES) expect(telemetry.toLowerCase()).not.toContain(canary.toLowerCase());
  });
});
