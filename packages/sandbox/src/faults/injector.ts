/**
 * The sandbox's seeded, replayable fault injector: turns a fault profile (see `profile.ts` and
 * `docs/faults.md`) into one {@link FaultPlan} per FHIR request.
 *
 * Replay rule. Every fault has its own sfc32 stream, seeded from `(seed, fault id)`. On every `plan()` call each
 * per-request fault draws exactly {@link DRAWS_PER_FAULT} numbers from its stream (one for "does it fire?", one for
 * its magnitude: jitter or Retry-After), whether or not it matches the request, is inside its window, or is
 * pre-empted by another fault. Hence a fault's decision for the n-th request depends only on the seed, its id, n
 * and that request's own attributes:
 * - replaying the same requests in the same order with the same seed and profile gives the same plans;
 * - a request of another type, a fault that does not match, or an edit of *another* fault never moves this
 *   fault's decisions (they would, with one shared stream or with draws taken only when needed).
 *
 * The injector is pure: no I/O, no timers, no `Math.random`. The server owns the clock and does the waiting.
 */
import { TetherError } from '@tether/core';
import { z } from 'zod';

import { WRITE_INTERACTIONS } from '../interactions.js';
import type { Interaction } from '../interactions.js';
import { isRequestFault, parseFaultProfile } from './profile.js';
import type {
  Fault,
  FaultProfile,
  FaultWindow,
  RequestFault,
  SchemaDriftFault,
  VisibilityLagFault,
} from './profile.js';
import { createRng, MAX_SEED, uniformInt } from './rng.js';
import type { Rng } from './rng.js';
import type {
  AfterFault,
  BeforeFault,
  FaultInjector,
  FaultPlan,
  FaultRequestInfo,
  FaultStats,
  RejectedElementInfo,
  VisibilityLagInfo,
} from './types.js';

/**
 * Default seed: 1. Fixed rather than random so that a run without an explicit seed is still replayable; pass
 * another seed to explore other fault schedules.
 */
export const DEFAULT_FAULT_SEED = 1;

/** Default profile: no faults (every plan is "do nothing"). */
export const DEFAULT_FAULT_PROFILE: FaultProfile = Object.freeze({ faults: Object.freeze([]) });

/** Default clock: `Date.now` (epoch milliseconds). Only used to default `startedAt`. */
export const DEFAULT_FAULT_CLOCK: () => number = () => Date.now();

/** Random numbers each per-request fault draws on every `plan()` call, whatever the outcome. */
export const DRAWS_PER_FAULT = 2;

/** Options of {@link createFaultInjector}. Validated at once; unknown keys are rejected. */
export interface FaultInjectorOptions {
  /** The profile, as parsed JSON; validated like `setProfile`. Default {@link DEFAULT_FAULT_PROFILE} (no faults). */
  readonly profile?: unknown;
  /** Unsigned 32-bit integer (0 to 4,294,967,295). Default {@link DEFAULT_FAULT_SEED}. */
  readonly seed?: number;
  /**
   * Returns the time in epoch milliseconds. Only used to default `startedAt`: `plan()` and the other queries take
   * `now` from the server so that the server's clock is the single source of time. Default {@link DEFAULT_FAULT_CLOCK}.
   */
  readonly clock?: () => number;
  /**
   * Sandbox start in epoch milliseconds; `window.startMs`/`endMs` are relative to it. Kept across `setProfile`.
   * Default: `clock()` when the injector is created.
   */
  readonly startedAt?: number;
}

