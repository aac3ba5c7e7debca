/**
 * Reads against the real sandbox (and two tiny raw HTTP servers for what the sandbox cannot do): retries, Retry-After,
 * the breaker, timeouts, 401 refresh, coalescing, pagination, priorities, rate limits, headers.
 */
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { eventRecorder, obs, startTestEhr, type TestEhr } from './__fixtures__/sandbox.js';
import { createEhrClient, type EhrClient, type EhrClientEvent, type EhrClientEventMap, type EhrClientEventName, type EhrClientOptions, type EhrTarget, type FhirBundle } from './index.js';

const open: { close(): Promise<void> }[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((x) => x.close()));
});

/** A fake clock shared by the client (and optionally the sandbox); `sleep` advances it instead of waiting. */
function fakeTime(start = Date.now()) {
  let now = start;
  const sleeps: number[] = [];
  return {
    clock: () => now,
    sleeps,
    advance: (ms: number) => {
      now += ms;
    },
    sleep: (ms: number, signal: AbortSignal): Promise<void> => {
      if (signal.aborted) return Promise.reject(signal.reason as Error);
      sleeps.push(ms);
      now += ms;
      return Promise.resolve();
    },
  };
}

async function setup(
  options: Partial<EhrClientOptions> = {},
  sandboxClock?: () => number,
): Promise<{ ehr: TestEhr; client: EhrClient; target: EhrTarget; rec: ReturnType<typeof eventRecorder> }> {
  const ehr = await startTestEhr(sandboxClock ? { clock: sandboxClock } : {});
  open.push(ehr.sandbox);
  const rec = eventRecorder();
  const client = createEhrClient({ tokenProvider: ehr.tokens, onEvent: rec.sink, ...options });
  open.push(client);
  return { ehr, client, target: { tenantId: 'clinic-1', baseUrl: ehr.sandbox.fhirBaseUrl }, rec };
}

function payloads<K extends EhrClientEventName>(events: EhrClientEvent[], name: K): EhrClientEventMap[K][] {
  return events.filter((e) => e.name === name).map((e) => e.payload as EhrClientEventMap[K]);
}

