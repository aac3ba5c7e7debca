/**
 * The write-back worker: leases due commands and runs the delivery protocol of DESIGN §5, one attempt per lease.
 *
 * Safety rests on three things, so that a SIGKILL at any line is harmless:
 * 1. **Leases, not locks.** A command is worked on under a lease (visibility timeout). A worker that dies leaves
 *    the lease to expire; the command is then leased again and the next attempt starts by reconciling.
 * 2. **Reconcile before write.** Any attempt after the first searches the EHR for the business key before
 *    sending, and an unknown outcome is resolved by searching, never by resending.
 * 3. **Compare-and-swap everywhere.** Every state change is conditional on the version the worker last saw, and
 *    every EHR write is preceded by a lease extension that fails once the lease is lost (a fence).
 *
 * Nothing here logs or emits the resource, the business key or any EHR payload: events carry ids, states and
 * reason codes only.
 */
import { SpanKind, SpanStatusCode, trace, type Span } from '@opentelemetry/api';
import { isTetherError, type ErrorCategory } from '@tether/core';
import type { EhrTarget, FhirResource, WriteResult } from '../client/index.js';
import type {
  CommandAttemptOutcome,
  CommandAttemptRecord,
  CommandPatch,
  CommandRecord,
  CommandState,
  CommandStep,
  CommandVerification,
  LeasedCommand,
  SubmitLease,
  TenantRecord,
} from '../store/index.js';
import { businessKeySearch, carriesBusinessKey, contentMatches, type SubmitDispatch } from './command.js';
import type { WritebackEvent } from './events.js';
import {
  DEFAULT_VENDOR_PROFILE,
  LEASE_FENCE_SLACK_MS,
  PATIENT_BUDGET_CACHE_MS,
  resolveWorkerOptions,
  retryDelay,
  type ResolvedWorkerOptions,
  type WritebackVendorProfile,
  type WritebackWorkerOptions,
} from './options.js';
import { assertTransition } from './state-machine.js';

/**
 * How long a worker reuses a tenant it read (milliseconds): a change of a tenant's base URL or vendor reaches the
 * workers within this time.
 */
const TENANT_CACHE_MS = 1_000;

/** A compare-and-swap or lease extension failed: another worker owns the command now. Stop touching it. */
class LeaseLost extends Error {
  constructor() {
    super('The lease of the command was lost.');
    this.name = 'LeaseLost';
  }
}

/** What a lookup in the EHR found. */
type Lookup =
  | { readonly kind: 'found'; readonly resource: FhirResource }
  | { readonly kind: 'absent' }
  | { readonly kind: 'duplicate' }
  | { readonly kind: 'unclear'; readonly code: string };

/** Where a write landed, from the answer (body, Location or ETag). */
interface WrittenRef {
  readonly id: string;
  readonly versionId: string | null;
}

type WriteKind = 'create' | 'update' | 'delete';

/** The in-memory state of one attempt: the command as last saved, and what goes into its timeline row. */
class Attempt {
  cmd: CommandRecord;
  readonly n: number;
  readonly startedAt: number;
  readonly correlationId: string;
  readonly steps: string[] = [];
  target: EhrTarget | undefined;
  profile: WritebackVendorProfile = DEFAULT_VENDOR_PROFILE;
  /**
   * Steps decided but not yet written (`acknowledged` before the read-back): they are committed together with the
   * next save, in one transaction. Until then `cmd` shows them (its `version` stays the stored one).
   */
  pending: CommandStep[] = [];
  /** The timeline row was written (together with the transition that ended the attempt). */
  recorded = false;
  /** The EHR id an update or delete was sent to. */
  targetId: string | null = null;
  conflictRetried = false;
  /**
   * DESIGN §5 step 8, decided by the lease: a newer sibling (same business key) is verified, so this command must
   * not be sent. "Newer" is the later source timestamp when both carry a different one, else the higher generation.
   */
  readonly newerSiblingVerified: boolean;
  /** An upsert whose conditional create matched an existing resource continues once as an update. */
  upsertMatched = false;
  outcome: CommandAttemptOutcome | undefined;
  errorCode: string | null = null;
  errorCategory: ErrorCategory | string | null = null;
  ehrStatus: number | null = null;
  verification: CommandVerification | null = null;
  /** The attempt counts against its patient's failure budget ({@link PATIENT_FAILURE_CATEGORIES}, unclear unknowns). */
  patientFailure = false;
  /** The OpenTelemetry span of the attempt (when the host registered an SDK), and its `traceparent` for the EHR calls. */
  span: Span | undefined;
  traceparent: string | undefined;

  constructor(cmd: LeasedCommand, startedAt: number) {
    this.cmd = cmd;
    this.newerSiblingVerified = cmd.newerSiblingVerified;
    this.n = cmd.attemptSeq;
    this.startedAt = startedAt;
    // Joins this attempt to the EHR's logs (X-Request-Id); the command id is a random UUID, not PHI.
    this.correlationId = `${cmd.id}.${cmd.attemptSeq}`;
  }

  step(text: string): void {
    if (this.steps.length < 64) this.steps.push(text);
  }
}

const errorCode = (err: unknown): string => (isTetherError(err) ? err.code : 'INTERNAL');

/** The attempt span's `traceparent` for an EHR call, so the client's spans (and the EHR) hang under it. */
const traceOf = (a: Attempt): { traceparent?: string } => (a.traceparent === undefined ? {} : { traceparent: a.traceparent });

const tracer = trace.getTracer('tether');

/**
 * OpenTelemetry: one span per attempt, `tether.writeback.attempt`, with the command id (the correlation id, not
 * PHI), tenant, resource type, action and attempt number, ended with the outcome and the state it left. Nothing is
 * recorded unless the host registered an SDK.
 */
