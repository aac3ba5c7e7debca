import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resourceContentHash } from '@tether/core';
import { startSandbox, type Sandbox } from '../server.js';
import { codeOf, http, observation, writeLog } from '../test-helpers.js';

let sb: Sandbox;
let base: string;

beforeAll(async () => {
  sb = await startSandbox({ auth: false });
  base = sb.fhirBaseUrl;
});
afterAll(async () => {
  await sb.close();
});

describe('CRUD and versioning', () => {
  it('create answers 201 with Location, ETag and server-set id/meta', async () => {
    const res = await http(`${base}/Observation`, { body: observation('p1', 'crud-1') });
    expect(res.status).toBe(201);
    const id = res.body.id as string;
    expect(id).toMatch(/^[0-9a-f-]{36}$/);
    expect(res.headers.get('location')).toBe(`${base}/Observation/${id}/_history/1`);
    expect(res.headers.get('etag')).toBe('W/"1"');
    expect(res.body.meta.versionId).toBe('1');
    expect(Date.parse(res.body.meta.lastUpdated)).toBeGreaterThan(0);
    expect(res.headers.get('content-type')).toMatch(/application\/fhir\+json/);
  });

  it('ignores a client-supplied id on create', async () => {
    const res = await http(`${base}/Observation`, { body: { ...observation('p1', 'crud-id'), id: 'mine' } });
    expect(res.status).toBe(201);
    expect(res.body.id).not.toBe('mine');
  });

  it('read, vread, update with If-Match, stale If-Match, delete, history', async () => {
    const created = await http(`${base}/Observation`, { body: observation('p1', 'crud-2') });
    const id = created.body.id as string;
    const read = await http(`${base}/Observation/${id}`);
    expect(read.status).toBe(200);
    expect(read.body.identifier[0].value).toBe('crud-2');

    const updated = await http(`${base}/Observation/${id}`, {
      method: 'PUT',
      body: { ...read.body, status: 'amended' },
      headers: { 'if-match': 'W/"1"' },
    });
    expect(updated.status).toBe(200);
    expect(updated.headers.get('etag')).toBe('W/"2"');
    expect(updated.body.status).toBe('amended');

    const stale = await http(`${base}/Observation/${id}`, {
      method: 'PUT',
      body: { ...read.body, status: 'cancelled' },
      headers: { 'if-match': 'W/"1"' },
    });
    expect(stale.status).toBe(412);
    expect(codeOf(stale)).toBe('FHIR_VERSION_CONFLICT');

    const v1 = await http(`${base}/Observation/${id}/_history/1`);
    expect(v1.status).toBe(200);
    expect(v1.body.status).toBe('final');
    expect((await http(`${base}/Observation/${id}/_history/9`)).status).toBe(404);

    const del = await http(`${base}/Observation/${id}`, { method: 'DELETE' });
    expect(del.status).toBe(204);
    const gone = await http(`${base}/Observation/${id}`);
    expect(gone.status).toBe(410);
    expect(codeOf(gone)).toBe('FHIR_GONE');
    expect((await http(`${base}/Observation/${id}`, { method: 'DELETE' })).status).toBe(204);

    const hist = await http(`${base}/Observation/${id}/_history`);
    expect(hist.body.type).toBe('history');
    expect(hist.body.total).toBe(3);
    expect(hist.body.entry.map((e: { response: { etag: string } }) => e.response.etag)).toEqual(['W/"3"', 'W/"2"', 'W/"1"']);
    expect(hist.body.entry[0].request.method).toBe('DELETE');
    expect(hist.body.entry[0].resource).toBeUndefined();
  });

  it('type history is newest first and stable', async () => {
    const a = await http(`${base}/Encounter`, { body: { resourceType: 'Encounter', status: 'planned', class: { code: 'AMB' } } });
    const b = await http(`${base}/Encounter`, { body: { resourceType: 'Encounter', status: 'planned', class: { code: 'AMB' } } });
    const h1 = await http(`${base}/Encounter/_history`);
    const h2 = await http(`${base}/Encounter/_history`);
    const ids = h1.body.entry.map((e: { resource: { id: string } }) => e.resource.id);
    expect(ids.slice(0, 2)).toEqual([b.body.id, a.body.id]);
    expect(h2.body.entry.map((e: { resource: { id: string } }) => e.resource.id)).toEqual(ids);
  });

  it('update of an unknown id creates it (update-as-create)', async () => {
    const res = await http(`${base}/Observation/client-chosen-1`, {
      method: 'PUT',
      body: { ...observation('p1', 'crud-3'), id: 'client-chosen-1' },
    });
    expect(res.status).toBe(201);
    expect(res.body.meta.versionId).toBe('1');
  });

  it('Prefer: return=minimal gives no body; return=OperationOutcome gives an outcome', async () => {
    const min = await http(`${base}/Observation`, { body: observation('p1', 'pref-1'), headers: { prefer: 'return=minimal' } });
    expect(min.status).toBe(201);
    expect(min.text).toBe('');
    expect(min.headers.get('location')).toContain('/Observation/');
    const oo = await http(`${base}/Observation`, { body: observation('p1', 'pref-2'), headers: { prefer: 'return=OperationOutcome' } });
    expect(oo.body.resourceType).toBe('OperationOutcome');
  });
});

