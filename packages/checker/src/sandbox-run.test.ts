import type * as SandboxModule from '@tether/sandbox';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { canonicalContentHash } from './canonical.js';
import { check, isViolation } from './check.js';
import { parseNdjson } from './ndjson.js';
import type { Claim, LedgerEntry, Resource } from './types.js';
import { toResource, toWriteLogEntry } from './validate.js';

/*
 * A real run against the sandbox EHR, over HTTP with the global fetch. The test plays a deliberately broken client
 * (it retries without reconciling, loses an update, applies an old write last...) and records its intents and
 * claims the way a load generator and an engine would; the checker must find exactly the damage that was done.
 *
 * The sandbox is a test fixture only (a type-only import, erased, plus a dynamic import at run time): the checker's
 * runtime code imports nothing of Tether's (see independence.test.ts).
 */

type Sandbox = Awaited<ReturnType<typeof SandboxModule.startSandbox>>;

const SYSTEM = 'urn:tether:checker-run';
const CANARY = 'Wobblesworth Canaryfield';

let sb: Sandbox;
const sandboxLog: string[] = [];
beforeAll(async () => {
  const { startSandbox } = await import('@tether/sandbox');
  sb = await startSandbox({ auth: false, seed: 5, log: (line) => sandboxLog.push(JSON.stringify(line)) });
});
afterAll(async () => {
  await sb.close();
});

function observation(key: string, heartRate: number, extra: Record<string, unknown> = {}): Record<string, unknown> & { resourceType: string } {
  return {
    resourceType: 'Observation',
    status: 'final',
    identifier: [{ system: SYSTEM, value: key }],
    code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] },
    subject: { reference: 'Patient/p1' },
    effectiveDateTime: '2026-11-01T10:00:00Z',
    valueQuantity: { value: heartRate, unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' },
    note: [{ text: `seen by ${CANARY}` }],
    ...extra,
  };
}