/** The injector returned by {@link createFaultInjector}: the contract plus the optional lookups it implements. */
export interface SeededFaultInjector extends FaultInjector {
  /** The seed in use. */
  readonly seed: number;
  /** Sandbox start in epoch milliseconds. */
  readonly startedAt: number;
  profile(): FaultProfile;
  visibilityLag(resourceType: string, now: number): VisibilityLagInfo | undefined;
  rejectedElementFaults(resourceType: string, now: number): readonly RejectedElementInfo[];
  /**
   * Counts a lag or drift hit. `faultId` should be an id from {@link SeededFaultInjector.visibilityLag} or
   * {@link SeededFaultInjector.rejectedElementFaults}. Leniencies, so that counting never fails a request: the kind
   * names `visibility-lag` and `schema-drift` (when no fault has that id) count against the first active fault of
   * that kind; any other unknown id is counted under kind `unknown`.
   */
  record(faultId: string): void;
}

const OptionsSchema = z.strictObject({
  profile: z.unknown().optional(),
  seed: z.number().int().min(0).max(MAX_SEED).optional(),
  clock: z
    .custom<() => number>((v) => typeof v === 'function', { error: 'must be a function returning epoch milliseconds' })
    .optional(),
  startedAt: z.number().optional(),
});

// ---------------------------------------------------------------------------------------------------------------
// Compiled profile: everything `plan()` needs, precomputed so that a request costs two draws and a few set
// lookups per fault.

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

/** Running counter of one fault id (kept across `setProfile`). */
interface StatEntry {
  kind: string;
  count: number;
}

interface CompiledRequestFault {
  readonly fault: RequestFault;
  /** Position in the profile, to list `fired` in profile order. */
  readonly order: number;
  readonly rng: Rng;
  readonly stat: StatEntry;
  /** Active for `from <= now < until` (absolute epoch ms, already combining startMs/endMs and from/until). */
  readonly activeFrom: number;
  readonly activeUntil: number;
  readonly methods: ReadonlySet<string> | undefined;
  readonly resourceTypes: ReadonlySet<string> | undefined;
  readonly interactions: ReadonlySet<Interaction> | undefined;
  /** `error-after` and `commit-then-drop` only make sense when something was written. */
  readonly writesOnly: boolean;
}

interface CompiledTimedFault<F extends Fault> {
  readonly fault: F;
  readonly activeFrom: number;
  readonly activeUntil: number;
}

interface CompiledProfile {
  readonly profile: FaultProfile;
  readonly requestFaults: readonly CompiledRequestFault[];
  readonly lags: readonly (CompiledTimedFault<VisibilityLagFault> & { readonly resourceTypes?: ReadonlySet<string> })[];
  /** Counters of the active faults, by id. */
  readonly statsById: ReadonlyMap<string, StatEntry>;
  /** Counter of the first active fault of each kind, for `record(kind)`. */
  readonly firstOfKind: ReadonlyMap<string, StatEntry>;
  /** Schema-drift entries by resource type (the first segment of each element path). */
  readonly drift: ReadonlyMap<string, readonly (CompiledTimedFault<SchemaDriftFault> & { readonly element: string })[]>;
}

/** The plan of a request no fault touches; shared because it is immutable and the common case. */
const NO_FAULTS: FaultPlan = Object.freeze({ delayMs: 0, fired: Object.freeze([]) });
const NO_ELEMENTS: readonly string[] = Object.freeze([]);
const NO_ELEMENT_FAULTS: readonly RejectedElementInfo[] = Object.freeze([]);
const RESET: BeforeFault = Object.freeze({ kind: 'reset' });
const UNAUTHORIZED: BeforeFault = Object.freeze({ kind: 'unauthorized' });
const DROP: AfterFault = Object.freeze({ kind: 'drop' });

/** Absolute activity bounds of a window: the intersection of the relative and the ISO bounds that are given. */
function windowBounds(window: FaultWindow | undefined, startedAt: number): { activeFrom: number; activeUntil: number } {
  let activeFrom = -Infinity;
  let activeUntil = Infinity;
  if (window?.startMs !== undefined) activeFrom = Math.max(activeFrom, startedAt + window.startMs);
  if (window?.from !== undefined) activeFrom = Math.max(activeFrom, Date.parse(window.from));
  if (window?.endMs !== undefined) activeUntil = Math.min(activeUntil, startedAt + window.endMs);
  if (window?.until !== undefined) activeUntil = Math.min(activeUntil, Date.parse(window.until));
  return { activeFrom, activeUntil };
}