describe('conditional create', () => {
  it('creates when nothing matches, returns the match without writing, refuses several matches', async () => {
    const cond = { 'if-none-exist': 'identifier=urn:tether:test|cc-1' };
    const first = await http(`${base}/Observation`, { body: observation('p2', 'cc-1'), headers: cond });
    expect(first.status).toBe(201);
    const before = (await writeLog(sb.url)).length;
    const second = await http(`${base}/Observation`, { body: observation('p2', 'cc-1'), headers: cond });
    expect(second.status).toBe(200);
    expect(second.body.id).toBe(first.body.id);
    expect((await writeLog(sb.url)).length).toBe(before);

    await http(`${base}/Observation`, { body: observation('p2', 'cc-dup') });
    await http(`${base}/Observation`, { body: observation('p2', 'cc-dup') });
    const multi = await http(`${base}/Observation`, {
      body: observation('p2', 'cc-dup'),
      headers: { 'if-none-exist': 'identifier=urn:tether:test|cc-dup' },
    });
    expect(multi.status).toBe(412);
    expect(codeOf(multi)).toBe('FHIR_MULTIPLE_MATCHES');
  });

  it('50 concurrent identical conditional creates leave exactly one resource', async () => {
    const cond = { 'if-none-exist': 'identifier=urn:tether:test|race-1' };
    const results = await Promise.all(
      Array.from({ length: 50 }, () => http(`${base}/Observation`, { body: observation('p3', 'race-1'), headers: cond })),
    );
    expect(results.filter((r) => r.status === 201)).toHaveLength(1);
    expect(results.filter((r) => r.status === 200)).toHaveLength(49);
    expect(new Set(results.map((r) => r.body.id)).size).toBe(1);
    const search = await http(`${base}/Observation?identifier=urn:tether:test|race-1`);
    expect(search.body.total).toBe(1);
  });

  it('rejects an If-None-Exist with no known parameter', async () => {
    const res = await http(`${base}/Observation`, { body: observation('p2', 'cc-2'), headers: { 'if-none-exist': 'foo=bar' } });
    expect(res.status).toBe(400);
    expect(codeOf(res)).toBe('FHIR_UNKNOWN_SEARCH_PARAMETER');
  });
});