async function send(method: 'POST' | 'PUT' | 'DELETE', path: string, body?: unknown): Promise<{ status: number; id?: string }> {
  const res = await fetch(`${sb.fhirBaseUrl}/${path}`, {
    method,
    headers: { 'content-type': 'application/fhir+json', accept: 'application/fhir+json' },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await res.text();
  const parsed = text ? (JSON.parse(text) as { id?: string }) : {};
  return { status: res.status, ...(parsed.id ? { id: parsed.id } : {}) };
}

async function setFaults(profile: unknown): Promise<void> {
  const res = await fetch(`${sb.url}/_admin/faults`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(profile) });
  expect(res.status).toBe(200);
}

async function searchAll(query: string): Promise<Resource[]> {
  const out: Resource[] = [];
  let next: string | undefined = `${sb.fhirBaseUrl}/${query}`;
  while (next) {
    const bundle = (await (await fetch(next, { headers: { accept: 'application/fhir+json' } })).json()) as {
      entry?: { resource: unknown }[];
      link?: { relation: string; url: string }[];
    };
    out.push(...(bundle.entry ?? []).map((e, i) => toResource(e.resource, `${query}#${i}`)));
    next = bundle.link?.find((l) => l.relation === 'next')?.url;
  }
  return out;
}

describe('a run against the sandbox EHR', () => {
  it('detects exactly the duplicates, loss, stale and corrupt writes the client made', async () => {
    const ledger: LedgerEntry[] = [];
    const claims: Claim[] = [];
    /** The generator records the intent BEFORE sending, as it must. */
    const intend = (commandId: string, key: string, content: Record<string, unknown> & { resourceType: string }, seq = 1): void => {
      ledger.push({
        commandId,
        businessKey: `${SYSTEM}|${key}`,
        resourceType: content.resourceType,
        action: seq === 1 ? 'create' : 'update',
        expect: 'accept',
        contentHash: canonicalContentHash(content),
        seq,
        canaries: [CANARY],
      });
    };
    const claim = (commandId: string, state: string, reason?: string): void => {
      claims.push({ commandId, state, ...(reason ? { reason } : {}) });
    };
    const created = async (content: Record<string, unknown>): Promise<string> => {
      const res = await send('POST', 'Observation', content);
      expect(res.status).toBe(201);
      return res.id as string;
    };

    // Three clean creates and a clean create + update.
    for (const key of ['ok-1', 'ok-2', 'ok-3']) {
      intend(key, key, observation(key, 70));
      await created(observation(key, 70));
      claim(key, 'verified');
    }
    intend('upd-1', 'upd', observation('upd', 70));
    const upd = await created(observation('upd', 70));
    claim('upd-1', 'verified');
    intend('upd-2', 'upd', observation('upd', 75), 2);
    expect((await send('PUT', `Observation/${upd}`, { ...observation('upd', 75), id: upd })).status).toBe(200);
    claim('upd-2', 'verified');

    // A blind retry: two live copies.
    intend('dup', 'dup', observation('dup', 80));
    await created(observation('dup', 80));
    await created(observation('dup', 80));
    claim('dup', 'verified');

    // A blind retry whose extra copy was later deleted: one live copy, two creates in the write log.
    intend('dupdel', 'dupdel', observation('dupdel', 81));
    await created(observation('dupdel', 81));
    const extra = await created(observation('dupdel', 81));
    expect((await send('DELETE', `Observation/${extra}`)).status).toBeLessThan(300);
    claim('dupdel', 'verified');

    // Acknowledged but never sent.
    intend('lost', 'lost', observation('lost', 90));
    claim('lost', 'verified');

    // Committed, then the connection dropped: the client cannot know; the engine says `unknown`.
    intend('drop', 'drop', observation('drop', 91));
    await setFaults({ faults: [{ id: 'drop', kind: 'commit-then-drop' }] });
    await expect(send('POST', 'Observation', observation('drop', 91))).rejects.toThrow();
    await setFaults({ faults: [] });
    claim('drop', 'unknown');

    // An old write applied last.
    intend('stale-1', 'stale', observation('stale', 60));
    intend('stale-2', 'stale', observation('stale', 65), 2);
    const stale = await created(observation('stale', 60));
    expect((await send('PUT', `Observation/${stale}`, { ...observation('stale', 65), id: stale })).status).toBe(200);
    expect((await send('PUT', `Observation/${stale}`, { ...observation('stale', 60), id: stale })).status).toBe(200);
    claim('stale-1', 'verified');
    claim('stale-2', 'verified');

    // The mapping lost an element on the way.
    intend('corrupt', 'corrupt', observation('corrupt', 50));
    await created(observation('corrupt', 50, { note: undefined }));
    claim('corrupt', 'verified');

    // The EHR refuses the payload; the engine quarantines it with the EHR's reason.
    intend('refused', 'refused', observation('refused', 40, { valueQuantity: 'seventy' }));
    const refused = await send('POST', 'Observation', observation('refused', 40, { valueQuantity: 'seventy' }));
    expect(refused.status).toBeGreaterThanOrEqual(400);
    claim('refused', 'rejected', `EHR answered ${refused.status}`);

    // Something nobody intended.
    await created(observation('nobody', 99));

    // Collect the evidence the way a harness would: write log, final read (by business key and by type), stats.
    const writeLog = parseNdjson(await (await fetch(`${sb.url}/_admin/write-log`)).text(), 'write-log', toWriteLogEntry);
    const byKey = (await Promise.all([...new Set(ledger.map((e) => e.businessKey))].map((k) => searchAll(`Observation?identifier=${encodeURIComponent(k)}`)))).flat();
    const finalRead = [...byKey, ...(await searchAll('Observation?_count=100'))];
    const faults = (await (await fetch(`${sb.url}/_admin/faults/stats`)).json()) as { seed: number; byFault: Record<string, { count: number }> };
    const leakyLog = { name: 'leaky.log', text: `{"msg":"mapping failed","note":"seen by ${CANARY}"}\n` };

    const report = check({
      ledger,
      claims,
      writeLog,
      finalRead,
      faults,
      logs: [{ name: 'sandbox.log', text: sandboxLog.join('\n') }, leakyLog],
      businessKeySystem: SYSTEM,
    });

    expect(report).toMatchObject({
      seed: 5,
      commands: 13,
      acknowledged: 11,
      ambiguous: 1,
      recovered: 1,
      lost: 1,
      duplicated: 2,
      unexpected: 1,
      corrupt: 1,
      stale: 1,
      dropped: 0,
      quarantined: 1,
      canaryHits: 1,
    });
    expect(faults.byFault['drop']?.count).toBe(1);
    expect(report.faults).toEqual(faults);
    const keys = (cls: keyof typeof report.details): string[] =>
      (report.details[cls] as readonly { businessKey?: string }[]).map((x) => x.businessKey?.split('|')[1] ?? '');
    expect({
      lost: keys('lost'),
      duplicated: keys('duplicated'),
      unexpected: keys('unexpected'),
      corrupt: keys('corrupt'),
      stale: keys('stale'),
    }).toEqual({ lost: ['lost'], duplicated: ['dup', 'dupdel'], unexpected: ['nobody'], corrupt: ['corrupt'], stale: ['stale'] });
    expect(report.details.canaryHits).toEqual([{ file: 'leaky.log', canaries: 1, occurrences: 1 }]);
    expect(report.details.warnings).toEqual([]);
    expect(JSON.stringify(report)).not.toContain(CANARY);
    expect(isViolation(report)).toBe(true);
  });
});
