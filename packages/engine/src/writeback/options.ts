import { randomBytes } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import { z } from 'zod';
import { TetherError } from '@tether/core';
import type { EhrClient } from '../client/index.js';
import type { Store, TenantRecord } from '../store/index.js';
import type { WritebackEvent } from './events.js';

/** Default commands one worker processes at the same time. */
export const DEFAULT_WORKER_CONCURRENCY = 4;
/** Default wait between two lease queries when nothing was due (milliseconds). */
export const DEFAULT_POLL_INTERVAL_MS = 500;
/**
 * Default visibility timeout (milliseconds). A command whose worker dies becomes leasable this long after the
 * last lease extension; workers extend it before every EHR write and every verification poll.
 */
export const DEFAULT_LEASE_MS = 30_000;
/** Default attempts per command before the exception queue (a 429 does not count). */
export const DEFAULT_COMMAND_MAX_ATTEMPTS = 8;
/** Default age of a command (from submission or the last operator retry) before the exception queue (ms): 24 h. */
export const DEFAULT_MAX_AGE_MS = 24 * 3_600_000;
/**
 * Default verification window (milliseconds): after an unknown outcome, how long the EHR is searched for the
 * business key before the write counts as proven absent. Must exceed the vendor's read-after-write lag.
 */
export const DEFAULT_VERIFY_WINDOW_MS = 5_000;
/** Default searches spread evenly over the verification window (the last one at its end). */
export const DEFAULT_VERIFY_POLLS = 5;
/** Default backoff base (milliseconds): retry n waits between half and all of `base × 2^(n-1)`. */
export const DEFAULT_RETRY_BACKOFF_BASE_MS = 1_000;
/** Default cap of one backoff (milliseconds): 5 minutes. */
export const DEFAULT_RETRY_BACKOFF_MAX_MS = 300_000;
/**
 * Default per-patient failure budget (poison protection): once a patient's commands have had this many patient
 * failures within {@link DEFAULT_PATIENT_FAILURE_WINDOW_MS}, its next commands go to the exception queue unsent.
 */
export const DEFAULT_PATIENT_FAILURE_BUDGET = 10;
/** Default window of the per-patient failure budget (milliseconds): 1 hour. */
export const DEFAULT_PATIENT_FAILURE_WINDOW_MS = 3_600_000;
/**
 * How long a worker reuses a patient's failure count (milliseconds): a burst of leases for one patient costs one
 * store query, and a patient's budget can be overrun by what is already in flight meanwhile (see docs/writeback.md).
 */
export const PATIENT_BUDGET_CACHE_MS = 1_000;

/**
 * A lease taken or extended less than this long ago (milliseconds) serves as the fence before an EHR write: the
 * write is then covered for at least `leaseMs` minus this, as good as an extension, without a store write.
 */
export const LEASE_FENCE_SLACK_MS = 1_000;

/** What the worker needs to know about a vendor (a slice of the future vendor profile, DESIGN §8). */
export interface WritebackVendorProfile {
  /**
   * The EHR honours `If-None-Exist` (FHIR conditional create). When false (Epic), a create is always preceded by a
   * business-key search, and the per-key lease is the only protection against a concurrent duplicate.
   * Default true.
   */
  readonly conditionalCreate: boolean;
  /**
   * The EHR answers a create (`Prefer: return=representation`) with the resource exactly as it stored it. When
   * true, a create whose answer carries the resource with an id, the business key and every field we sent
   * unchanged is verified from that answer, and the read-back (a second EHR call) is skipped. Only for vendors
   * whose create answer is the stored copy (not an echo of the request, not a pre-normalisation copy). Default
   * false when a profile leaves it out; true in {@link DEFAULT_VENDOR_PROFILE} (vendor `generic`: generic FHIR R4
   * and the sandbox).
   */
  readonly verifyFromCreateResponse?: boolean;
}