describe('search', () => {
  const tag = { system: 'urn:tether:batch', code: 'search-suite' };
  let ids: string[] = [];

  beforeAll(async () => {
    ids = [];
    for (let i = 0; i < 7; i++) {
      const res = await http(`${base}/Observation`, {
        body: observation(i < 4 ? 'ps1' : 'ps2', `s-${i}`, {
          meta: { tag: [tag] },
          status: i % 2 === 0 ? 'final' : 'preliminary',
          effectiveDateTime: `2024-01-0${i + 1}T12:00:00Z`,
          code: { coding: [{ system: 'http://loinc.org', code: i < 3 ? '8867-4' : '8310-5' }] },
        }),
      });
      ids.push(res.body.id as string);
    }
  });

  const search = (q: string) => http(`${base}/Observation?${q}`);
  const idsOf = (res: Awaited<ReturnType<typeof search>>) => (res.body.entry ?? []).map((e: { resource: { id: string } }) => e.resource.id);

  it('by identifier, with and without system', async () => {
    expect(idsOf(await search('identifier=urn:tether:test|s-3'))).toEqual([ids[3]]);
    expect(idsOf(await search('identifier=s-3'))).toEqual([ids[3]]);
    expect(idsOf(await search('identifier=urn:other|s-3'))).toEqual([]);
    expect(idsOf(await search('identifier=urn:tether:test|s-3,urn:tether:test|s-5'))).toEqual([ids[3], ids[5]]);
  });

  it('by _id, patient, subject, _tag, code, status, date and _lastUpdated', async () => {
    expect(idsOf(await search(`_id=${ids[2]}`))).toEqual([ids[2]]);
    expect((await search('patient=ps2&_tag=urn:tether:batch|search-suite')).body.total).toBe(3);
    expect((await search('patient=Patient/ps1&_tag=urn:tether:batch|search-suite')).body.total).toBe(4);
    expect((await search('subject=Patient/ps1&_tag=urn:tether:batch|search-suite')).body.total).toBe(4);
    expect((await search('_tag=urn:tether:batch|search-suite')).body.total).toBe(7);
    expect((await search('_tag=urn:tether:batch|search-suite&code=http://loinc.org|8310-5')).body.total).toBe(4);
    expect((await search('_tag=urn:tether:batch|search-suite&status=final')).body.total).toBe(4);
    expect((await search('_tag=urn:tether:batch|search-suite&status:not=final')).body.total).toBe(3);
    expect(idsOf(await search('_tag=urn:tether:batch|search-suite&date=2024-01-03'))).toEqual([ids[2]]);
    expect((await search('_tag=urn:tether:batch|search-suite&date=ge2024-01-05')).body.total).toBe(3);
    expect((await search('_tag=urn:tether:batch|search-suite&date=lt2024-01-03')).body.total).toBe(2);
    expect((await search('_tag=urn:tether:batch|search-suite&date=ge2024-01-02&date=le2024-01-04')).body.total).toBe(3);
    expect((await search('_tag=urn:tether:batch|search-suite&_lastUpdated=gt2000-01-01')).body.total).toBe(7);
    expect((await search('_tag=urn:tether:batch|search-suite&_lastUpdated=lt2000-01-01')).body.total).toBe(0);
  });

  it('pages with _count and next links that cover every match exactly once', async () => {
    const seen: string[] = [];
    let url: string | undefined = `${base}/Observation?_tag=urn:tether:batch|search-suite&_count=3`;
    let pages = 0;
    while (url && pages < 10) {
      const res = await http(url);
      expect(res.body.total).toBe(7);
      seen.push(...idsOf(res));
      url = res.body.link.find((l: { relation: string }) => l.relation === 'next')?.url;
      pages++;
    }
    expect(pages).toBe(3);
    expect(seen).toEqual(ids);
    const count = await search('_tag=urn:tether:batch|search-suite&_summary=count');
    expect(count.body.total).toBe(7);
    expect(count.body.entry).toBeUndefined();
  });

  it('ignores unknown parameters leniently but rejects bad values', async () => {
    expect((await search('_tag=urn:tether:batch|search-suite&nonsense=1')).body.total).toBe(7);
    const bad = await search('date=yesterday');
    expect(bad.status).toBe(400);
    expect(codeOf(bad)).toBe('FHIR_INVALID_SEARCH');
    expect((await search('_count=-1')).status).toBe(400);
  });
});

describe('batch and transaction', () => {
  it('a transaction resolves urn:uuid references and applies every entry', async () => {
    const res = await http(base, {
      body: {
        resourceType: 'Bundle',
        type: 'transaction',
        entry: [
          {
            fullUrl: 'urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a',
            resource: { resourceType: 'Patient', identifier: [{ system: 'urn:mrn', value: 'tx-1' }] },
            request: { method: 'POST', url: 'Patient' },
          },
          {
            resource: { ...observation('x', 'tx-obs'), subject: { reference: 'urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a' } },
            request: { method: 'POST', url: 'Observation' },
          },
        ],
      },
    });
    expect(res.status).toBe(200);
    expect(res.body.type).toBe('transaction-response');
    expect(res.body.entry.map((e: { response: { status: string } }) => e.response.status)).toEqual(['201', '201']);
    const patientId = res.body.entry[0].resource.id as string;
    expect(res.body.entry[1].resource.subject.reference).toBe(`Patient/${patientId}`);
  });

  it('a failing transaction applies nothing', async () => {
    const before = (await writeLog(sb.url)).length;
    const res = await http(base, {
      body: {
        resourceType: 'Bundle',
        type: 'transaction',
        entry: [
          { resource: observation('p', 'tx-ok'), request: { method: 'POST', url: 'Observation' } },
          { resource: { resourceType: 'Observation', status: 'final' }, request: { method: 'POST', url: 'Observation' } },
        ],
      },
    });
    expect(res.status).toBe(400);
    expect(codeOf(res)).toBe('FHIR_TRANSACTION_FAILED');
    expect((await writeLog(sb.url)).length).toBe(before);
    expect((await http(`${base}/Observation?identifier=tx-ok`)).body.total).toBe(0);
  });

  it('a batch applies the good entries and reports the bad ones', async () => {
    const res = await http(base, {
      body: {
        resourceType: 'Bundle',
        type: 'batch',
        entry: [
          { resource: observation('p', 'batch-ok'), request: { method: 'POST', url: 'Observation' } },
          { resource: { resourceType: 'Observation', status: 'final' }, request: { method: 'POST', url: 'Observation' } },
          { request: { method: 'GET', url: 'Observation?identifier=batch-ok' } },
        ],
      },
    });
    expect(res.status).toBe(200);
    expect(res.body.type).toBe('batch-response');
    expect(res.body.entry.map((e: { response: { status: string } }) => e.response.status)).toEqual(['201', '400', '200']);
    expect(res.body.entry[1].response.outcome.resourceType).toBe('OperationOutcome');
    expect(res.body.entry[2].resource.total).toBe(1);
  });
});