const toSet = <T>(values: readonly T[] | undefined): ReadonlySet<T> | undefined =>
  values === undefined ? undefined : new Set(values);

function isActive(c: { readonly activeFrom: number; readonly activeUntil: number }, now: number): boolean {
  return now >= c.activeFrom && now < c.activeUntil;
}

function matches(c: CompiledRequestFault, info: FaultRequestInfo): boolean {
  if (c.writesOnly && !WRITE_INTERACTIONS.has(info.interaction)) return false;
  if (c.methods !== undefined && !c.methods.has(info.method.toUpperCase())) return false;
  if (c.resourceTypes !== undefined && (info.resourceType === undefined || !c.resourceTypes.has(info.resourceType))) {
    return false;
  }
  if (c.interactions !== undefined && !c.interactions.has(info.interaction)) return false;
  return isActive(c, info.now);
}

/** The `before` part of a plan for a before fault; `magnitude` is the fault's second draw of this request. */
function beforeFaultOf(
  f: Extract<RequestFault, { kind: 'reset' | 'error-before' | 'rate-limit' | 'early-401' }>,
  magnitude: number,
): BeforeFault {
  switch (f.kind) {
    case 'reset':
      return RESET;
    case 'early-401':
      return UNAUTHORIZED;
    case 'error-before':
      return { kind: 'status', status: f.status };
    case 'rate-limit':
      return {
        kind: 'rate-limit',
        retryAfterSeconds: uniformInt(magnitude, f.retryAfterSeconds.min, f.retryAfterSeconds.max),
      };
  }
}

/**
 * Creates a fault injector.
 *
 * @param options - see {@link FaultInjectorOptions}; every field is optional.
 * @throws TetherError `CONFIG_INVALID` for bad options, `FAULT_PROFILE_INVALID` for a bad profile.
 *
 * @example
 * ```ts
 * const faults = createFaultInjector({ profile: JSON.parse(await readFile('faults/chaos.json', 'utf8')), seed: 7 });
 * const plan = faults.plan({ method: 'POST', resourceType: 'Observation', interaction: 'create', now: Date.now() });
 * ```
 */
