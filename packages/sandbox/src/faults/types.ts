import type { Interaction } from '../interactions.js';

/**
 * Contract between the sandbox HTTP server and the fault injector.
 *
 * For every FHIR request the server builds a {@link FaultRequestInfo} and asks the injector for a
 * {@link FaultPlan} *before* doing anything else; it then carries the plan out:
 * 1. wait `delayMs` (latency and "delay beyond the client's timeout" faults);
 * 2. if `before` is set, answer (or reset) without processing the request: nothing is applied;
 * 3. otherwise authenticate and process; if `revokeToken`, revoke the presented token first (so the request
 *    itself fails with 401 and so does every later use of that token);
 * 4. if `after` is set and the request was processed: `drop` destroys the socket without any response
 *    (commit-then-drop), `status` answers that status although the write was applied.
 */
export interface FaultRequestInfo {
  /** HTTP method, upper case. */
  readonly method: string;
  /** Resource type from the URL, if any (`undefined` for system-level requests such as a transaction). */
  readonly resourceType: string | undefined;
  readonly interaction: Interaction;
  /** Epoch milliseconds (from the sandbox clock). */
  readonly now: number;
}

export type BeforeFault =
  | { readonly kind: 'reset' }
  | { readonly kind: 'status'; readonly status: 500 | 502 | 503 | 504 }
  | { readonly kind: 'rate-limit'; readonly retryAfterSeconds: number }
  | { readonly kind: 'unauthorized' };

export type AfterFault = { readonly kind: 'drop' } | { readonly kind: 'status'; readonly status: 500 | 502 | 503 | 504 };

export interface FaultPlan {
  /** Milliseconds to wait before handling the request (0 = none). */
  readonly delayMs: number;
  readonly before?: BeforeFault;
  readonly after?: AfterFault;
  /** Revoke the presented access token before processing. */
  readonly revokeToken?: boolean;
  /** Ids of the faults that fired for this request (already counted in the stats). */
  readonly fired: readonly string[];
}

/** What the server asks the injector besides per-request plans. */
export interface FaultInjector {
  plan(info: FaultRequestInfo): FaultPlan;
  /**
   * Read-after-write visibility lag in ms at time `now` for `resourceType`: resources created or updated less
   * than this long ago are invisible to *search* (reads by id still see them). 0 = no lag.
   */
  visibilityLagMs(resourceType: string, now: number): number;
  /**
   * Schema drift: element names (FHIRPath-like `Observation.note`, `Patient.extension`) that the server
   * rejects with 422 on writes of `resourceType` at time `now`. Empty = none.
   */
  rejectedElements(resourceType: string, now: number): readonly string[];
  /** Replaces the profile at runtime (validated; throws TetherError FAULT_PROFILE_INVALID). Stats are kept. */
  setProfile(profile: unknown): void;
  /** The active profile, as JSON. */
  profile(): unknown;
  /** Counts per fault id and kind, for `GET /_admin/faults/stats`. */
  stats(): FaultStats;
  /** Counts a fault that fired outside `plan` (visibility lag hits, schema-drift rejections). */
  record(faultId: string): void;
  /**
   * Optional (additive): the answer of {@link FaultInjector.visibilityLagMs} together with the id of the fault that
   * imposes it, so the server knows which id to `record` when the lag actually hides a resource.
   * `undefined` = no lag.
   */
  visibilityLag?(resourceType: string, now: number): VisibilityLagInfo | undefined;
  /**
   * Optional (additive): the answer of {@link FaultInjector.rejectedElements} with the id of the schema-drift fault
   * behind each element, so the server knows which id to `record` when it rejects a write.
   */
  rejectedElementFaults?(resourceType: string, now: number): readonly RejectedElementInfo[];
}

/** The active visibility lag for a resource type and the fault that imposes it. */
export interface VisibilityLagInfo {
  readonly faultId: string;
  /** Milliseconds (> 0). */
  readonly lagMs: number;
}

/** One element rejected by schema drift and the fault that rejects it. */
export interface RejectedElementInfo {
  readonly faultId: string;
  /** FHIRPath-like element name, e.g. `Observation.note`. */
  readonly element: string;
}

export interface FaultStats {
  readonly seed: number;
  readonly requestsSeen: number;
  readonly total: number;
  readonly byFault: Readonly<Record<string, { readonly kind: string; readonly count: number }>>;
  readonly byKind: Readonly<Record<string, number>>;
}