describe('bad input: a clear 4xx, never a 500 or a partial write', () => {
  const cases: [string, string, Parameters<typeof http>[1], number, string][] = [
    ['malformed JSON', 'Observation', { raw: '{"resourceType": "Observ' }, 400, 'FHIR_INVALID_JSON'],
    ['type mismatch', 'Observation', { body: { resourceType: 'Patient' } }, 400, 'FHIR_RESOURCE_TYPE_MISMATCH'],
    ['structurally invalid', 'Observation', { body: { resourceType: 'Observation', status: 'final', bogus: 1 } }, 400, 'FHIR_INVALID_RESOURCE'],
    ['not an object', 'Observation', { raw: '[1,2]' }, 400, 'FHIR_INVALID_RESOURCE'],
    ['unknown type', 'Foo', { body: { resourceType: 'Foo' } }, 404, 'FHIR_UNKNOWN_RESOURCE_TYPE'],
    ['wrong content type', 'Observation', { raw: '<Observation/>', headers: { 'content-type': 'application/fhir+xml' } }, 415, 'FHIR_UNSUPPORTED_MEDIA_TYPE'],
    ['XML wanted', 'Observation', { headers: { accept: 'application/fhir+xml' } }, 406, 'FHIR_NOT_ACCEPTABLE'],
    ['oversized body', 'Observation', { raw: JSON.stringify({ ...observation('p', 'big'), note: [{ text: 'x'.repeat(3 * 1024 * 1024) }] }) }, 413, 'FHIR_BODY_TOO_LARGE'],
    ['PATCH', 'Observation/abc', { method: 'PATCH', body: [] }, 405, 'FHIR_METHOD_NOT_ALLOWED'],
    ['bad bundle', '', { body: { resourceType: 'Bundle', type: 'collection' } }, 400, 'FHIR_INVALID_BUNDLE'],
  ];
  for (const [name, path, opts, status, code] of cases) {
    it(`${name} → ${status} ${code}`, async () => {
      const before = (await writeLog(sb.url)).length;
      const res = await http(path ? `${base}/${path}` : base, opts);
      expect(res.status).toBe(status);
      expect(res.body?.resourceType).toBe('OperationOutcome');
      expect(codeOf(res)).toBe(code);
      expect((await writeLog(sb.url)).length).toBe(before);
    });
  }

  it('update with an id mismatch or an invalid If-Match', async () => {
    const created = await http(`${base}/Observation`, { body: observation('p', 'bad-upd') });
    const id = created.body.id as string;
    const mismatch = await http(`${base}/Observation/${id}`, { method: 'PUT', body: { ...created.body, id: 'other' } });
    expect(mismatch.status).toBe(400);
    expect(codeOf(mismatch)).toBe('FHIR_ID_MISMATCH');
    const noId = await http(`${base}/Observation/${id}`, { method: 'PUT', body: { ...created.body, id: undefined } });
    expect(codeOf(noId)).toBe('FHIR_ID_MISMATCH');
    const badEtag = await http(`${base}/Observation/${id}`, { method: 'PUT', body: created.body, headers: { 'if-match': 'three' } });
    expect(badEtag.status).toBe(400);
    expect(codeOf(badEtag)).toBe('FHIR_INVALID_IF_MATCH');
    expect((await http(`${base}/Observation/${id}`)).body.meta.versionId).toBe('1');
  });

  it('validation errors name the element, never echo the value', async () => {
    const canary = 'CANARY-Zebulon-Quixote';
    const res = await http(`${base}/Patient`, {
      body: { resourceType: 'Patient', name: [{ family: canary }], birthDate: `not-a-date-${canary}`, gender: 'male' },
    });
    expect(res.status).toBe(400);
    expect(res.text).not.toContain(canary);
    expect(res.text).toContain('Patient.birthDate');
  });
});

