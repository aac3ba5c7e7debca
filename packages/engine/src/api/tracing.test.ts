/**
 * OpenTelemetry: with an SDK registered by the host (here the real @opentelemetry/sdk-trace-base with an
 * in-memory exporter), every API request produces a span carrying route, status and the command id; every
 * write-back attempt a span with the command id and outcome, parent of the EHR client's spans; never PHI.
 */
import { trace } from '@opentelemetry/api';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { canaryObservation, startTestService, type TestService } from '../service/__fixtures__/service.js';

const exporter = new InMemorySpanExporter();
let t: TestService;

beforeAll(async () => {
  trace.setGlobalTracerProvider(new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }));
  t = await startTestService();
}, 60_000);

afterAll(async () => {
  await t?.close();
  trace.disable();
});

it('records spans for the API request, the write-back attempt and its EHR call, with ids and outcomes and no PHI', async () => {
  const res = await t.api('POST', '/v1/commands', {
    body: { tenantId: 'demo', context: 'system', action: 'create', resourceType: 'Observation', resource: canaryObservation('CANARY-OTEL-1'), businessKey: 'otel:1' },
  });
  expect(res.status).toBe(202);
  await t.api('GET', '/v1/nothing');
  const spans = exporter.getFinishedSpans();
  const submit = spans.find((s) => s.name === 'tether.api POST /v1/commands');
  expect(submit?.attributes).toMatchObject({
    'http.request.method': 'POST',
    'http.route': '/v1/commands',
    'http.response.status_code': 202,
    'tether.command_id': res.body.id,
    'tether.tenant': 'demo',
    'tether.actor': expect.any(String),
  });
  expect(spans.some((s) => s.name === 'tether.api GET unmatched' && s.attributes['http.response.status_code'] === 404)).toBe(true);

  // The worker's attempt, and under it the EHR call (its span id is what the sandbox received in traceparent).
  await t.waitFor(res.body.id as string, (state) => state === 'verified');
  const all = exporter.getFinishedSpans();
  const attempt = all.find((s) => s.name === 'tether.writeback.attempt' && s.attributes['tether.command_id'] === res.body.id);
  expect(attempt?.attributes).toMatchObject({ 'tether.tenant': 'demo', 'fhir.resource_type': 'Observation', 'tether.action': 'create', 'tether.attempt': 1, 'tether.outcome': 'applied', 'tether.state': 'verified' });
  const ehr = all.filter((s) => s.name === 'tether.ehr POST' && s.spanContext().traceId === attempt?.spanContext().traceId);
  expect(ehr).toHaveLength(1);
  const parentId = ehr[0]?.parentSpanContext?.spanId ?? (ehr[0] as unknown as { parentSpanId?: string }).parentSpanId;
  expect(parentId).toBe(attempt?.spanContext().spanId);
  expect(ehr[0]?.attributes).toMatchObject({ 'http.response.status_code': 201, 'tether.outcome': 'applied', 'tether.correlation_id': `${res.body.id as string}.1` });

  const everything = JSON.stringify(all.map((s) => ({ name: s.name, attributes: s.attributes, events: s.events })));
  expect(everything).not.toContain('CANARY-OTEL-1');
  expect(everything).not.toContain('otel:1');
});
