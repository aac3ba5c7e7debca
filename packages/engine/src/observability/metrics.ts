/**
 * Prometheus metrics (DESIGN §10), on a registry of their own (several services can live in one process, as in
 * tests). Labels are tenant ids, vendor profile names, resource types, interactions, states, error categories
 * and reason codes: never PHI, and always from bounded sets (a tenant is an operator-registered health system).
 *
 * Event-driven counters are fed by {@link ServiceMetrics.observeClient}, `observeWorker` and `observeBroker`;
 * queue depth and oldest age are read from the store at scrape time (`collect`), so they are right across
 * several engine processes on one PostgreSQL.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { EhrClientEvent } from '../client/index.js';
import type { Store } from '../store/index.js';
import type { WritebackEvent } from '../writeback/index.js';

const BREAKER_VALUE = { closed: 0, 'half-open': 1, open: 2 } as const;

export class ServiceMetrics {
  readonly registry = new Registry();
  readonly #vendorOf: (tenant: string) => string;

  readonly ehrRequests = new Counter({
    name: 'tether_ehr_requests_total',
    help: 'EHR HTTP exchanges by tenant, vendor, resource type, interaction, outcome and error category.',
    labelNames: ['tenant', 'vendor', 'resource', 'interaction', 'outcome', 'category'] as const,
    registers: [this.registry],
  });
  readonly ehrRequestSeconds = new Histogram({
    name: 'tether_ehr_request_duration_seconds',
    help: 'Duration of one EHR HTTP exchange.',
    labelNames: ['tenant', 'vendor', 'interaction'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });
  readonly ehrUnauthorized = new Counter({
    name: 'tether_ehr_unauthorized_total',
    help: '401 answers from the EHR (each triggers at most one reactive token refresh).',
    labelNames: ['tenant', 'vendor'] as const,
    registers: [this.registry],
  });
  readonly retries = new Counter({
    name: 'tether_ehr_retries_total',
    help: 'Retries of reads scheduled by the client, by reason.',
    labelNames: ['tenant', 'vendor', 'reason'] as const,
    registers: [this.registry],
  });
  readonly rateLimited = new Counter({
    name: 'tether_ehr_rate_limited_total',
    help: 'Requests held back by a rate limit: source local (tenant bucket) or server (429).',
    labelNames: ['tenant', 'vendor', 'source'] as const,
    registers: [this.registry],
  });
  readonly breakerState = new Gauge({
    name: 'tether_breaker_state',
    help: 'Circuit breaker per tenant and EHR origin: 0 closed, 1 half-open, 2 open.',
    labelNames: ['tenant', 'vendor'] as const,
    registers: [this.registry],
  });
  readonly tokenEvents = new Counter({
    name: 'tether_token_events_total',
    help: 'Auth broker events: refreshed, refresh_failed, tenant_paused, clock_skew.',
    labelNames: ['tenant', 'event'] as const,
    registers: [this.registry],
  });
  readonly commandSettled = new Counter({
    name: 'tether_commands_settled_total',
    help: 'Write-back attempts that ended, by the state the command reached.',
    labelNames: ['tenant', 'vendor', 'state'] as const,
    registers: [this.registry],
  });
  readonly commandsSubmitted = new Counter({
    name: 'tether_commands_submitted_total',
    help: 'Commands accepted (durable) through this process; replays of an idempotency key counted as replay.',
    labelNames: ['tenant', 'resource', 'result'] as const,
    registers: [this.registry],
  });
  readonly duplicatesPrevented = new Counter({
    name: 'tether_duplicates_prevented_total',
    help: 'Writes not sent because the EHR already held the business key (reconcile before write found it).',
    labelNames: ['tenant', 'vendor'] as const,
    registers: [this.registry],
  });
  readonly timeToVerified = new Histogram({
    name: 'tether_time_to_verified_seconds',
    help: 'From submission to verified.',
    labelNames: ['tenant', 'vendor'] as const,
    buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600],
    registers: [this.registry],
  });
  readonly queueDepth = new Gauge({
    name: 'tether_queue_depth',
    help: 'Commands per tenant and state (read from the store at scrape time).',
    labelNames: ['tenant', 'state'] as const,
    registers: [this.registry],
  });
  readonly queueOldestAge = new Gauge({
    name: 'tether_queue_oldest_age_seconds',
    help: 'Age of the oldest command not yet final (queued, retry_wait, in flight, unknown, acknowledged, conflict) per tenant.',
    labelNames: ['tenant'] as const,
    registers: [this.registry],
  });
  readonly exceptionQueueDepth = new Gauge({
    name: 'tether_exception_queue_depth',
    help: 'Commands waiting for a human (needs_review or rejected) per tenant.',
    labelNames: ['tenant'] as const,
    registers: [this.registry],
  });
  readonly tenantAuthPaused = new Gauge({
    name: 'tether_tenant_auth_paused',
    help: '1 when the tenant is paused (auth_paused or disabled) and needs an operator.',
    labelNames: ['tenant'] as const,
    registers: [this.registry],
  });
  readonly apiRequests = new Counter({
    name: 'tether_api_requests_total',
    help: 'HTTP API requests by route pattern, method and status.',
    labelNames: ['route', 'method', 'status'] as const,
    registers: [this.registry],
  });

  constructor(options: { vendorOf?: (tenant: string) => string; defaultMetrics?: boolean } = {}) {
    this.#vendorOf = options.vendorOf ?? (() => 'generic');
    if (options.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry, prefix: 'tether_process_' });
  }

  /** Feeds the client's events. */
  observeClient(event: EhrClientEvent): void {
    switch (event.name) {
      case 'http:response': {
        const p = event.payload;
        const vendor = this.#vendorOf(p.tenant);
        this.ehrRequests.inc({ tenant: p.tenant, vendor, resource: p.resourceType ?? 'none', interaction: p.interaction, outcome: p.outcome, category: p.category ?? 'none' });
        this.ehrRequestSeconds.observe({ tenant: p.tenant, vendor, interaction: p.interaction }, p.ms / 1000);
        if (p.status === 401) this.ehrUnauthorized.inc({ tenant: p.tenant, vendor });
        return;
      }
      case 'http:retry':
        this.retries.inc({ tenant: event.payload.tenant, vendor: this.#vendorOf(event.payload.tenant), reason: event.payload.reason });
        return;
      case 'http:rate-limited':
        this.rateLimited.inc({ tenant: event.payload.tenant, vendor: this.#vendorOf(event.payload.tenant), source: event.payload.source });
        return;
      case 'breaker:open':
        this.breakerState.set({ tenant: event.payload.tenant, vendor: this.#vendorOf(event.payload.tenant) }, BREAKER_VALUE.open);
        return;
      case 'breaker:half-open':
        this.breakerState.set({ tenant: event.payload.tenant, vendor: this.#vendorOf(event.payload.tenant) }, BREAKER_VALUE['half-open']);
        return;
      case 'breaker:close':
        this.breakerState.set({ tenant: event.payload.tenant, vendor: this.#vendorOf(event.payload.tenant) }, BREAKER_VALUE.closed);
        return;
      case 'auth:refresh-after-401':
      case 'http:coalesced':
      case 'queue:waited':
        return;
    }
  }

  /** Feeds the write-back worker's events; `createdAt` (when known) gives time to verified. */
  observeWorker(event: WritebackEvent, createdAt?: number, now = Date.now()): void {
    if (event.name !== 'command:settled' || event.state === undefined) return;
    const vendor = this.#vendorOf(event.tenantId);
    this.commandSettled.inc({ tenant: event.tenantId, vendor, state: event.state });
    if (event.reason === 'found' || event.reason === 'found_by_search') this.duplicatesPrevented.inc({ tenant: event.tenantId, vendor });
    if (event.state === 'verified' && createdAt !== undefined) this.timeToVerified.observe({ tenant: event.tenantId, vendor }, Math.max(0, now - createdAt) / 1000);
  }

  /** Feeds the auth broker's events (names as the broker emits them). */
  observeBroker(name: string, tenantId: string): void {
    const event = { 'token:refreshed': 'refreshed', 'token:refresh-failed': 'refresh_failed', 'tenant:paused': 'tenant_paused', 'auth:clock-skew': 'clock_skew', 'tenant:resumed': 'tenant_resumed' }[name];
    if (event) this.tokenEvents.inc({ tenant: tenantId, event });
  }

  /** Reads queue gauges from the store (call before each scrape). */
  async collect(store: Store, now = Date.now()): Promise<void> {
    const [queue, tenants] = await Promise.all([store.commandStats.queue(), store.tenants.list()]);
    this.queueDepth.reset();
    this.queueOldestAge.reset();
    this.exceptionQueueDepth.reset();
    const open = new Set(['queued', 'retry_wait', 'in_flight', 'unknown', 'acknowledged', 'conflict']);
    const oldest = new Map<string, number>();
    for (const t of tenants) {
      this.tenantAuthPaused.set({ tenant: t.id }, t.state === 'active' ? 0 : 1);
      this.exceptionQueueDepth.set({ tenant: t.id }, 0);
      this.queueOldestAge.set({ tenant: t.id }, 0);
    }
    for (const q of queue) {
      this.queueDepth.set({ tenant: q.tenantId, state: q.state }, q.count);
      if (q.state === 'needs_review' || q.state === 'rejected') this.exceptionQueueDepth.inc({ tenant: q.tenantId }, q.count);
      if (open.has(q.state) && q.oldestCreatedAt !== null) oldest.set(q.tenantId, Math.min(oldest.get(q.tenantId) ?? Infinity, q.oldestCreatedAt));
    }
    for (const [tenant, at] of oldest) this.queueOldestAge.set({ tenant }, Math.max(0, now - at) / 1000);
  }
}