describe('metadata, write log and snapshot', () => {
  it('the CapabilityStatement reflects what is supported', async () => {
    const res = await http(`${base}/metadata`);
    expect(res.status).toBe(200);
    expect(res.body.fhirVersion).toBe('4.0.1');
    const obs = res.body.rest[0].resource.find((r: { type: string }) => r.type === 'Observation');
    expect(obs.conditionalCreate).toBe(true);
    expect(obs.searchParam.map((p: { name: string }) => p.name).sort()).toEqual(
      ['_id', '_lastUpdated', '_tag', 'code', 'date', 'identifier', 'patient', 'status', 'subject'].sort(),
    );
    const pat = res.body.rest[0].resource.find((r: { type: string }) => r.type === 'Patient');
    expect(pat.searchParam.map((p: { name: string }) => p.name)).not.toContain('subject');
  });

  it('every applied write is in the write log with request id and content hash', async () => {
    const res = await http(`${base}/Observation`, { body: observation('p', 'wl-1'), headers: { 'x-request-id': 'req-wl-1' } });
    expect(res.headers.get('x-request-id')).toBe('req-wl-1');
    const entry = (await writeLog(sb.url)).find((e) => e['requestId'] === 'req-wl-1');
    expect(entry).toMatchObject({ op: 'create', resourceType: 'Observation', id: res.body.id, versionId: '1', interaction: 'create' });
    expect(entry?.['identifiers']).toEqual(['urn:tether:test|wl-1']);
    expect(entry?.['contentHash']).toBe(resourceContentHash(res.body));
    const since = Number(entry?.['seq']);
    const tail = await (await fetch(`${sb.url}/_admin/write-log?since=${since - 1}`)).text();
    expect(tail.split('\n').filter(Boolean)[0]).toContain('req-wl-1');
  });

  it('a snapshot survives a restart', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tether-snap-'));
    try {
      const file = join(dir, 'store.ndjson');
      const a = await startSandbox({ auth: false, snapshotFile: file });
      const created = await http(`${a.fhirBaseUrl}/Observation`, { body: observation('p', 'snap-1') });
      await http(`${a.fhirBaseUrl}/Observation/${created.body.id}`, { method: 'PUT', body: { ...created.body, status: 'amended' } });
      await a.close();
      const b = await startSandbox({ auth: false, snapshotFile: file });
      try {
        const read = await http(`${b.fhirBaseUrl}/Observation/${created.body.id}`);
        expect(read.body.status).toBe('amended');
        expect(read.body.meta.versionId).toBe('2');
        expect((await http(`${b.fhirBaseUrl}/Observation?identifier=snap-1`)).body.total).toBe(1);
      } finally {
        await b.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('profile switches', () => {
  it('requireIfMatch refuses updates without If-Match; strictSearch rejects unknown parameters', async () => {
    const strict = await startSandbox({ auth: false, profile: { name: 'strict', requireIfMatch: true, strictSearch: true } });
    try {
      const created = await http(`${strict.fhirBaseUrl}/Observation`, { body: observation('p', 'strict-1') });
      const res = await http(`${strict.fhirBaseUrl}/Observation/${created.body.id}`, { method: 'PUT', body: created.body });
      expect(res.status).toBe(412);
      expect(codeOf(res)).toBe('FHIR_IF_MATCH_REQUIRED');
      const search = await http(`${strict.fhirBaseUrl}/Observation?nonsense=1`);
      expect(search.status).toBe(400);
      expect(codeOf(search)).toBe('FHIR_UNKNOWN_SEARCH_PARAMETER');
    } finally {
      await strict.close();
    }
  });

  it('writeResponse=empty answers creates with an empty body (Oracle Health)', async () => {
    const s = await startSandbox({ auth: false, profile: { writeResponse: 'empty', conditionalCreate: false } });
    try {
      const res = await http(`${s.fhirBaseUrl}/Observation`, { body: observation('p', 'empty-1') });
      expect(res.status).toBe(201);
      expect(res.text).toBe('');
      expect(res.headers.get('location')).toMatch(/\/Observation\/.+\/_history\/1$/);
      const cond = await http(`${s.fhirBaseUrl}/Observation`, { body: observation('p', 'empty-1'), headers: { 'if-none-exist': 'identifier=empty-1' } });
      expect(cond.status).toBe(405);
    } finally {
      await s.close();
    }
  });

  it('rejects an invalid profile with CONFIG_INVALID', async () => {
    await expect(startSandbox({ auth: false, profile: { requireIfMatch: 'yes' } })).rejects.toMatchObject({ code: 'CONFIG_INVALID' });
  });
});