function startAttemptSpan(a: Attempt, workerId: string): void {
  const span = tracer.startSpan('tether.writeback.attempt', {
    kind: SpanKind.INTERNAL,
    attributes: {
      'tether.command_id': a.cmd.id,
      'tether.tenant': a.cmd.tenantId,
      'fhir.resource_type': a.cmd.resourceType,
      'tether.action': a.cmd.action,
      'tether.attempt': a.n,
      'tether.worker': workerId,
    },
  });
  if (!span.isRecording()) return;
  const sc = span.spanContext();
  a.span = span;
  a.traceparent = `00-${sc.traceId}-${sc.spanId}-0${sc.traceFlags & 1}`;
}

function endAttemptSpan(a: Attempt): void {
  const span = a.span;
  if (!span) return;
  span.setAttributes({ 'tether.outcome': a.outcome ?? 'error', 'tether.state': a.cmd.state, ...(a.errorCode ? { 'error.type': a.errorCode } : {}) });
  if (a.outcome === 'error' || a.cmd.state === 'needs_review') span.setStatus({ code: SpanStatusCode.ERROR, ...(a.errorCode ? { message: a.errorCode } : {}) });
  span.end();
}

/**
 * Error categories of an EHR refusal that count against the patient's failure budget (poison protection): the
 * EHR answered, and refused the write for a reason of this object or its patient (content invalid for this record,
 * a target that is gone, a lock, a stale version or several matches). Not counted: 429 (`rate-limited`), `auth`,
 * `forbidden-scope` (the tenant's configuration), and anything not sent or transient: the circuit breaker, the
 * rate limiter and the per-command budgets own those. A delete answered 404 is a success, not a failure.
 */
const PATIENT_FAILURE_CATEGORIES: ReadonlySet<string> = new Set<ErrorCategory>(['validation', 'not-found', 'conflict', 'precondition-failed']);

/** Cache key of a patient's failure count: (tenant, patient). Kept in memory only, never logged. */
const patientKey = (tenantId: string, patientRef: string): string => JSON.stringify([tenantId, patientRef]);

function versionOf(resource: Readonly<Record<string, unknown>>): string | null {
  const meta = resource['meta'];
  const versionId = typeof meta === 'object' && meta !== null ? (meta as Record<string, unknown>)['versionId'] : undefined;
  return typeof versionId === 'string' ? versionId : null;
}

/** The id and version of what a write produced: from the body when it is the resource, else Location / ETag. */
function writtenRef(result: WriteResult, resourceType: string): WrittenRef | undefined {
  const body = result.body;
  if (body && body['resourceType'] === resourceType && typeof body['id'] === 'string') return { id: body['id'], versionId: versionOf(body) };
  const location = result.headers.location;
  const match = location ? new RegExp(`(?:^|/)${resourceType}/([A-Za-z0-9.-]{1,64})(?:/_history/([A-Za-z0-9.-]{1,64}))?/?$`).exec(location) : null;
  if (match?.[1]) {
    const etag = /^(?:W\/)?"([^"]+)"$/.exec(result.headers.etag ?? '');
    return { id: match[1], versionId: match[2] ?? etag?.[1] ?? null };
  }
  return undefined;
}

/**
 * Leases due commands and delivers them. Create with options, then either `start()` (background loop until
 * `stop()`) or drive it step by step with `tick()` / `runUntilIdle()` (tests, CLI one-shots).
 *
 * `stop()` is graceful: no new leases; attempts in progress finish their current EHR call (never abandoned
 * mid-request); waits inside an attempt (the verification window) are cut short and the command is released to
 * `retry_wait`, due immediately, so another worker picks it up and reconciles first.
 */
export class WritebackWorker implements SubmitDispatch {
  readonly options: ResolvedWorkerOptions;
  readonly #active = new Set<Promise<void>>();
  /** Slots reserved by {@link claim} for submissions not yet committed. */
  #claimed = 0;
  readonly #stopping = new AbortController();
  /** Tenants read in the last {@link TENANT_CACHE_MS}, with when (worker clock). */
  readonly #tenants = new Map<string, { readonly at: number; readonly tenant: Promise<TenantRecord | undefined> }>();
  /** Patients' failure counts read in the last {@link PATIENT_BUDGET_CACHE_MS}, with when (worker clock). */
  readonly #patientFailures = new Map<string, { readonly at: number; readonly count: Promise<number> }>();
  #loop: Promise<void> | undefined;

  /** Throws `CONFIG_INVALID` for invalid options. Does not touch the store. */
  constructor(options: WritebackWorkerOptions) {
    this.options = resolveWorkerOptions(options);
  }

  /** The lease owner id of this worker. */
  get id(): string {
    return this.options.workerId;
  }

  /** Attempts in progress. */
  get inFlight(): number {
    return this.#active.size;
  }