export function createFaultInjector(options: FaultInjectorOptions = {}): SeededFaultInjector {
  const parsedOptions = OptionsSchema.safeParse(options);
  if (!parsedOptions.success) {
    const problems = parsedOptions.error.issues.map((i) => `${i.path.join('.') || '(options)'}: ${i.message}`);
    throw new TetherError('CONFIG_INVALID', `Invalid fault injector options: ${problems.join('; ')}`);
  }
  const seed = parsedOptions.data.seed ?? DEFAULT_FAULT_SEED;
  const startedAt = parsedOptions.data.startedAt ?? (parsedOptions.data.clock ?? DEFAULT_FAULT_CLOCK)();
  if (!Number.isFinite(startedAt)) {
    throw new TetherError(
      'CONFIG_INVALID',
      'Invalid fault injector options: clock must return finite epoch milliseconds',
    );
  }

  // Streams and counters outlive profiles: `setProfile` keeps both for every id that stays, so changing the
  // profile mid-run neither resets the statistics nor replays decisions already made.
  const streams = new Map<string, Rng>();
  const byFault = new Map<string, StatEntry>();
  const byKind = new Map<string, number>();
  let requestsSeen = 0;
  let total = 0;

  const statFor = (id: string, kind: string): StatEntry => {
    let entry = byFault.get(id);
    if (entry === undefined) {
      entry = { kind, count: 0 };
      byFault.set(id, entry);
    }
    entry.kind = kind;
    if (!byKind.has(kind)) byKind.set(kind, 0);
    return entry;
  };
  const count = (entry: StatEntry): void => {
    entry.count += 1;
    byKind.set(entry.kind, (byKind.get(entry.kind) ?? 0) + 1);
    total += 1;
  };

  const compile = (profile: FaultProfile): CompiledProfile => {
    const requestFaults: CompiledRequestFault[] = [];
    const lags: CompiledProfile['lags'][number][] = [];
    const drift = new Map<string, (CompiledTimedFault<SchemaDriftFault> & { element: string })[]>();
    const statsById = new Map<string, StatEntry>();
    const firstOfKind = new Map<string, StatEntry>();
    profile.faults.forEach((fault, order) => {
      const stat = statFor(fault.id, fault.kind);
      statsById.set(fault.id, stat);
      if (!firstOfKind.has(fault.kind)) firstOfKind.set(fault.kind, stat);
      const bounds = windowBounds(fault.window, startedAt);
      if (isRequestFault(fault)) {
        let rng = streams.get(fault.id);
        if (rng === undefined) {
          rng = createRng(seed, fault.id);
          streams.set(fault.id, rng);
        }
        requestFaults.push({
          fault,
          order,
          rng,
          stat,
          ...bounds,
          methods: toSet(fault.match?.methods),
          resourceTypes: toSet(fault.match?.resourceTypes),
          interactions: toSet(fault.match?.interactions),
          writesOnly: fault.kind === 'error-after' || fault.kind === 'commit-then-drop',
        });
      } else if (fault.kind === 'visibility-lag') {
        const resourceTypes = toSet(fault.match?.resourceTypes);
        lags.push({ fault, ...bounds, ...(resourceTypes && { resourceTypes }) });
      } else {
        for (const element of fault.elements) {
          // The element path starts with its resource type (checked by the schema).
          const resourceType = element.slice(0, element.indexOf('.'));
          const list = drift.get(resourceType) ?? [];
          list.push({ fault, ...bounds, element });
          drift.set(resourceType, list);
        }
      }
    });
    return { profile, requestFaults, lags, drift, statsById, firstOfKind };
  };

  let active = compile(
    parsedOptions.data.profile === undefined ? DEFAULT_FAULT_PROFILE : parseFaultProfile(parsedOptions.data.profile),
  );

  const plan = (info: FaultRequestInfo): FaultPlan => {
    requestsSeen += 1;
    const faults = active.requestFaults;
    if (faults.length === 0) return NO_FAULTS;

    let delayMs = 0;
    /** Faults that shape the plan: every delay that fired, plus the winners chosen below. */
    const shaping: CompiledRequestFault[] = [];
    let before: BeforeFault | undefined;
    let beforeBy: CompiledRequestFault | undefined;
    let revokeBy: CompiledRequestFault | undefined;
    let after: AfterFault | undefined;
    let afterBy: CompiledRequestFault | undefined;

    for (const c of faults) {
      // Always exactly DRAWS_PER_FAULT draws, before any early exit (see the replay rule at the top).
      const gate = c.rng.next();
      const magnitude = c.rng.next();
      if (!(gate < c.fault.probability) || !matches(c, info)) continue;
      const f = c.fault;
      switch (f.kind) {
        case 'latency':
          delayMs += f.fixedMs + uniformInt(magnitude, 0, f.jitterMs);
          shaping.push(c);
          break;
        case 'timeout':
          delayMs += f.delayMs;
          shaping.push(c);
          break;
        case 'reset':
        case 'error-before':
        case 'rate-limit':
        case 'early-401':
          if (beforeBy === undefined) {
            beforeBy = c;
            before = beforeFaultOf(f, magnitude);
          }
          break;
        case 'revoke-token':
          revokeBy ??= c;
          break;
        case 'error-after':
        case 'commit-then-drop':
          if (afterBy === undefined) {
            afterBy = c;
            after = f.kind === 'commit-then-drop' ? DROP : { kind: 'status', status: f.status };
          }
          break;
      }
    }

    // Precedence. A `before` fault means the request is never processed, so neither a revocation nor an `after`
    // fault could be observed; a revoked token makes the request itself fail with 401, so an `after` fault could
    // not be observed either. Faults that cannot be observed are not part of the plan and are not counted.
    if (beforeBy !== undefined) {
      revokeBy = undefined;
      afterBy = undefined;
    } else if (revokeBy !== undefined) {
      afterBy = undefined;
    }

    if (beforeBy !== undefined) shaping.push(beforeBy);
    if (revokeBy !== undefined) shaping.push(revokeBy);
    if (afterBy !== undefined) shaping.push(afterBy);
    if (shaping.length === 0) return NO_FAULTS;
    if (shaping.length > 1) shaping.sort((a, b) => a.order - b.order);
    const fired = shaping.map((c) => {
      count(c.stat);
      return c.fault.id;
    });

    const result: Mutable<FaultPlan> = { delayMs, fired };
    if (beforeBy !== undefined) result.before = before;
    if (revokeBy !== undefined) result.revokeToken = true;
    if (afterBy !== undefined) result.after = after;
    return result;
  };

  const visibilityLag = (resourceType: string, now: number): VisibilityLagInfo | undefined => {
    // Several lag faults may apply; the longest wins (lags do not add up: a resource is either visible or not).
    let best: VisibilityLagFault | undefined;
    for (const c of active.lags) {
      if (c.resourceTypes !== undefined && !c.resourceTypes.has(resourceType)) continue;
      if (!isActive(c, now)) continue;
      if (best === undefined || c.fault.lagMs > best.lagMs) best = c.fault;
    }
    return best === undefined ? undefined : { faultId: best.id, lagMs: best.lagMs };
  };

  const rejectedElementFaults = (resourceType: string, now: number): readonly RejectedElementInfo[] => {
    const entries = active.drift.get(resourceType);
    if (entries === undefined) return NO_ELEMENT_FAULTS;
    const out: RejectedElementInfo[] = [];
    const seen = new Set<string>();
    for (const c of entries) {
      if (!isActive(c, now) || seen.has(c.element)) continue;
      seen.add(c.element);
      out.push({ faultId: c.fault.id, element: c.element });
    }
    return out.length === 0 ? NO_ELEMENT_FAULTS : out;
  };

  return Object.freeze({
    seed,
    startedAt,
    plan,
    visibilityLag,
    visibilityLagMs: (resourceType: string, now: number): number => visibilityLag(resourceType, now)?.lagMs ?? 0,
    rejectedElementFaults,
    rejectedElements: (resourceType: string, now: number): readonly string[] => {
      const faults = rejectedElementFaults(resourceType, now);
      return faults.length === 0 ? NO_ELEMENTS : faults.map((f) => f.element);
    },
    setProfile: (profile: unknown): void => {
      // Parse first: an invalid profile throws here and the active one stays in place.
      active = compile(parseFaultProfile(profile));
    },
    profile: (): FaultProfile => active.profile,
    stats: (): FaultStats => {
      const faults: Record<string, { kind: string; count: number }> = {};
      for (const [id, entry] of byFault) faults[id] = { kind: entry.kind, count: entry.count };
      return {
        seed,
        requestsSeen,
        total,
        byFault: faults,
        byKind: Object.fromEntries(byKind),
      };
    },
    record: (faultId: string): void => {
      count(
        active.statsById.get(faultId) ??
          // Leniency for callers that only know the kind (`visibilityLagMs`/`rejectedElements` do not name the
          // fault): count the hit against the first fault of that kind in the active profile.
          (faultId === 'visibility-lag' || faultId === 'schema-drift' ? active.firstOfKind.get(faultId) : undefined) ??
          // An id the injector does not know is still counted (under kind "unknown") rather than dropped or
          // thrown: `record` runs inside request handling, and a visible oddity in the stats beats a failed request.
          byFault.get(faultId) ??
          statFor(faultId, 'unknown'),
      );
    },
  });
}
