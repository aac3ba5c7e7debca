/**
 * OpenTelemetry: with an SDK registered by the host (the real @opentelemetry/sdk-trace-base, in-memory exporter),
 * every attempt is a CLIENT span whose ids are the ones its `traceparent` header carries; a caller's traceparent
 * is the parent; attributes never carry ids, URLs or payloads. Without an SDK nothing changes (the other client
 * tests run that way).
 */
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { trace } from '@opentelemetry/api';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { afterAll, beforeAll, beforeEach, expect, it } from 'vitest';
import { createEhrClient, type EhrClient, type TokenProvider } from './index.js';

const exporter = new InMemorySpanExporter();
const seen: IncomingHttpHeaders[] = [];
let server: Server;
let base: string;
let client: EhrClient;

const tokens: TokenProvider = {
  getAccessToken: () => Promise.resolve('token-1'),
  refreshAfterUnauthorized: () => Promise.resolve('token-2'),
};

beforeAll(async () => {
  trace.setGlobalTracerProvider(new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }));
  // Answers 503 to the first request of each path (a retried read), 201 to a create, 200 otherwise.
  const paths = new Set<string>();
  server = createServer((req, res) => {
    seen.push(req.headers);
    const first = !paths.has(req.url ?? '');
    paths.add(req.url ?? '');
    req.resume();
    req.on('end', () => {
      if (req.method === 'POST') {
        res.writeHead(201, { 'content-type': 'application/fhir+json', location: 'Observation/o-1/_history/1' });
        res.end(JSON.stringify({ resourceType: 'Observation', id: 'o-1', status: 'final' }));
      } else if (first) {
        res.writeHead(503);
        res.end();
      } else {
        res.writeHead(200, { 'content-type': 'application/fhir+json' });
        res.end(JSON.stringify({ resourceType: 'Patient', id: 'SECRET-ID-77' }));
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/fhir`;
  client = createEhrClient({ tokenProvider: tokens, sleep: () => Promise.resolve(), rateLimit: null });
});

beforeEach(() => {
  exporter.reset();
  seen.length = 0;
});

afterAll(async () => {
  await client?.close();
  await new Promise((r) => server?.close(r));
  trace.disable();
});

const traceparentOf = (h: IncomingHttpHeaders): string[] => String(h['traceparent']).split('-');

it('one span per attempt, its ids on the wire, one trace for a retried read', async () => {
  await client.read({ tenantId: 'clinic-1', baseUrl: base }, 'system', 'Patient', 'SECRET-ID-77', { correlationId: 'cmd-1.1' });
  const spans = exporter.getFinishedSpans();
  expect(spans.map((s) => s.name)).toEqual(['tether.ehr GET', 'tether.ehr GET']);
  expect(seen).toHaveLength(2);
  spans.forEach((span, i) => {
    const [, traceId, spanId] = traceparentOf(seen[i] as IncomingHttpHeaders);
    expect(span.spanContext().spanId).toBe(spanId);
    expect(span.spanContext().traceId).toBe(traceId);
  });
  expect(spans[0]?.attributes).toMatchObject({ 'http.request.method': 'GET', 'tether.tenant': 'clinic-1', 'fhir.resource_type': 'Patient', 'fhir.interaction': 'read', 'tether.correlation_id': 'cmd-1.1', 'tether.attempt': 1, 'http.response.status_code': 503 });
  expect(spans[1]?.attributes).toMatchObject({ 'tether.attempt': 2, 'http.response.status_code': 200 });
  const text = JSON.stringify(spans.map((s) => ({ name: s.name, attributes: s.attributes, events: s.events })));
  expect(text).not.toContain('SECRET-ID-77');
  expect(text).not.toContain('127.0.0.1');
});

it("a caller's traceparent is the parent of every attempt (the write-back worker passes its attempt span's)", async () => {
  const parent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
  const answer = await client.create({ tenantId: 'clinic-1', baseUrl: base }, 'system', { resourceType: 'Observation', status: 'final' }, { traceparent: parent });
  expect(answer.outcome).toBe('applied');
  const [span] = exporter.getFinishedSpans();
  expect(span?.spanContext().traceId).toBe('0af7651916cd43dd8448eb211c80319c');
  expect(span?.parentSpanContext?.spanId ?? (span as unknown as { parentSpanId?: string }).parentSpanId).toBe('b7ad6b7169203331');
  expect(span?.attributes).toMatchObject({ 'http.request.method': 'POST', 'fhir.interaction': 'create', 'http.response.status_code': 201, 'tether.outcome': 'applied' });
  expect(traceparentOf(seen[0] as IncomingHttpHeaders)[2]).toBe(span?.spanContext().spanId);
});