  /**
   * Hand-off at submission ({@link SubmitDispatch}; pass the worker as `dispatch` to `submitCommand`): reserves a
   * slot for a command about to be inserted when this worker runs (`start()`, not stopping), serves the tenant, and
   * has a slot free. The insert then stores the command leased to this worker and {@link adopt} starts its attempt.
   */
  claim(tenantId: string): SubmitLease | undefined {
    if (!this.#loop || this.#stopping.signal.aborted) return undefined;
    if (this.options.tenantId !== undefined && this.options.tenantId !== tenantId) return undefined;
    if (this.#active.size + this.#claimed >= this.options.concurrency) return undefined;
    this.#claimed++;
    return {
      owner: this.id,
      now: this.options.clock(),
      leaseMs: this.options.leaseMs,
      // The deliberately broken engine (sensitivity testing) ignores the key rule here as in its lease queries.
      ...(this.options.unsafeBroken === 'no-key-lock' ? { unsafeIgnoreKeyLock: true } : {}),
    };
  }

  /** Ends a {@link claim}: starts the attempt of the command the insert leased to this worker, if it did. */
  adopt(leased: LeasedCommand | undefined): void {
    this.#claimed = Math.max(0, this.#claimed - 1);
    if (leased === undefined) return;
    if (leased.leaseOwner !== this.id) return;
    // Started even while stopping, like an attempt already in progress: the lease is ours, stop() waits for it.
    this.#begin(leased);
  }

  /** Starts the background loop: lease, process, poll every `pollIntervalMs` when idle. Idempotent. */
  start(): void {
    if (this.#loop || this.#stopping.signal.aborted) return;
    this.#loop = this.#run();
  }

  /** Stops leasing, lets attempts in progress finish (waits cut short), releases their leases. Idempotent. */
  async stop(): Promise<void> {
    this.#stopping.abort();
    await this.#loop;
    // Submissions that claimed a slot before the stop may still hand their command over: wait for those too.
    while (this.#active.size > 0 || this.#claimed > 0) {
      if (this.#active.size > 0) await Promise.allSettled([...this.#active]);
      else await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  /**
   * Leases as many due commands as there are free slots and starts their attempts (without awaiting them).
   * Returns how many were leased.
   */
  async tick(): Promise<number> {
    const free = this.options.concurrency - this.#active.size - this.#claimed;
    if (free <= 0 || this.#stopping.signal.aborted) return 0;
    const leased = await this.options.store.commands.lease({
      owner: this.id,
      now: this.options.clock(),
      leaseMs: this.options.leaseMs,
      limit: free,
      ...(this.options.tenantId === undefined ? {} : { tenantId: this.options.tenantId }),
      ...(this.options.unsafeBroken === 'no-key-lock' ? { unsafeIgnoreKeyLock: true } : {}),
    });
    for (const command of leased) this.#begin(command);
    return leased.length;
  }

  #begin(command: LeasedCommand): void {
    const running: Promise<void> = this.#process(command).finally(() => this.#active.delete(running));
    this.#active.add(running);
  }

  /** Resolves once every attempt in progress has ended (does not lease). */
  async settle(): Promise<void> {
    await Promise.allSettled([...this.#active]);
  }

  /** Processes until nothing is due and nothing is in progress (commands waiting for a later time stay). */
  async runUntilIdle(maxRounds = 10_000): Promise<void> {
    for (let round = 0; round < maxRounds; round++) {
      const leased = await this.tick();
      if (this.#active.size > 0) await Promise.race(this.#active);
      else if (leased === 0) return;
    }
  }

  async #run(): Promise<void> {
    const signal = this.#stopping.signal;
    while (!signal.aborted) {
      let leased = 0;
      try {
        leased = await this.tick();
      } catch {
        // The store is unavailable: nothing was leased; try again after the poll interval.
      }
      if (leased === 0 && this.#active.size < this.options.concurrency) {
        await this.options.sleep(this.options.pollIntervalMs, signal);
        continue;
      }
      // Lease in batches: wait until a quarter of the slots are free (one lease query and commit for several
      // commands instead of one each), or everything finished.
      const batch = Math.ceil(this.options.concurrency / 4);
      while (!signal.aborted && this.#active.size > 0 && this.options.concurrency - this.#active.size < batch) await Promise.race(this.#active);
    }
  }

  #emit(name: WritebackEvent['name'], a: Attempt, extra: { state?: CommandState; reason?: string } = {}): void {
    try {
      this.options.onEvent({ name, workerId: this.id, commandId: a.cmd.id, tenantId: a.cmd.tenantId, attempt: a.n, ...extra });
    } catch {
      // A listener's failure never affects delivery.
    }
  }

  async #process(command: LeasedCommand): Promise<void> {
    const a = new Attempt(command, this.options.clock());
    startAttemptSpan(a, this.id);
    this.#emit('command:leased', a, { state: command.state });
    try {
      await this.#attempt(a);
    } catch (err) {
      if (err instanceof LeaseLost) {
        this.#emit('command:lease-lost', a);
        a.outcome ??= 'error';
        a.errorCode ??= 'lease_lost';
      } else {
        const code = errorCode(err);
        this.#emit('attempt:error', a, { reason: code });
        a.outcome = 'error';
        a.errorCode = code;
        // Best effort: give the command back for a later attempt (which reconciles first). If the store is down
        // too, the lease simply expires.
        await this.#retryLater(a, code).catch(() => {});
      }
    } finally {
      // Normally written with the transition that ended the attempt; here when that never happened (lease lost).
      if (!a.recorded) await this.options.store.commands.appendAttempt(this.#attemptRow(a)).catch(() => {});
      // A new failure of this patient: the next check reads the count again rather than a cached one.
      if (a.patientFailure && a.cmd.patientRef !== null) this.#patientFailures.delete(patientKey(a.cmd.tenantId, a.cmd.patientRef));
      endAttemptSpan(a);
      this.#emit('command:settled', a, { state: a.cmd.state });
    }
  }

  /** The attempt's timeline row, as it stands now. */
  #attemptRow(a: Attempt): CommandAttemptRecord {
    return {
      commandId: a.cmd.id,
      n: a.n,
      worker: this.id,
      startedAt: a.startedAt,
      endedAt: this.options.clock(),
      outcome: a.outcome ?? 'error',
      errorCode: a.errorCode,
      errorCategory: a.errorCategory,
      ehrStatus: a.ehrStatus,
      verification: a.verification,
      correlationId: a.correlationId,
      steps: a.steps.length > 0 ? a.steps.join(' ') : null,
      patientFailure: a.patientFailure,
    };
  }

  // ------------------------------------------------------------------------------------------ persistence

  /** A step: the patch, and the audit event when it changes the state (checked against the state machine). */
  #step(a: Attempt, patch: CommandPatch, reason: string | null): CommandStep {
    const to = patch.state;
    if (to === undefined || to === a.cmd.state) return { patch };
    assertTransition(a.cmd.state, to);
    return { patch, event: { kind: 'transition', actor: `worker:${this.id}`, reason } };
  }

  /**
   * Saves a patch with compare-and-swap, together with the pending steps, in one transaction. A save that gives the
   * lease up ends the attempt, so it also writes the attempt's timeline row: one commit for all of it.
   */
  async #save(a: Attempt, patch: CommandPatch, reason: string | null): Promise<void> {
    const step = this.#step(a, patch, reason);
    const releases = patch.leaseOwner === null;
    if (releases) this.#emit('command:releasing', a, { ...(patch.state === undefined ? {} : { state: patch.state }) });
    const steps = [...a.pending, step];
    const next = await this.options.store.commands.transitionSteps(a.cmd.id, a.cmd.version, steps, releases ? this.#attemptRow(a) : undefined);
    if (!next) throw new LeaseLost();
    a.pending = [];
    if (releases) a.recorded = true;
    a.cmd = next;
  }

  /**
   * Decides a step without writing it yet: it is committed with the next save (which, on every path, follows
   * within the attempt). Used for `acknowledged` before the read-back: should the worker die in between, the next
   * attempt reconciles by business key and finds the resource all the same, so the step need not be durable on
   * its own, and the attempt saves a commit.
   */
  #defer(a: Attempt, patch: CommandPatch, reason: string | null): void {
    a.pending.push(this.#step(a, patch, reason));
    a.cmd = { ...a.cmd, ...patch };
  }

  /** Writes the pending steps now (before a store call that must see them, e.g. a lease extension). */
  async #flush(a: Attempt): Promise<void> {
    if (a.pending.length === 0) return;
    const next = await this.options.store.commands.transitionSteps(a.cmd.id, a.cmd.version, a.pending);
    if (!next) throw new LeaseLost();
    a.pending = [];
    a.cmd = next;
  }

  /** Moves to a state that gives the lease up. */
  #release(a: Attempt, state: CommandState, reason: string | null, extra: CommandPatch = {}): Promise<void> {
    return this.#save(a, { ...extra, state, stateReason: reason, leaseOwner: null, leaseExpiresAt: null }, reason);
  }

  /**
   * `retry_wait` after a backoff (or `delayMs`), or `needs_review` once the attempts budget is spent.
   * `countAttempt: false` (429s) gives the attempt back to the budget: a rate limit says nothing about the command.
   */
  async #retryLater(a: Attempt, reason: string, options: { delayMs?: number; countAttempt?: boolean } = {}): Promise<void> {
    const counted = options.countAttempt !== false;
    if (counted && a.cmd.attempts >= this.options.maxAttempts) {
      return this.#release(a, 'needs_review', 'attempts_exhausted', {});
    }
    const delayMs = options.delayMs ?? retryDelay(a.cmd.attempts, this.options.backoffBaseMs, this.options.backoffMaxMs, this.options.random);
    return this.#release(a, 'retry_wait', reason, {
      nextAttemptAt: this.options.clock() + delayMs,
      ...(counted ? {} : { attempts: Math.max(0, a.cmd.attempts - 1) }),
    });
  }

  /**
   * Extends the lease before an EHR write or a verification poll; throws {@link LeaseLost} when it is gone. A lease
   * taken (or extended) less than {@link LEASE_FENCE_SLACK_MS} ago is the fence itself: nobody else can hold the
   * command while it is live, and it covers the write as well as an extension would, so no store write is needed
   * (the first write of an attempt, right after the lease, is the common case).
   */
  async #fence(a: Attempt): Promise<void> {
    const now = this.options.clock();
    const slack = Math.min(LEASE_FENCE_SLACK_MS, Math.floor(this.options.leaseMs / 10));
    if (a.pending.length === 0 && a.cmd.leaseOwner === this.id && a.cmd.leaseExpiresAt !== null && a.cmd.leaseExpiresAt - now >= this.options.leaseMs - slack) return;
    await this.#flush(a);
    const next = await this.options.store.commands.extendLease(a.cmd.id, this.id, a.cmd.version, now, now + this.options.leaseMs);
    if (!next) throw new LeaseLost();
    a.cmd = next;
  }