/** The generic FHIR R4 profile (and the sandbox's): conditional create, verification from the create answer. */
export const DEFAULT_VENDOR_PROFILE: WritebackVendorProfile = Object.freeze({ conditionalCreate: true, verifyFromCreateResponse: true });

/**
 * The worker's default `vendorProfile`: {@link DEFAULT_VENDOR_PROFILE} for tenants of vendor `generic` (generic FHIR
 * R4, the sandbox); for any other vendor, conditional create but a read-back after every create, until that
 * vendor's profile says its create answer is the stored copy.
 */
export function defaultVendorProfile(tenant: Pick<TenantRecord, 'vendor'>): WritebackVendorProfile {
  return tenant.vendor === 'generic' ? DEFAULT_VENDOR_PROFILE : READ_BACK_PROFILE;
}
const READ_BACK_PROFILE: WritebackVendorProfile = Object.freeze({ conditionalCreate: true, verifyFromCreateResponse: false });

const ms = z.number().int().min(1).max(7 * 24 * 3_600_000);

const schema = z
  .object({
    workerId: z.string().regex(/^[A-Za-z0-9._:-]{1,64}$/).optional(),
    concurrency: z.number().int().min(1).max(1_000).default(DEFAULT_WORKER_CONCURRENCY),
    pollIntervalMs: ms.default(DEFAULT_POLL_INTERVAL_MS),
    leaseMs: ms.default(DEFAULT_LEASE_MS),
    maxAttempts: z.number().int().min(1).max(1_000).default(DEFAULT_COMMAND_MAX_ATTEMPTS),
    maxAgeMs: ms.default(DEFAULT_MAX_AGE_MS),
    verifyWindowMs: ms.default(DEFAULT_VERIFY_WINDOW_MS),
    verifyPolls: z.number().int().min(1).max(100).default(DEFAULT_VERIFY_POLLS),
    backoffBaseMs: ms.default(DEFAULT_RETRY_BACKOFF_BASE_MS),
    backoffMaxMs: ms.default(DEFAULT_RETRY_BACKOFF_MAX_MS),
    /** Patient failures allowed per (tenant, patient) within `patientFailureWindowMs`; 0 switches the budget off. */
    patientFailureBudget: z.number().int().min(0).max(1_000_000).default(DEFAULT_PATIENT_FAILURE_BUDGET),
    patientFailureWindowMs: ms.default(DEFAULT_PATIENT_FAILURE_WINDOW_MS),
    tenantId: z.string().min(1).max(255).optional(),
    /**
     * Sensitivity testing only (`npm run chaos -- --broken ...`): switches on a deliberately WRONG behaviour so
     * that the chaos harness can prove its checker notices. `retry-without-verify`: an unknown outcome is resent
     * at once as a plain create, without reconciling, searching or conditional create. `no-key-lock`: the lease
     * ignores the per-business-key exclusivity (commands of one key in flight at once, from one worker or several)
     * and creates are plain (no `If-None-Exist`, as on a vendor without conditional create, where the per-key
     * lease is the only protection). Never set in production.
     */
    unsafeBroken: z.enum(['retry-without-verify', 'no-key-lock']).optional(),
  })
  .strict();

