/**
 * Writes against the real sandbox (real sockets on 127.0.0.1): every fault a write can meet, classified, and never
 * resent. The sandbox's write log and fault statistics are the ground truth for "applied" and "sent".
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Pool, buildConnector } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { closedPort, eventRecorder, obs, startTestEhr, type TestEhr } from './__fixtures__/sandbox.js';
import { createEhrClient, type EhrClient, type EhrClientOptions, type EhrTarget } from './index.js';

const open: { close(): Promise<void> }[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((x) => x.close()));
});

async function setup(options: Partial<EhrClientOptions> = {}): Promise<{ ehr: TestEhr; client: EhrClient; target: EhrTarget; rec: ReturnType<typeof eventRecorder> }> {
  const ehr = await startTestEhr();
  open.push(ehr.sandbox);
  const rec = eventRecorder();
  const client = createEhrClient({ tokenProvider: ehr.tokens, onEvent: rec.sink, ...options });
  open.push(client);
  return { ehr, client, target: { tenantId: 'clinic-1', baseUrl: ehr.sandbox.fhirBaseUrl }, rec };
}

const creates = async (ehr: TestEhr): Promise<number> => (await ehr.writes()).filter((w) => w['op'] === 'create').length;

describe('write outcomes against the sandbox', () => {
  it('2xx → applied, with Location / ETag / Last-Modified and the correlation id in the write log', async () => {
    const { ehr, client, target } = await setup();
    const result = await client.create(target, 'system', obs('p1', 'ok-1'), { correlationId: 'cmd-ok-1' });
    expect(result).toMatchObject({ outcome: 'applied', status: 201, attempts: 1, correlationId: 'cmd-ok-1' });
    expect(result.error).toBeUndefined();
    expect(result.headers.location).toMatch(/\/Observation\/[^/]+\/_history\/1$/);
    expect(result.headers.etag).toBe('W/"1"');
    expect(result.headers.lastModified).toBeDefined();
    expect(result.body?.['resourceType']).toBe('Observation');
    const log = await ehr.writes();
    expect(log).toHaveLength(1);
    expect(log[0]).toMatchObject({ op: 'create', requestId: 'cmd-ok-1' });
  });

  it('commit-then-drop on a create → unknown (not rejected), and it was NOT resent: exactly one create', async () => {
    const { ehr, client, target } = await setup();
    await ehr.setFaults({ faults: [{ id: 'drop', kind: 'commit-then-drop' }] });
    const result = await client.create(target, 'system', obs('p1', 'ctd-1'));
    expect(result.outcome).toBe('unknown');
    expect(result.error).toMatchObject({ code: 'EHR_OUTCOME_UNKNOWN', retryClass: 'ambiguous', category: 'ambiguous' });
    expect(result.error?.details['reason']).toBe('reset');
    expect(result.attempts).toBe(1);
    expect(await creates(ehr)).toBe(1);
    expect((await ehr.stats()).requestsSeen).toBe(1);
  });

  it('reset before processing on a create → unknown: the request was written, the client cannot know it was not applied', async () => {
    const { ehr, client, target } = await setup();
    await ehr.setFaults({ faults: [{ id: 'reset', kind: 'reset' }] });
    const result = await client.create(target, 'system', obs('p1', 'reset-1'));
    expect(result.outcome).toBe('unknown');
    expect(result.error?.code).toBe('EHR_OUTCOME_UNKNOWN');
    expect(result.attempts).toBe(1);
    expect((await ehr.stats()).requestsSeen).toBe(1);
    expect(await creates(ehr)).toBe(0); // it was in fact not applied: reconciliation will find that out
  });

  it('connection refused (closed port) → not_sent: no byte left, safe to retry', async () => {
    const port = await closedPort();
    const client = createEhrClient({
      tokenProvider: { getAccessToken: () => Promise.resolve('t'), refreshAfterUnauthorized: () => Promise.resolve('t2') },
    });
    open.push(client);
    const result = await client.create({ tenantId: 'clinic-1', baseUrl: `http://127.0.0.1:${port}/fhir/R4` }, 'system', obs('p1', 'cr-1'));
    expect(result.outcome).toBe('not_sent');
    expect(result.error).toMatchObject({ code: 'EHR_UNAVAILABLE', retryClass: 'transient' });
    expect(result.error?.details['reason']).toBe('connect-refused');
    expect(result.status).toBeUndefined();
  });

  it('error-after 500 → unknown, not resent (the write was applied once)', async () => {
    const { ehr, client, target } = await setup();
    await ehr.setFaults({ faults: [{ id: 'ea', kind: 'error-after', status: 500 }] });
    const result = await client.create(target, 'system', obs('p1', 'ea-1'));
    expect(result).toMatchObject({ outcome: 'unknown', status: 500, attempts: 1 });
    expect(result.error?.code).toBe('EHR_OUTCOME_UNKNOWN');
    expect((await ehr.stats()).requestsSeen).toBe(1);
    expect(await creates(ehr)).toBe(1);
  });

  it('503 is a response: unknown by default; not_sent only when the vendor profile says 503 means not applied', async () => {
    const { ehr, client, target } = await setup();
    await ehr.setFaults({ faults: [{ id: 'u', kind: 'error-before', status: 503 }] });
    const dflt = await client.create(target, 'system', obs('p1', 'u-1'));
    expect(dflt).toMatchObject({ outcome: 'unknown', status: 503 });
    const profiled = await client.create({ ...target, writeNotAppliedStatuses: [503] }, 'system', obs('p1', 'u-2'));
    expect(profiled).toMatchObject({ outcome: 'not_sent', status: 503 });
    expect(profiled.error?.code).toBe('EHR_UNAVAILABLE');
    expect((await ehr.stats()).requestsSeen).toBe(2); // one each: no resend
  });

  it('429 → rate_limited with retryAfterMs, not resent', async () => {
    const { ehr, client, target } = await setup();
    await ehr.setFaults({ faults: [{ id: 'rl', kind: 'rate-limit', retryAfterSeconds: 7 }] });
    const result = await client.create(target, 'system', obs('p1', 'rl-1'));
    expect(result).toMatchObject({ outcome: 'rate_limited', status: 429, retryAfterMs: 7000, attempts: 1 });
    expect(result.headers.retryAfter).toBe('7');
    expect(result.error?.code).toBe('EHR_RATE_LIMITED');
    expect((await ehr.stats()).requestsSeen).toBe(1);
  });

  it('a timeout after the request was sent → unknown, within the attempt timeout plus a margin', async () => {
    const { ehr, client, target } = await setup({ attemptTimeoutMs: 300 });
    await ehr.setFaults({ faults: [{ id: 'slow', kind: 'timeout', delayMs: 5000 }] });
    const t0 = performance.now();
    const result = await client.create(target, 'system', obs('p1', 'slow-1'));
    const elapsed = performance.now() - t0;
    expect(result.outcome).toBe('unknown');
    expect(result.error?.details['reason']).toBe('attempt-timeout');
    expect(elapsed).toBeGreaterThanOrEqual(290);
    expect(elapsed).toBeLessThan(1500);
    expect((await ehr.stats()).requestsSeen).toBe(1);
  });

  it('rejections carry their category: precondition-failed (stale If-Match), validation (400)', async () => {
    const { ehr, client, target } = await setup();
    const created = await client.create(target, 'system', obs('p1', 'if-1'));
    const id = created.body?.['id'] as string;
    const updated = await client.update(target, 'system', { ...obs('p1', 'if-1'), id, status: 'amended' }, { ifMatch: '1' });
    expect(updated).toMatchObject({ outcome: 'applied', status: 200 });
    expect(updated.headers.etag).toBe('W/"2"');
    const stale = await client.update(target, 'system', { ...obs('p1', 'if-1'), id, status: 'corrected' }, { ifMatch: 'W/"1"' });
    expect(stale).toMatchObject({ outcome: 'rejected', status: 412, category: 'precondition-failed' });
    expect(stale.error?.code).toBe('EHR_PRECONDITION_FAILED');
    expect(stale.error?.details['ehrCodes']).toContain('FHIR_VERSION_CONFLICT');
    const invalid = await client.create(target, 'system', { resourceType: 'Observation', status: 'not-a-status' });
    expect(invalid).toMatchObject({ outcome: 'rejected', status: 400, category: 'validation' });
    expect(await ehr.writes()).toHaveLength(2);
  });

  it('conditional create: If-None-Exist that matches answers 200 and writes nothing', async () => {
    const { ehr, client, target } = await setup();
    const first = await client.create(target, 'system', obs('p1', 'cc-1'), { ifNoneExist: { identifier: 'urn:tether:test|cc-1' } });
    const second = await client.create(target, 'system', obs('p1', 'cc-1'), { ifNoneExist: 'identifier=urn:tether:test|cc-1' });
    expect(first).toMatchObject({ outcome: 'applied', status: 201 });
    expect(second).toMatchObject({ outcome: 'applied', status: 200 });
    expect(await creates(ehr)).toBe(1);
  });

  it('401 on a write → one refresh, resent once (a 401 proves it was not applied) → applied; exactly one create', async () => {
    const { ehr, client, target, rec } = await setup();
    await ehr.setFaults({ faults: [{ id: 'e401', kind: 'early-401', match: { methods: ['POST'] } }] });
    ehr.tokens.onRefresh = () => ehr.setFaults({ faults: [] });
    const result = await client.create(target, 'system', obs('p1', 'a401-1'));
    expect(result).toMatchObject({ outcome: 'applied', status: 201, attempts: 2 });
    expect(ehr.tokens.refreshCalls).toBe(1);
    expect(await creates(ehr)).toBe(1);
    expect(rec.names()).toContain('auth:refresh-after-401');
  });

  it('a second 401 is final: rejected, category auth, EHR_UNAUTHORIZED, no third request', async () => {
    const { ehr, client, target } = await setup();
    await ehr.setFaults({ faults: [{ id: 'e401', kind: 'early-401' }] });
    const result = await client.create(target, 'system', obs('p1', 'a401-2'));
    expect(result).toMatchObject({ outcome: 'rejected', status: 401, category: 'auth', attempts: 2 });
    expect(result.error?.code).toBe('EHR_UNAUTHORIZED');
    expect(ehr.tokens.refreshCalls).toBe(1);
    expect((await ehr.stats()).requestsSeen).toBe(2);
    expect(await creates(ehr)).toBe(0);
  });

  it('a missing scope is refused before sending: not_sent, EHR_SCOPE_MISSING, the EHR saw nothing', async () => {
    const { ehr, client, target } = await setup();
    ehr.tokens.scope = 'system/Patient.rs system/Observation.rs';
    const before = (await ehr.stats()).requestsSeen;
    const result = await client.create(target, 'system', obs('p1', 'scope-1'));
    expect(result).toMatchObject({ outcome: 'not_sent', attempts: 0, category: 'forbidden-scope' });
    expect(result.error?.code).toBe('EHR_SCOPE_MISSING');
    expect(result.error?.details['required']).toBe('system/Observation.c');
    expect((await ehr.stats()).requestsSeen).toBe(before);
    expect(ehr.tokens.getCalls).toBe(0);
    expect(await ehr.writes()).toHaveLength(0);
  });

  it('a transaction is one write: applied, or unknown on commit-then-drop and never resent', async () => {
    const { ehr, client, target } = await setup();
    const bundle = {
      resourceType: 'Bundle' as const,
      type: 'transaction',
      entry: [
        { resource: obs('p1', 'tx-1'), request: { method: 'POST', url: 'Observation' } },
        { resource: obs('p1', 'tx-2'), request: { method: 'POST', url: 'Observation' } },
      ],
    };
    const ok = await client.transaction(target, 'system', bundle);
    expect(ok).toMatchObject({ outcome: 'applied', status: 200 });
    await ehr.setFaults({ faults: [{ id: 'drop', kind: 'commit-then-drop' }] });
    const dropped = await client.transaction(target, 'system', bundle);
    expect(dropped.outcome).toBe('unknown');
    expect((await ehr.stats()).requestsSeen).toBe(2);
    expect(await creates(ehr)).toBe(4);
  });

  it('delete → applied (204)', async () => {
    const { client, target } = await setup();
    const created = await client.create(target, 'system', obs('p1', 'del-1'));
    const deleted = await client.delete(target, 'system', 'Observation', created.body?.['id'] as string);
    expect(deleted).toMatchObject({ outcome: 'applied', status: 204 });
  });

  it('a malformed call throws EHR_REQUEST_INVALID (a caller bug, not an outcome)', async () => {
    const { client, target } = await setup();
    await expect(client.update(target, 'system', obs('p1', 'x'))).rejects.toMatchObject({ code: 'EHR_REQUEST_INVALID' });
    await expect(client.create(target, 'system', { resourceType: 'not a type' })).rejects.toMatchObject({ code: 'EHR_REQUEST_INVALID' });
    await expect(client.create({ ...target, baseUrl: 'ftp://x' }, 'system', obs('p1', 'x'))).rejects.toMatchObject({ code: 'CONFIG_INVALID' });
    await expect(
      client.create(target, 'system', obs('p1', 'x'), { ifNoneExist: 'identifier=a\r\nX-Evil: 1' }),
    ).rejects.toMatchObject({ code: 'EHR_REQUEST_INVALID' });
  });

  it('a deadline that passes while queued for a slot → not_sent (EHR_TIMEOUT), nothing reached the EHR', async () => {
    const { ehr, client, target } = await setup();
    await ehr.setFaults({ faults: [{ id: 'slow', kind: 'latency', fixedMs: 400 }] });
    const one = { ...target, concurrency: 1 };
    const blocker = client.create(one, 'system', obs('p1', 'q-1'));
    await new Promise((r) => setTimeout(r, 30));
    const queued = await client.create(one, 'system', obs('p1', 'q-2'), { deadlineMs: 100 });
    expect(queued).toMatchObject({ outcome: 'not_sent', attempts: 0 });
    expect(queued.error).toMatchObject({ code: 'EHR_TIMEOUT', details: expect.objectContaining({ reason: 'deadline' }) });
    expect((await blocker).outcome).toBe('applied');
    expect((await ehr.stats()).requestsSeen).toBe(1);
  });

  it('a timeout before the connection was up → not_sent, and the request is never written when it comes up later', async () => {
    const { ehr, target } = await setup();
    const connect = buildConnector({});
    // A connector that takes 300 ms (a slow TCP handshake), far beyond the 100 ms attempt budget.
    const client = createEhrClient({
      tokenProvider: ehr.tokens,
      attemptTimeoutMs: 100,
      dispatcherFactory: (origin) => new Pool(origin, { connect: (opts, cb) => void setTimeout(() => connect(opts, cb), 300) }),
    });
    open.push(client);
    const result = await client.create(target, 'system', obs('p1', 'slow-connect'));
    expect(result).toMatchObject({ outcome: 'not_sent', attempts: 1 });
    expect(result.error).toMatchObject({ code: 'EHR_TIMEOUT', details: expect.objectContaining({ reason: 'attempt-timeout' }) });
    await new Promise((r) => setTimeout(r, 500)); // the socket has connected by now
    expect((await ehr.stats()).requestsSeen).toBe(0);
    expect(await ehr.writes()).toHaveLength(0);
  });

  it('the body breaks off after the status: 2xx is applied (flagged), 5xx unknown; a read of it is retried', async () => {
    let status = 201;
    let served = 0;
    const server = createServer((_req, res) => {
      served++;
      res.writeHead(status, { 'content-type': 'application/fhir+json', 'content-length': '500' });
      res.write('{"resourceType":"Observation","id":"abc"');
      setTimeout(() => res.destroy(), 20);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    open.push({ close: () => new Promise<void>((resolve) => server.close(() => resolve())) });
    const client = createEhrClient({
      tokenProvider: { getAccessToken: () => Promise.resolve('t'), refreshAfterUnauthorized: () => Promise.resolve('t2') },
      sleep: () => Promise.resolve(),
      maxAttempts: 2,
    });
    open.push(client);
    const target = { tenantId: 'clinic-1', baseUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}/fhir` };
    const applied = await client.create(target, 'system', obs('p1', 'body-1'));
    expect(applied).toMatchObject({ outcome: 'applied', status: 201 });
    expect(applied.error?.code).toBe('EHR_RESPONSE_INVALID');
    expect(applied.body).toBeUndefined();
    status = 500;
    const unknown = await client.create(target, 'system', obs('p1', 'body-2'));
    expect(unknown).toMatchObject({ outcome: 'unknown', status: 500 });
    status = 200;
    served = 0;
    await expect(client.read(target, 'system', 'Observation', 'abc')).rejects.toMatchObject({ code: 'EHR_UNAVAILABLE' });
    expect(served).toBe(2);
  });

  it('low-level request: a GET answers like a read, a write like a write; after close nothing is sent', async () => {
    const { ehr, client, target } = await setup();
    const created = await client.request(target, 'system', { method: 'POST', path: 'Observation', body: obs('p1', 'll-1') });
    expect(created.outcome).toBe('applied');
    const id = created.body?.['id'] as string;
    const history = await client.request(target, 'system', { method: 'GET', path: `Observation/${id}/_history` });
    expect(history.body).toMatchObject({ resourceType: 'Bundle', type: 'history' });
    const deleted = await client.request(target, 'system', { method: 'DELETE', path: `Observation/${id}` });
    expect(deleted).toMatchObject({ outcome: 'applied', status: 204 });
    await client.close();
    const before = (await ehr.stats()).requestsSeen;
    expect(await client.create(target, 'system', obs('p1', 'll-2'))).toMatchObject({ outcome: 'not_sent' });
    await expect(client.read(target, 'system', 'Observation', id)).rejects.toMatchObject({ code: 'SERVICE_UNAVAILABLE' });
    expect((await ehr.stats()).requestsSeen).toBe(before);
  });
});