  /**
   * The tenant (its FHIR base URL and vendor), read at most once per {@link TENANT_CACHE_MS} per worker instead of
   * once per attempt; concurrent attempts share one read. A failed read is not kept.
   */
  #tenant(id: string): Promise<TenantRecord | undefined> {
    const now = this.options.clock();
    const cached = this.#tenants.get(id);
    if (cached && now - cached.at >= 0 && now - cached.at < TENANT_CACHE_MS) return cached.tenant;
    const tenant = this.options.store.tenants.get(id);
    this.#tenants.set(id, { at: now, tenant });
    tenant.catch(() => this.#tenants.delete(id));
    return tenant;
  }

  // ------------------------------------------------------------------------------------------ the attempt

  async #attempt(a: Attempt): Promise<void> {
    await this.#recordAbandoned(a);
    // A working state after a lease expiry: the previous worker died mid-attempt. Start over, reconciling first.
    if (a.cmd.state !== 'in_flight') await this.#save(a, { state: 'in_flight' }, `resumed_from_${a.cmd.state}`);

    const exhausted = this.#budgetExhausted(a.cmd);
    if (exhausted) {
      a.outcome = 'budget_exhausted';
      return this.#release(a, 'needs_review', exhausted);
    }
    // Found out by the lease itself (same transaction; while the lease is live no sibling can become verified).
    if (a.newerSiblingVerified) {
      a.outcome = 'superseded';
      return this.#release(a, 'superseded', 'newer_generation_verified');
    }
    // Poison protection: a patient whose writes keep failing gets no more EHR calls until an operator looks.
    if (await this.#patientBudgetExhausted(a.cmd)) {
      a.outcome = 'budget_exhausted';
      a.errorCode = 'patient_budget_exhausted';
      return this.#release(a, 'needs_review', 'patient_budget_exhausted');
    }
    const tenant = await this.#tenant(a.cmd.tenantId);
    if (!tenant) {
      a.outcome = 'error';
      return this.#release(a, 'needs_review', 'tenant_missing');
    }
    a.target = { tenantId: tenant.id, baseUrl: tenant.fhirBaseUrl };
    a.profile = this.options.vendorProfile(tenant);