/**
 * Options of {@link WritebackWorker}. Times in milliseconds.
 *
 * - `store`, `client`: required seams.
 * - `workerId`: lease owner id, default `worker-<random>`.
 * - `concurrency`: commands in progress at once, default {@link DEFAULT_WORKER_CONCURRENCY}.
 * - `pollIntervalMs`: idle wait between lease queries, default {@link DEFAULT_POLL_INTERVAL_MS}.
 * - `leaseMs`: visibility timeout, default {@link DEFAULT_LEASE_MS}. Keep it well above `verifyWindowMs` plus the
 *   client's `deadlineMs`.
 * - `maxAttempts`, `maxAgeMs`: budgets, defaults {@link DEFAULT_COMMAND_MAX_ATTEMPTS}, {@link DEFAULT_MAX_AGE_MS}.
 * - `verifyWindowMs`, `verifyPolls`: unknown-outcome verification, defaults {@link DEFAULT_VERIFY_WINDOW_MS},
 *   {@link DEFAULT_VERIFY_POLLS}.
 * - `backoffBaseMs`, `backoffMaxMs`: retry backoff, defaults {@link DEFAULT_RETRY_BACKOFF_BASE_MS}, {@link DEFAULT_RETRY_BACKOFF_MAX_MS}.
 * - `patientFailureBudget`, `patientFailureWindowMs`: poison protection per patient, defaults
 *   {@link DEFAULT_PATIENT_FAILURE_BUDGET} failures within {@link DEFAULT_PATIENT_FAILURE_WINDOW_MS} per (tenant,
 *   patient). A command whose patient has spent it goes to `needs_review` (`patient_budget_exhausted`) without
 *   being sent. Counted from the store (shared by every process), cached per worker for
 *   {@link PATIENT_BUDGET_CACHE_MS}. What counts: see docs/writeback.md#budgets. 0 switches the budget off.
 * - `tenantId`: only lease this tenant's commands (default: all).
 * - `vendorProfile`: per tenant, default {@link defaultVendorProfile}.
 * - `clock`, `sleep`, `random`: time and jitter seams (defaults `Date.now`, a timer, `Math.random`).
 * - `onEvent`: lifecycle events (ids and states only, never PHI).
 */
export type WritebackWorkerOptions = z.input<typeof schema> & {
  readonly store: Store;
  readonly client: EhrClient;
  readonly vendorProfile?: (tenant: TenantRecord) => WritebackVendorProfile;
  readonly clock?: () => number;
  /** Resolves after `ms`, or early (without throwing) when `signal` aborts. */
  readonly sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
  readonly random?: () => number;
  readonly onEvent?: (event: WritebackEvent) => void;
};

export type ResolvedWorkerOptions = Readonly<z.output<typeof schema>> & {
  readonly workerId: string;
  readonly store: Store;
  readonly client: EhrClient;
  readonly vendorProfile: (tenant: TenantRecord) => WritebackVendorProfile;
  readonly clock: () => number;
  readonly sleep: (ms: number, signal: AbortSignal) => Promise<void>;
  readonly random: () => number;
  readonly onEvent: (event: WritebackEvent) => void;
};

/** A sleep that ends early, quietly, when the signal aborts. */
export async function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return;
  await delay(ms, undefined, { signal }).catch(() => {});
}

export function resolveWorkerOptions(input: WritebackWorkerOptions): ResolvedWorkerOptions {
  const { store, client, vendorProfile, clock, sleep, random, onEvent, ...plain } = input;
  const parsed = schema.safeParse(plain);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new TetherError('CONFIG_INVALID', `Invalid write-back worker option '${issue?.path.join('.') ?? ''}': ${issue?.message ?? ''}`);
  }
  if (!store || !client) throw new TetherError('CONFIG_INVALID', 'The write-back worker needs a store and an EHR client.');
  return Object.freeze({
    ...parsed.data,
    workerId: parsed.data.workerId ?? `worker-${randomBytes(4).toString('hex')}`,
    store,
    client,
    vendorProfile: vendorProfile ?? defaultVendorProfile,
    clock: clock ?? Date.now,
    sleep: sleep ?? abortableSleep,
    random: random ?? Math.random,
    onEvent: onEvent ?? (() => {}),
  });
}

/**
 * Backoff before retry `n` (1 = first): "equal jitter", uniform in `[c/2, c)` with `c = min(max, base × 2^(n-1))`.
 * Unlike full jitter it never draws ~0, so a command that keeps failing cannot spin.
 */
export function retryDelay(n: number, base: number, max: number, random: () => number): number {
  const ceiling = Math.min(max, base * 2 ** Math.min(Math.max(n - 1, 0), 30));
  return Math.floor(ceiling / 2 + (Math.min(Math.max(random(), 0), 1) * ceiling) / 2);
}