/** A raw HTTP server on 127.0.0.1:0 that records requests and answers with `handler`. */
async function rawServer(handler: (n: number, headers: IncomingHttpHeaders, url: string) => { status: number; body?: unknown }) {
  const seen: { headers: IncomingHttpHeaders; url: string }[] = [];
  const server: Server = createServer((req, res) => {
    seen.push({ headers: req.headers, url: req.url ?? '' });
    const answer = handler(seen.length, req.headers, req.url ?? '');
    const text = answer.body === undefined ? '' : JSON.stringify(answer.body);
    res.writeHead(answer.status, { 'content-type': 'application/fhir+json' });
    res.end(text);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const handle = { origin, seen, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
  open.push(handle);
  return handle;
}

const staticTokens = { getAccessToken: () => Promise.resolve('secret-token'), refreshAfterUnauthorized: () => Promise.resolve('secret-token-2') };

describe('reads and searches', () => {
  it('read and search return status, body and headers; the correlation id reaches the EHR', async () => {
    const { ehr, client, target } = await setup();
    const created = await client.create(target, 'system', obs('p1', 'r-1'));
    const id = created.body?.['id'] as string;
    const read = await client.read(target, 'system', 'Observation', id, { correlationId: 'read-corr-1' });
    expect(read).toMatchObject({ status: 200, attempts: 1, correlationId: 'read-corr-1' });
    expect(read.body).toMatchObject({ resourceType: 'Observation', id });
    expect(read.headers['etag']).toBe('W/"1"');
    expect(ehr.requests().at(-1)?.requestId).toBe('read-corr-1');
    const vread = await client.vread(target, 'system', 'Observation', id, '1');
    expect(vread.body.id).toBe(id);
    const found = await client.search(target, 'system', 'Observation', { identifier: 'urn:tether:test|r-1' });
    expect(found.body).toMatchObject({ resourceType: 'Bundle', type: 'searchset', total: 1 });
    const posted = await client.search(target, 'system', 'Observation', [['identifier', 'urn:tether:test|r-1']], { method: 'POST' });
    expect(posted.body.total).toBe(1);
    await expect(client.read(target, 'system', 'Observation', 'does-not-exist')).rejects.toMatchObject({
      code: 'EHR_NOT_FOUND',
      category: 'not-found',
      details: expect.objectContaining({ status: 404, attempts: 1 }),
    });
  });

  it('every attempt carries X-Request-Id, X-Correlation-Id and a traceparent: same trace id, new span id', async () => {
    const server = await rawServer((n) => (n === 1 ? { status: 503 } : { status: 200, body: { resourceType: 'Patient', id: 'x' } }));
    const client = createEhrClient({ tokenProvider: staticTokens, sleep: () => Promise.resolve() });
    open.push(client);
    const parent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
    const res = await client.read({ tenantId: 't', baseUrl: `${server.origin}/fhir` }, 'system', 'Patient', 'x', { correlationId: 'c-77', traceparent: parent });
    expect(res.attempts).toBe(2);
    expect(server.seen.map((s) => s.url)).toEqual(['/fhir/Patient/x', '/fhir/Patient/x']);
    const [a, b] = server.seen.map((s) => s.headers);
    for (const h of [a, b]) {
      expect(h?.['x-request-id']).toBe('c-77');
      expect(h?.['x-correlation-id']).toBe('c-77');
      expect(h?.['authorization']).toBe('Bearer secret-token');
      expect(h?.['accept']).toBe('application/fhir+json');
      expect(h?.['traceparent']).toMatch(/^00-4bf92f3577b34da6a3ce929d0e0e4736-[0-9a-f]{16}-01$/);
    }
    expect(a?.['traceparent']).not.toBe(b?.['traceparent']);
    expect(a?.['traceparent']).not.toContain('00f067aa0ba902b7');
  });

  it('reads are retried through a reset and a 503 and succeed; the backoff uses full jitter', async () => {
    const { ehr, client, target, rec } = await setup();
    const created = await client.create(target, 'system', obs('p1', 'rr-1'));
    await ehr.setFaults({ faults: [{ id: 'reset', kind: 'reset' }] });
    const sleeps: number[] = [];
    // The injected sleep changes the sandbox's mind between attempts: reset, then 503, then healthy.
    const retrying = createEhrClient({
      tokenProvider: ehr.tokens,
      onEvent: rec.sink,
      random: () => 0.5,
      sleep: async (ms) => {
        sleeps.push(ms);
        await ehr.setFaults(sleeps.length === 1 ? { faults: [{ id: 'unavailable', kind: 'error-before', status: 503 }] } : { faults: [] });
      },
    });
    open.push(retrying);
    const res = await retrying.read(target, 'system', 'Observation', created.body?.['id'] as string);
    expect(res).toMatchObject({ status: 200, attempts: 3 });
    expect(sleeps).toEqual([100, 200]); // 0.5 × 200 ms, 0.5 × 400 ms
    const retries = payloads(rec.events, 'http:retry');
    expect(retries.map((r) => [r.reason, r.status])).toEqual([
      ['reset', 0],
      ['status', 503],
    ]);
    expect((await ehr.stats()).byFault['reset']?.count).toBe(1);
  });

  it('a 500 or a 4xx is not retried', async () => {
    const { ehr, client, target } = await setup({ sleep: () => Promise.resolve() });
    await ehr.setFaults({ faults: [{ id: 'e', kind: 'error-before', status: 500 }] });
    await expect(client.search(target, 'system', 'Observation', { identifier: 'x' })).rejects.toMatchObject({ code: 'EHR_UNAVAILABLE' });
    expect((await ehr.stats()).requestsSeen).toBe(1);
  });

  it('gives up after maxAttempts with the last error and the attempt count', async () => {
    const { ehr, client, target, rec } = await setup({ maxAttempts: 3, sleep: () => Promise.resolve() });
    await ehr.setFaults({ faults: [{ id: 'u', kind: 'error-before', status: 502 }] });
    await expect(client.search(target, 'system', 'Observation', { identifier: 'x' })).rejects.toMatchObject({
      code: 'EHR_UNAVAILABLE',
      details: expect.objectContaining({ status: 502, attempts: 3 }),
    });
    expect((await ehr.stats()).requestsSeen).toBe(3);
    expect(payloads(rec.events, 'http:retry')).toHaveLength(2);
  });
});

describe('Retry-After and rate limits', () => {
  it('429 storm: no request is sent before the Retry-After has elapsed (fake clock shared with the sandbox)', async () => {
    const time = fakeTime();
    const { ehr, client, target, rec } = await setup({ clock: time.clock, sleep: time.sleep, random: () => 0, maxAttempts: 5 }, time.clock);
    // 429 with Retry-After: 1 s for the first 2.5 s of (fake) sandbox time, then healthy.
    await ehr.setFaults({ faults: [{ id: 'storm', kind: 'rate-limit', retryAfterSeconds: 1, window: { startMs: 0, endMs: 2500 } }] });
    const res = await client.search(target, 'system', 'Observation', { identifier: 'storm' });
    expect(res).toMatchObject({ status: 200, attempts: 4 });
    const seen = ehr.requests();
    expect(seen.map((r) => r.status)).toEqual([429, 429, 429, 200]);
    for (let i = 1; i < seen.length; i++) {
      // The EHR received each request at least Retry-After after the 429 before it.
      expect((seen[i]?.at ?? 0) - (seen[i - 1]?.at ?? 0)).toBeGreaterThanOrEqual(1000);
    }
    expect(time.sleeps).toEqual([1000, 1000, 1000]);
    expect(payloads(rec.events, 'http:retry').every((r) => r.retryAfter && r.delayMs === 1000)).toBe(true);
  });

  it('a Retry-After above the cap is not shortened: the read fails at once, and the tenant is paused for everyone', async () => {
    const time = fakeTime();
    const { ehr, client, target, rec } = await setup({ clock: time.clock, sleep: time.sleep, maxRetryAfterMs: 5000 });
    await ehr.setFaults({ faults: [{ id: 'rl', kind: 'rate-limit', retryAfterSeconds: 60 }] });
    await expect(client.search(target, 'system', 'Observation', { identifier: 'a' })).rejects.toMatchObject({
      code: 'EHR_RATE_LIMITED',
      details: expect.objectContaining({ retryAfterMs: 60_000, attempts: 1 }),
    });
    await ehr.setFaults({ faults: [] });
    // Within the pause nothing is sent for this tenant: not a read, not a write.
    await expect(client.search(target, 'system', 'Observation', { identifier: 'b' })).rejects.toMatchObject({ code: 'EHR_RATE_LIMITED' });
    const write = await client.create(target, 'system', obs('p1', 'paused'));
    expect(write).toMatchObject({ outcome: 'not_sent', attempts: 0 });
    expect(write.retryAfterMs).toBeGreaterThan(55_000);
    expect((await ehr.stats()).requestsSeen).toBe(1);
    expect(payloads(rec.events, 'http:rate-limited').filter((e) => e.source === 'server' && !e.waited)).toHaveLength(2);
    // Once the pause is over, requests flow again.
    time.advance(60_000);
    await expect(client.search(target, 'system', 'Observation', { identifier: 'c' })).resolves.toMatchObject({ status: 200 });
  });

  it('the tenant token bucket makes requests wait (without sending) and refuses when the wait would pass the deadline', async () => {
    const time = fakeTime();
    const { ehr, client, target, rec } = await setup({ clock: time.clock, sleep: time.sleep, rateLimit: { capacity: 2, refillPerSecond: 1 } });
    for (const key of ['a', 'b', 'c']) await client.search(target, 'system', 'Observation', { identifier: key });
    expect(time.sleeps).toEqual([1000]);
    expect(payloads(rec.events, 'http:rate-limited')).toEqual([expect.objectContaining({ source: 'local', waitMs: 1000, waited: true })]);
    expect((await ehr.stats()).requestsSeen).toBe(3);
    // Bucket empty again; a call with a 500 ms deadline cannot wait 1 s: refused, not sent.
    await expect(client.search(target, 'system', 'Observation', { identifier: 'd' }, { deadlineMs: 500 })).rejects.toMatchObject({ code: 'EHR_RATE_LIMITED' });
    const write = await client.create({ ...target }, 'system', obs('p1', 'bucket'), { deadlineMs: 500 });
    expect(write).toMatchObject({ outcome: 'not_sent', attempts: 0 });
    expect((await ehr.stats()).requestsSeen).toBe(3);
    // Another tenant has its own bucket.
    await expect(client.search({ ...target, tenantId: 'clinic-2' }, 'system', 'Observation', { identifier: 'e' }, { deadlineMs: 500 })).resolves.toBeDefined();
  });
});

describe('circuit breaker', () => {
  it('a 503 burst opens the breaker, calls then fail fast without reaching the EHR; it half-opens and closes after recovery', async () => {
    const time = fakeTime();
    const { ehr, client, target, rec } = await setup({
      clock: time.clock,
      sleep: time.sleep,
      maxAttempts: 1,
      breakerFailureThreshold: 3,
      breakerHalfOpenAfterMs: 10_000,
    });
    await ehr.setFaults({ faults: [{ id: 'burst', kind: 'error-before', status: 503 }] });
    for (let i = 0; i < 3; i++) {
      await expect(client.search(target, 'system', 'Observation', { identifier: `b${i}` })).rejects.toMatchObject({ code: 'EHR_UNAVAILABLE' });
    }
    expect(payloads(rec.events, 'breaker:open')).toEqual([expect.objectContaining({ tenant: 'clinic-1', afterTrial: false, halfOpenAfterMs: 10_000 })]);
    expect(client.circuitState('clinic-1', target.baseUrl)).toBe('open');
    await expect(client.search(target, 'system', 'Observation', { identifier: 'fast' })).rejects.toMatchObject({
      code: 'EHR_CIRCUIT_OPEN',
      details: expect.objectContaining({ retryAfterMs: 10_000 }),
    });
    const write = await client.create(target, 'system', obs('p1', 'open'));
    expect(write).toMatchObject({ outcome: 'not_sent', attempts: 0, retryAfterMs: 10_000 });
    expect(write.error?.code).toBe('EHR_CIRCUIT_OPEN');
    expect((await ehr.stats()).requestsSeen).toBe(3);

    // Still failing at the first trial: it reopens.
    time.advance(10_000);
    await expect(client.search(target, 'system', 'Observation', { identifier: 'trial-1' })).rejects.toMatchObject({ code: 'EHR_UNAVAILABLE' });
    expect(client.circuitState('clinic-1', target.baseUrl)).toBe('open');
    // Recovered: the next trial closes it.
    await ehr.setFaults({ faults: [] });
    time.advance(10_000);
    await expect(client.search(target, 'system', 'Observation', { identifier: 'trial-2' })).resolves.toMatchObject({ status: 200 });
    expect(client.circuitState('clinic-1', target.baseUrl)).toBe('closed');
    expect(rec.names().filter((n) => n.startsWith('breaker:'))).toEqual(['breaker:open', 'breaker:half-open', 'breaker:open', 'breaker:half-open', 'breaker:close']);
    expect((await ehr.stats()).requestsSeen).toBe(5);
  });

  it('4xx answers never open it, and other tenants are not affected by one tenant’s open circuit', async () => {
    const { ehr, client, target } = await setup({ maxAttempts: 1, breakerFailureThreshold: 2, sleep: () => Promise.resolve() });
    for (let i = 0; i < 4; i++) await expect(client.read(target, 'system', 'Observation', `missing-${i}`)).rejects.toMatchObject({ code: 'EHR_NOT_FOUND' });
    expect(client.circuitState('clinic-1', target.baseUrl)).toBe('closed');
    await ehr.setFaults({ faults: [{ id: 'u', kind: 'error-before', status: 504 }] });
    for (let i = 0; i < 2; i++) await expect(client.search(target, 'system', 'Observation', { identifier: `x${i}` })).rejects.toBeDefined();
    expect(client.circuitState('clinic-1', target.baseUrl)).toBe('open');
    await ehr.setFaults({ faults: [] });
    await expect(client.search({ ...target, tenantId: 'clinic-2' }, 'system', 'Observation', { identifier: 'y' })).resolves.toMatchObject({ status: 200 });
  });
});

describe('timeouts', () => {
  it('a response slower than the attempt timeout: the read fails within its deadline plus a margin', async () => {
    const { ehr, client, target, rec } = await setup({ attemptTimeoutMs: 250, deadlineMs: 600 });
    await ehr.setFaults({ faults: [{ id: 'slow', kind: 'timeout', delayMs: 5000 }] });
    const t0 = performance.now();
    const err: unknown = await client.search(target, 'system', 'Observation', { identifier: 'slow' }).catch((e: unknown) => e);
    const elapsed = performance.now() - t0;
    expect(err).toMatchObject({ code: 'EHR_TIMEOUT' });
    expect(elapsed).toBeLessThan(600 + 400);
    // The first attempt timed out after 250 ms and was retried while the deadline allowed.
    const responses = payloads(rec.events, 'http:response');
    expect(responses[0]).toMatchObject({ status: 0, reason: 'attempt-timeout', outcome: 'failed' });
    expect(responses.length).toBeGreaterThanOrEqual(2);
  });

  it('the headers timeout applies once the request is written', async () => {
    const { ehr, client, target, rec } = await setup({ headersTimeoutMs: 200, maxAttempts: 1 });
    await ehr.setFaults({ faults: [{ id: 'slow', kind: 'latency', fixedMs: 3000 }] });
    const t0 = performance.now();
    await expect(client.search(target, 'system', 'Observation', { identifier: 'h' })).rejects.toMatchObject({ code: 'EHR_TIMEOUT' });
    expect(performance.now() - t0).toBeLessThan(1200);
    expect(payloads(rec.events, 'http:response')[0]).toMatchObject({ reason: 'headers-timeout' });
  });

  it('a call cancelled by its signal ends at once', async () => {
    const { ehr, client, target } = await setup();
    await ehr.setFaults({ faults: [{ id: 'slow', kind: 'latency', fixedMs: 3000 }] });
    const controller = new AbortController();
    const t0 = performance.now();
    const pending = client.search(target, 'system', 'Observation', { identifier: 'c' }, { signal: controller.signal });
    setTimeout(() => controller.abort(), 100);
    await expect(pending).rejects.toMatchObject({ code: 'EHR_TIMEOUT', details: expect.objectContaining({ reason: 'aborted' }) });
    expect(performance.now() - t0).toBeLessThan(1000);
  });
});

describe('401 refresh on reads', () => {
  it('an early 401 → one refresh, then success', async () => {
    const { ehr, client, target, rec } = await setup();
    await ehr.setFaults({ faults: [{ id: 'e401', kind: 'early-401' }] });
    ehr.tokens.onRefresh = () => ehr.setFaults({ faults: [] });
    const res = await client.search(target, 'system', 'Observation', { identifier: 'a' });
    expect(res).toMatchObject({ status: 200, attempts: 2 });
    expect(ehr.tokens.refreshCalls).toBe(1);
    expect(payloads(rec.events, 'auth:refresh-after-401')).toHaveLength(1);
  });

  it('a second 401 → EHR_UNAUTHORIZED after exactly one refresh', async () => {
    const { ehr, client, target } = await setup();
    await ehr.setFaults({ faults: [{ id: 'e401', kind: 'early-401' }] });
    await expect(client.search(target, 'system', 'Observation', { identifier: 'a' })).rejects.toMatchObject({ code: 'EHR_UNAUTHORIZED', category: 'auth' });
    expect(ehr.tokens.refreshCalls).toBe(1);
    expect((await ehr.stats()).requestsSeen).toBe(2);
  });

  it('a missing scope never reaches the server', async () => {
    const { ehr, client, target } = await setup();
    ehr.tokens.scope = 'system/Patient.rs';
    await expect(client.search(target, 'system', 'Observation', { identifier: 'a' })).rejects.toMatchObject({ code: 'EHR_SCOPE_MISSING' });
    expect((await ehr.stats()).requestsSeen).toBe(0);
  });
});

describe('events and logs without a sink', () => {
  it('on() listeners get http:response without an onEvent sink, until they unsubscribe', async () => {
    const ehr = await rawServer(() => ({ status: 200, body: { resourceType: 'Patient', id: 'p1' } }));
    const client = createEhrClient({ tokenProvider: staticTokens });
    open.push(client);
    const target = { tenantId: 't', baseUrl: `${ehr.origin}/fhir` };
    const seen: EhrClientEventMap['http:response'][] = [];
    const off = client.on('http:response', (payload) => seen.push(payload));
    await client.read(target, 'system', 'Patient', 'p1', { correlationId: 'c-1' });
    off();
    await client.read(target, 'system', 'Patient', 'p1', { correlationId: 'c-2' });
    expect(seen).toHaveLength(1);
    expect(seen[0]).toMatchObject({ tenant: 't', status: 200, outcome: 'ok', correlationId: 'c-1', attempt: 1 });
  });

  it('writes the per-attempt debug line only when the logger logs debug (isLevelEnabled)', async () => {
    const ehr = await rawServer(() => ({ status: 200, body: { resourceType: 'Patient', id: 'p1' } }));
    const lines: string[] = [];
    let level = 'info';
    const logger = {
      isLevelEnabled: (l: string) => l !== 'debug' || level === 'debug',
      debug: (_fields: Record<string, unknown>, msg: string) => lines.push(msg),
      info: () => {},
      warn: () => {},
      error: () => {},
    };
    const client = createEhrClient({ tokenProvider: staticTokens, logger });
    open.push(client);
    const target = { tenantId: 't', baseUrl: `${ehr.origin}/fhir` };
    await client.read(target, 'system', 'Patient', 'p1');
    expect(lines).toEqual([]);
    level = 'debug';
    await client.read(target, 'system', 'Patient', 'p1');
    expect(lines).toEqual(['ehr_client.attempt']);
  });
});

describe('coalescing', () => {
  it('10 identical concurrent GETs → 1 request to the EHR, every caller gets the answer', async () => {
    const { ehr, client, target, rec } = await setup();
    await ehr.setFaults({ faults: [{ id: 'slow', kind: 'latency', fixedMs: 150 }] });
    const results = await Promise.all(Array.from({ length: 10 }, () => client.search(target, 'system', 'Observation', { identifier: 'same' })));
    expect((await ehr.stats()).requestsSeen).toBe(1);
    expect(new Set(results.map((r) => r.body.id)).size).toBe(1);
    expect(payloads(rec.events, 'http:coalesced')).toHaveLength(9);
  });

  it('different contexts, different URLs and writes are never coalesced', async () => {
    const { ehr, client, target } = await setup();
    await ehr.setFaults({ faults: [{ id: 'slow', kind: 'latency', fixedMs: 100 }] });
    await Promise.all([
      client.search(target, 'system', 'Observation', { identifier: 'same' }),
      client.search(target, 'provider:dr-1', 'Observation', { identifier: 'same' }),
      client.search(target, 'system', 'Observation', { identifier: 'other' }),
      client.search(target, 'system', 'Observation', { identifier: 'same' }, { method: 'POST' }),
      client.create(target, 'system', obs('p1', 'w')),
      client.create(target, 'system', obs('p1', 'w')),
    ]);
    expect((await ehr.stats()).requestsSeen).toBe(6);
  });

  it('a caller that gives up leaves; the shared request continues for the others', async () => {
    const { ehr, client, target } = await setup();
    await ehr.setFaults({ faults: [{ id: 'slow', kind: 'latency', fixedMs: 300 }] });
    const controller = new AbortController();
    const leaving = client.search(target, 'system', 'Observation', { identifier: 'shared' }, { signal: controller.signal });
    const staying = client.search(target, 'system', 'Observation', { identifier: 'shared' });
    setTimeout(() => controller.abort(), 50);
    await expect(leaving).rejects.toMatchObject({ code: 'EHR_TIMEOUT' });
    await expect(staying).resolves.toMatchObject({ status: 200, attempts: 1 });
    expect((await ehr.stats()).requestsSeen).toBe(1);
  });
});

describe('pagination', () => {
  it('follows next links over 3 pages', async () => {
    const { ehr, client, target } = await setup();
    for (let i = 0; i < 7; i++) await client.create(target, 'system', obs('pg', `pg-${i}`));
    const pages: FhirBundle[] = [];
    for await (const page of client.searchPages(target, 'system', 'Observation', { subject: 'Patient/pg', _count: 3 })) pages.push(page);
    expect(pages.map((p) => p.entry?.length)).toEqual([3, 3, 1]);
    const ids = pages.flatMap((p) => (p.entry ?? []).map((e) => (e['resource'] as { id: string }).id));
    expect(new Set(ids).size).toBe(7);
    expect(ehr.requests().filter((r) => r['interaction'] === 'search-type')).toHaveLength(3);
  });

  it('is bounded by maxPages', async () => {
    const { client, target } = await setup();
    for (let i = 0; i < 5; i++) await client.create(target, 'system', obs('mp', `mp-${i}`));
    const pages: FhirBundle[] = [];
    const run = async (): Promise<void> => {
      for await (const page of client.searchPages(target, 'system', 'Observation', { subject: 'Patient/mp', _count: 2 }, { maxPages: 2 })) pages.push(page);
    };
    await expect(run()).rejects.toMatchObject({ code: 'EHR_RESPONSE_INVALID', details: expect.objectContaining({ reason: 'max-pages' }) });
    expect(pages).toHaveLength(2);
  });

  it('refuses a next link to another origin: the token never goes there', async () => {
    const elsewhere = await rawServer(() => ({ status: 200, body: { resourceType: 'Bundle', type: 'searchset' } }));
    const ehr = await rawServer((_n, _h, url) => ({
      status: 200,
      body: {
        resourceType: 'Bundle',
        type: 'searchset',
        link: [{ relation: 'next', url: url.includes('page=2') ? `${elsewhere.origin}/fhir/Patient?page=3` : `/fhir/Patient?name=x&page=2` }],
      },
    }));
    const client = createEhrClient({ tokenProvider: staticTokens });
    open.push(client);
    const pages: FhirBundle[] = [];
    const run = async (): Promise<void> => {
      for await (const page of client.searchPages({ tenantId: 't', baseUrl: `${ehr.origin}/fhir` }, 'system', 'Patient', { name: 'x' })) pages.push(page);
    };
    await expect(run()).rejects.toMatchObject({ code: 'EHR_REQUEST_INVALID', details: expect.objectContaining({ reason: 'cross-origin-next-link' }) });
    // Page 2 came from a relative next link (same origin), sent verbatim.
    expect(ehr.seen.map((s) => s.url)).toEqual(['/fhir/Patient?name=x', '/fhir/Patient?name=x&page=2']);
    expect(pages).toHaveLength(2);
    expect(elsewhere.seen).toHaveLength(0);
  });
});

describe('priorities', () => {
  it('with concurrency 1, queued interactive work goes before queued batch work', async () => {
    const { ehr, client, target, rec } = await setup();
    const one = { ...target, concurrency: 1 };
    await ehr.setFaults({ faults: [{ id: 'slow', kind: 'latency', fixedMs: 60 }] });
    const call = (id: string, priority: 'interactive' | 'batch') =>
      client.search(one, 'system', 'Observation', { identifier: id }, { priority, correlationId: id });
    const blocker = call('blocker', 'batch');
    await new Promise((r) => setTimeout(r, 20)); // the blocker holds the only slot
    const queued = [call('b1', 'batch'), call('b2', 'batch'), call('b3', 'batch'), call('i1', 'interactive'), call('i2', 'interactive')];
    await Promise.all([blocker, ...queued]);
    expect(ehr.requests().map((r) => r.requestId)).toEqual(['blocker', 'i1', 'i2', 'b1', 'b2', 'b3']);
    expect(payloads(rec.events, 'queue:waited')).toHaveLength(5);
  });
});