    switch (a.cmd.action) {
      case 'create':
        return this.#create(a);
      case 'update':
      case 'upsert':
        return this.#update(a);
      case 'delete':
        return this.#delete(a);
    }
  }

  /** Attempts that were leased but never recorded (the worker died) get an `abandoned` row, for the timeline. */
  async #recordAbandoned(a: Attempt): Promise<void> {
    if (a.n <= 1) return;
    const recorded = new Set((await this.options.store.commands.attempts(a.cmd.id)).map((row) => row.n));
    for (let n = 1; n < a.n; n++) {
      if (recorded.has(n)) continue;
      // started_at is when the abandonment was noticed: the dead worker's start time was never recorded.
      await this.options.store.commands.appendAttempt({
        commandId: a.cmd.id,
        n,
        worker: null,
        startedAt: a.startedAt,
        endedAt: null,
        outcome: 'abandoned',
        errorCode: 'lease_expired',
        errorCategory: null,
        ehrStatus: null,
        verification: null,
        correlationId: `${a.cmd.id}.${n}`,
        steps: null,
        patientFailure: false,
      });
    }
  }

  #budgetExhausted(cmd: CommandRecord): string | undefined {
    const now = this.options.clock();
    if (cmd.deadlineAt !== null && now > cmd.deadlineAt) return 'deadline_passed';
    // attempts > max here means leases that never settled (a crash loop): poison protection.
    if (cmd.attempts > this.options.maxAttempts) return 'attempts_exhausted';
    if (now - cmd.budgetStartedAt > this.options.maxAgeMs) return 'age_exhausted';
    return undefined;
  }

  /**
   * The per-patient failure budget (DESIGN §5 step 7, poison protection): true when the command's patient has had
   * `patientFailureBudget` patient failures within `patientFailureWindowMs` (counted by the store, so shared by
   * every worker and process and durable across restarts). The count is reused for {@link PATIENT_BUDGET_CACHE_MS}
   * per patient (a burst of leases for one patient costs one query). Commands without a patient are never held.
   *
   * The first attempt after an operator's retry (state reason `operator_retry`) is always let through: the
   * operator decided to send it. The store's count only includes failures after the patient's latest operator
   * retry, so that retry also gives the patient's other commands a fresh budget.
   */
  async #patientBudgetExhausted(cmd: CommandRecord): Promise<boolean> {
    const budget = this.options.patientFailureBudget;
    if (budget === 0 || cmd.patientRef === null) return false;
    const key = patientKey(cmd.tenantId, cmd.patientRef);
    if (cmd.stateReason === 'operator_retry') {
      this.#patientFailures.delete(key);
      return false;
    }
    const now = this.options.clock();
    let cached = this.#patientFailures.get(key);
    if (!cached || now - cached.at < 0 || now - cached.at >= PATIENT_BUDGET_CACHE_MS) {
      if (this.#patientFailures.size >= 10_000) this.#prunePatientFailures(now);
      const count = this.options.store.commands.patientFailures(cmd.tenantId, cmd.patientRef, Math.max(0, now - this.options.patientFailureWindowMs));
      cached = { at: now, count };
      this.#patientFailures.set(key, cached);
      count.catch(() => this.#patientFailures.delete(key));
    }
    return (await cached.count) >= budget;
  }

  /** Drops expired entries of the patient cache (bounded memory with many patients). */
  #prunePatientFailures(now: number): void {
    for (const [key, entry] of this.#patientFailures) {
      if (now - entry.at < 0 || now - entry.at >= PATIENT_BUDGET_CACHE_MS) this.#patientFailures.delete(key);
    }
  }

  /** The EHR id a sibling command of the same business key recorded (newest generation first), if any. */
  async #siblingEhrId(cmd: CommandRecord): Promise<string | null> {
    const siblings = await this.options.store.commands.list({ tenantId: cmd.tenantId, businessKey: cmd.businessKey, limit: 1_000 });
    const withId = siblings.filter((s) => s.id !== cmd.id && s.ehrId !== null).sort((x, y) => y.generation - x.generation);
    return withId[0]?.ehrId ?? null;
  }

  /** True when the EHR's copy carries the content of a newer command of the same business key. */
  async #newerSiblingApplied(cmd: CommandRecord, stored: Readonly<Record<string, unknown>>): Promise<boolean> {
    const siblings = await this.options.store.commands.list({ tenantId: cmd.tenantId, businessKey: cmd.businessKey, limit: 1_000 });
    return siblings.some((s) => s.id !== cmd.id && s.generation > cmd.generation && contentMatches(s.resource, stored, cmd.businessKey));
  }

  // ------------------------------------------------------------------------------------------ EHR lookups

  #target(a: Attempt): EhrTarget {
    if (!a.target) throw new Error('target not set');
    return a.target;
  }

  /** Searches the EHR for the business key (DESIGN §5 step 2). Errors are `unclear`, never thrown. */
  async #findByKey(a: Attempt): Promise<Lookup> {
    try {
      const res = await this.options.client.search(this.#target(a), a.cmd.context, a.cmd.resourceType, businessKeySearch(a.cmd.businessKey), {
        correlationId: a.correlationId,
        ...traceOf(a),
        priority: a.cmd.priority,
      });
      a.step(`search:${res.status}`);
      // Entries of other types (an OperationOutcome, Epic style) and resources without the key are not matches.
      const matches = (res.body.entry ?? [])
        .map((entry) => entry['resource'])
        .filter(
          (r): r is FhirResource =>
            typeof r === 'object' && r !== null && (r as FhirResource).resourceType === a.cmd.resourceType && carriesBusinessKey(r as FhirResource, a.cmd.businessKey),
        );
      if (matches.length === 0) return { kind: 'absent' };
      if (matches.length > 1) return { kind: 'duplicate' };
      return { kind: 'found', resource: matches[0] as FhirResource };
    } catch (err) {
      a.step('search:error');
      return { kind: 'unclear', code: errorCode(err) };
    }
  }

  /** Reads by id. 404/410 is `absent`; other errors are `unclear`. */
  async #readById(a: Attempt, id: string): Promise<Lookup> {
    try {
      const res = await this.options.client.read(this.#target(a), a.cmd.context, a.cmd.resourceType, id, { correlationId: a.correlationId, ...traceOf(a), priority: a.cmd.priority });
      a.step(`read:${res.status}`);
      return { kind: 'found', resource: res.body };
    } catch (err) {
      const code = errorCode(err);
      a.step(code === 'EHR_NOT_FOUND' ? 'read:404' : 'read:error');
      return code === 'EHR_NOT_FOUND' ? { kind: 'absent' } : { kind: 'unclear', code };
    }
  }

  // ------------------------------------------------------------------------------------------ actions

  async #create(a: Attempt, searched = false): Promise<void> {
    // Reconcile before write whenever an earlier attempt may have applied, and always when the EHR has no
    // conditional create (then the search is the only check before a plain create).
    const broken = this.options.unsafeBroken === 'retry-without-verify';
    // Sensitivity testing only: with the key lock off, creates are plain (a vendor without conditional create).
    const plainCreate = broken || this.options.unsafeBroken === 'no-key-lock';
    const mustSearch = !broken && !searched && (a.cmd.attemptSeq > 1 || a.cmd.ehrId !== null || !a.profile.conditionalCreate);
    if (mustSearch) {
      const found = await this.#findByKey(a);
      if (found.kind === 'found') {
        a.outcome = 'found';
        return this.#acknowledge(a, { id: found.resource.id ?? '', versionId: versionOf(found.resource) });
      }
      if (found.kind === 'duplicate') return this.#duplicate(a);
      if (found.kind === 'unclear') {
        a.outcome = 'error';
        a.errorCode = found.code;
        return this.#retryLater(a, 'reconcile_unclear');
      }
    }
    await this.#fence(a);
    const result = await this.options.client.create(this.#target(a), a.cmd.context, a.cmd.resource as FhirResource, {
      // Second line of defence after the per-key lease (HAPI #3141: conditional create alone is not atomic).
      ...(a.profile.conditionalCreate && !plainCreate ? { ifNoneExist: businessKeySearch(a.cmd.businessKey) } : {}),
      correlationId: a.correlationId,
      ...traceOf(a),
      priority: a.cmd.priority,
      prefer: 'return=representation',
    });
    return this.#afterWrite(a, result, 'create');
  }

  async #update(a: Attempt, afterConflict = false): Promise<void> {
    // The target's id: this command's, or one a sibling of the same business key already established. A read by
    // id is strongly consistent, while a search may lag behind a write the EHR just applied.
    const knownId = afterConflict ? null : (a.cmd.ehrId ?? (await this.#siblingEhrId(a.cmd)));
    let current = knownId !== null ? await this.#readById(a, knownId) : await this.#findByKey(a);
    if (knownId !== null && current.kind === 'absent') current = await this.#findByKey(a);
    switch (current.kind) {
      case 'unclear':
        a.outcome = 'error';
        a.errorCode = current.code;
        return this.#retryLater(a, 'reconcile_unclear');
      case 'duplicate':
        return this.#duplicate(a);
      case 'absent':
        if (a.cmd.action === 'upsert') return this.#create(a, true);
        a.outcome = 'error';
        return this.#release(a, 'needs_review', 'not_found_in_ehr');
      case 'found':
        break;
    }
    const resource = current.resource;
    const id = resource.id ?? '';
    a.targetId = id;
    // Already there (an earlier attempt applied, or nothing to change): verify instead of writing again.
    if (contentMatches(a.cmd.resource, resource, a.cmd.businessKey)) {
      a.outcome = 'found';
      return this.#acknowledge(a, { id, versionId: versionOf(resource) });
    }
    // If-Match: the version the change is based on (given at submission or remembered), else the current one.
    const ifMatch = !afterConflict && a.cmd.ehrVersion !== null ? a.cmd.ehrVersion : versionOf(resource);
    await this.#fence(a);
    const result = await this.options.client.update(this.#target(a), a.cmd.context, { ...(a.cmd.resource as FhirResource), id }, {
      ...(ifMatch === null ? {} : { ifMatch }),
      correlationId: a.correlationId,
      ...traceOf(a),
      priority: a.cmd.priority,
      prefer: 'return=representation',
    });
    return this.#afterWrite(a, result, 'update');
  }

  async #delete(a: Attempt): Promise<void> {
    const current = a.cmd.ehrId !== null ? await this.#readById(a, a.cmd.ehrId) : await this.#findByKey(a);
    switch (current.kind) {
      case 'unclear':
        a.outcome = 'error';
        a.errorCode = current.code;
        return this.#retryLater(a, 'reconcile_unclear');
      case 'duplicate':
        return this.#duplicate(a);
      case 'absent':
        // Nothing to delete (never there, or an earlier attempt deleted it): the intent holds.
        a.outcome = 'found';
        a.verification = 'absent';
        this.#defer(a, { state: 'acknowledged', stateReason: null }, 'already_absent');
        return this.#release(a, 'verified', null);
      case 'found':
        break;
    }
    const id = current.resource.id ?? '';
    a.targetId = id;
    await this.#fence(a);
    const result = await this.options.client.delete(this.#target(a), a.cmd.context, a.cmd.resourceType, id, {
      correlationId: a.correlationId,
      ...traceOf(a),
      priority: a.cmd.priority,
    });
    return this.#afterWrite(a, result, 'delete');
  }

  // ------------------------------------------------------------------------------------------ outcomes

  /** DESIGN §5 step 4: the decision table per outcome. */
  async #afterWrite(a: Attempt, result: WriteResult, kind: WriteKind): Promise<void> {
    a.step(`${kind}:${result.status ?? result.outcome}`);
    a.patientFailure = false;
    a.outcome = result.outcome;
    a.ehrStatus = result.status ?? null;
    a.errorCode = result.error?.code ?? null;
    a.errorCategory = result.category ?? null;
    const code = result.error?.code ?? result.outcome;

    switch (result.outcome) {
      case 'applied': {
        if (kind === 'delete') return this.#confirmDeleted(a);
        const ref = writtenRef(result, a.cmd.resourceType);
        // 2xx without a usable id (empty body, no Location): the EHR has it, find it like an unknown outcome.
        if (!ref) return this.#verifyUnknown(a, kind);
        // An upsert's conditional create answered 200: the key existed after all (a search lagging behind the
        // EHR said absent), nothing was written. Carry on as an update of that resource.
        if (kind === 'create' && a.cmd.action === 'upsert' && result.status === 200 && !a.upsertMatched) {
          a.upsertMatched = true;
          a.cmd = { ...a.cmd, ehrId: ref.id };
          return this.#update(a);
        }
        if (kind === 'create' && a.profile.verifyFromCreateResponse === true && this.#verifiedFromResponse(a, result)) {
          return this.#verifiedFromCreate(a, ref);
        }
        return this.#acknowledge(a, ref);
      }
      case 'not_sent':
        if (result.category === 'forbidden-scope') return this.#release(a, 'rejected', code);
        return this.#retryLater(a, code, result.retryAfterMs === undefined ? {} : { delayMs: result.retryAfterMs });
      case 'rate_limited':
        return this.#retryLater(a, 'rate_limited', { countAttempt: false, ...(result.retryAfterMs === undefined ? {} : { delayMs: result.retryAfterMs }) });
      case 'rejected':
        return this.#rejected(a, result, kind);
      case 'unknown':
        return this.#verifyUnknown(a, kind);
    }
  }

  async #rejected(a: Attempt, result: WriteResult, kind: WriteKind): Promise<void> {
    const code = result.error?.code ?? 'rejected';
    const category = result.category;
    // 412/409 on an update: counted against the patient by #conflict, only when it ends in the exception queue.
    if ((category === 'precondition-failed' || category === 'conflict') && kind === 'update') return this.#conflict(a, code);
    if (category === 'not-found' && kind === 'delete') return this.#confirmDeleted(a);
    a.patientFailure = category !== undefined && PATIENT_FAILURE_CATEGORIES.has(category);
    // 412 on a conditional create: several resources carry the business key.
    if (category === 'precondition-failed' && kind === 'create') return this.#duplicate(a);
    // 409 elsewhere is a lock (Accuro scheduler), 401 after the one refresh is an auth problem: both pass.
    if (category === 'conflict' || category === 'auth') return this.#retryLater(a, code);
    // Validation, business rule, scope, not-found: permanent, nothing was written.
    return this.#release(a, 'rejected', code);
  }

  /**
   * 412/409 on an update. `upsert`: re-read and send once more with the current version. `update`: the change was
   * based on a version that is no longer current, so a human decides; the event names the EHR's current version.
   */
  async #conflict(a: Attempt, code: string): Promise<void> {
    await this.#save(a, { state: 'conflict', stateReason: code }, code);
    if (a.cmd.action === 'upsert' && !a.conflictRetried) {
      a.conflictRetried = true;
      await this.#save(a, { state: 'in_flight' }, 'retry_with_current_version');
      return this.#update(a, true);
    }
    const current = a.targetId ? await this.#readById(a, a.targetId) : undefined;
    const currentVersion = current?.kind === 'found' ? versionOf(current.resource) : null;
    a.patientFailure = true;
    // Version ids are not PHI: the event tells the operator what the change was based on and what the EHR has.
    return this.#save(
      a,
      { state: 'needs_review', stateReason: 'version_conflict', leaseOwner: null, leaseExpiresAt: null },
      `version_conflict; based_on=${a.cmd.ehrVersion ?? 'current'}; ehr_current=${currentVersion ?? 'unknown'}`,
    );
  }

  async #duplicate(a: Attempt): Promise<void> {
    a.verification = 'duplicate';
    return this.#release(a, 'needs_review', 'duplicate_in_ehr');
  }

  /**
   * DESIGN §5 step 5: the write was sent and the answer lost. Search for it over the verification window
   * (`verifyPolls` polls, the last at the end of the window, riding out read-after-write lag). Found →
   * acknowledged; absent through the whole window → proven absent, retry (the next attempt reconciles first);
   * lookups failing → unclear, retry with backoff until the budget sends it to the exception queue.
   * Never a blind resend.
   */
  async #verifyUnknown(a: Attempt, kind: WriteKind): Promise<void> {
    await this.#save(a, { state: 'unknown', stateReason: a.errorCode ?? 'EHR_OUTCOME_UNKNOWN' }, a.errorCode ?? 'EHR_OUTCOME_UNKNOWN');
    if (this.options.unsafeBroken === 'retry-without-verify' && kind === 'create') {
      // Deliberately wrong (sensitivity testing only): resend without finding out whether it was applied.
      return this.#retryLater(a, 'broken_blind_retry', { delayMs: 0 });
    }
    const signal = this.#stopping.signal;
    const interval = Math.max(1, Math.floor(this.options.verifyWindowMs / this.options.verifyPolls));
    let unclear = false;
    for (let poll = 1; poll <= this.options.verifyPolls; poll++) {
      await this.options.sleep(interval, signal);
      if (signal.aborted) {
        a.verification = 'unclear';
        return this.#retryLater(a, 'verify_interrupted', { delayMs: 0 });
      }
      await this.#fence(a);
      const probe = kind === 'create' ? await this.#findByKey(a) : await this.#readById(a, a.targetId ?? '');
      if (probe.kind === 'unclear') {
        unclear = true;
        continue;
      }
      if (probe.kind === 'duplicate') return this.#duplicate(a);
      if (kind === 'delete') {
        if (probe.kind === 'absent') return this.#confirmDeleted(a);
        continue;
      }
      if (probe.kind === 'found' && (kind === 'create' || contentMatches(a.cmd.resource, probe.resource, a.cmd.businessKey))) {
        return this.#acknowledge(a, { id: probe.resource.id ?? '', versionId: versionOf(probe.resource) });
      }
    }
    if (unclear) {
      // Sent, and still unclear after the whole window: counts against the patient (an interrupted window does not).
      a.verification = 'unclear';
      a.patientFailure = true;
      return this.#retryLater(a, 'verify_unclear');
    }
    a.verification = 'absent';
    return this.#retryLater(a, 'proven_absent', { delayMs: 0 });
  }

  /**
   * The create's answer is the stored resource (id, resourceType) and carries the business key and every field we
   * sent unchanged: for a vendor whose answer is the stored copy (`verifyFromCreateResponse`), that is the
   * read-back (DESIGN §5 step 6) without a second call.
   */
  #verifiedFromResponse(a: Attempt, result: WriteResult): boolean {
    const body = result.body;
    return body !== undefined && body['resourceType'] === a.cmd.resourceType && typeof body['id'] === 'string' && contentMatches(a.cmd.resource, body, a.cmd.businessKey);
  }

  /** acknowledged → verified from the create's answer: both steps, their events and the timeline row in one commit. */
  async #verifiedFromCreate(a: Attempt, ref: WrittenRef): Promise<void> {
    this.#defer(a, { state: 'acknowledged', stateReason: null, ehrId: ref.id, ehrVersion: ref.versionId ?? a.cmd.ehrVersion }, 'ehr_has_it');
    a.verification = 'verified';
    return this.#save(a, { state: 'verified', stateReason: null, leaseOwner: null, leaseExpiresAt: null }, 'verified_from_create_response');
  }

  /**
   * DESIGN §5 step 6: acknowledged, then read back and compare the business key and the fields we sent. The
   * `acknowledged` step is committed with the outcome of the read-back (one commit; see {@link #defer}).
   */
  async #acknowledge(a: Attempt, ref: WrittenRef): Promise<void> {
    this.#defer(a, { state: 'acknowledged', stateReason: null, ehrId: ref.id, ehrVersion: ref.versionId ?? a.cmd.ehrVersion }, 'ehr_has_it');
    const read = await this.#readById(a, ref.id);
    switch (read.kind) {
      case 'found':
        if (contentMatches(a.cmd.resource, read.resource, a.cmd.businessKey)) {
          a.verification = 'verified';
          return this.#release(a, 'verified', null, { ehrVersion: versionOf(read.resource) ?? a.cmd.ehrVersion });
        }
        a.verification = 'mismatch';
        // A newer generation of the same key may have been applied first (the older create's conditional create
        // then matches the newer content): the EHR is ahead of this command, not wrong.
        if (await this.#newerSiblingApplied(a.cmd, read.resource)) {
          return this.#release(a, 'superseded', 'newer_generation_applied');
        }
        return this.#release(a, 'needs_review', 'verify_mismatch');
      case 'absent':
        // Acknowledged, then gone: someone deleted it, or the EHR lost it. Not ours to recreate blindly.
        a.verification = 'absent';
        return this.#release(a, 'needs_review', 'verify_absent');
      case 'duplicate':
      case 'unclear':
        a.verification = 'unclear';
        return this.#retryLater(a, 'verify_read_failed');
    }
  }

  async #confirmDeleted(a: Attempt): Promise<void> {
    this.#defer(a, { state: 'acknowledged', stateReason: null }, 'ehr_has_it');
    const read = await this.#readById(a, a.targetId ?? a.cmd.ehrId ?? '');
    if (read.kind === 'absent') {
      a.verification = 'verified';
      return this.#release(a, 'verified', null);
    }
    if (read.kind === 'found') {
      a.verification = 'mismatch';
      return this.#release(a, 'needs_review', 'verify_still_present');
    }
    a.verification = 'unclear';
    return this.#retryLater(a, 'verify_read_failed');
  }
}
