/**
 * Fault profiles: the JSON document that says which faults the sandbox injects, how often, on which requests and
 * when. `docs/faults.md` is the operator's reference; this module is the source of truth for the format.
 *
 * A profile is validated with a strict zod schema (unknown keys are errors, so a typo such as `"probabilty"`
 * cannot silently disable a fault) and then *normalized*: defaults are filled in, the `storm` shorthand becomes a
 * `rate-limit` fault with a window, `retryAfterSeconds` always becomes a `{ min, max }` range and HTTP methods are
 * upper-cased. The normalized profile is itself a valid profile, so `GET /_admin/faults` output can be edited and
 * posted back unchanged.
 */
import { TetherError } from '@tether/core';
import { z } from 'zod';

import { Interaction, WRITE_INTERACTIONS } from '../interactions.js';

/** The fault kinds of a normalized profile. */
export const FaultKind = {
  /** Adds `fixedMs` + uniform(0..`jitterMs`) to the plan's delay. */
  Latency: 'latency',
  /** Adds `delayMs` (meant to exceed the client's timeout) to the plan's delay. */
  Timeout: 'timeout',
  /** Resets the connection before the request is processed. */
  Reset: 'reset',
  /** Answers a 5xx before the request is processed (nothing applied). */
  ErrorBefore: 'error-before',
  /** Applies a write, then answers a 5xx. Writes only. */
  ErrorAfter: 'error-after',
  /** Applies a write, then destroys the socket without answering. Writes only. */
  CommitThenDrop: 'commit-then-drop',
  /** Answers 429 with a `Retry-After` header before the request is processed. */
  RateLimit: 'rate-limit',
  /** Answers 401 although the token is valid (nothing applied, the token stays valid). */
  Early401: 'early-401',
  /** Revokes the presented token, so this request and every later use of the token get 401. */
  RevokeToken: 'revoke-token',
  /** Hides recently written resources from search for `lagMs`. */
  VisibilityLag: 'visibility-lag',
  /** Rejects writes that contain the listed elements with 422. */
  SchemaDrift: 'schema-drift',
} as const;
export type FaultKind = (typeof FaultKind)[keyof typeof FaultKind];

/** Shorthand accepted in a profile and normalized to a `rate-limit` fault with a window. */
export const STORM_KIND = 'storm';

/** Kinds that are decided per request by `plan()` (everything except `visibility-lag` and `schema-drift`). */
export type RequestFaultKind = Exclude<FaultKind, 'visibility-lag' | 'schema-drift'>;

/** Default `probability` of a fault: 1 (fires on every matching request inside its window). */
export const DEFAULT_FAULT_PROBABILITY = 1;
/** Default `probability` of the `storm` shorthand: 0.9. */
export const DEFAULT_STORM_PROBABILITY = 0.9;
/** Default `startMs` of the `storm` shorthand: 0 ms after sandbox start. */
export const DEFAULT_STORM_START_MS = 0;
/** Default `Retry-After` of `rate-limit` and `storm` faults: 1 second. */
export const DEFAULT_RETRY_AFTER_SECONDS = 1;
/** Default status of `error-before`: 503. */
export const DEFAULT_ERROR_BEFORE_STATUS = 503;
/** Default status of `error-after`: 500. */
export const DEFAULT_ERROR_AFTER_STATUS = 500;
/**
 * Upper bound of every delay a profile can ask for (`fixedMs`, `jitterMs`, `delayMs`, `lagMs`): 600,000 ms
 * (10 minutes). A bound keeps a typo (an extra zero or two) from parking sockets for hours.
 */
export const MAX_FAULT_DELAY_MS = 600_000;
/** Upper bound of `retryAfterSeconds`: 3,600 s. */
export const MAX_RETRY_AFTER_SECONDS = 3_600;
/** Upper bound of the number of faults in one profile: 100 (`plan()` costs two draws per fault per request). */
export const MAX_FAULTS = 100;

/** The 5xx statuses a fault may answer. */
export const FAULT_STATUSES = [500, 502, 503, 504] as const;
export type FaultStatus = (typeof FAULT_STATUSES)[number];

/** Restricts a fault to some requests; every list that is given must contain the request's value. */
export interface FaultMatch {
  /** HTTP methods, upper case. A request matches if its method is listed. */
  readonly methods?: readonly string[];
  /** Resource types. A request without a resource type (e.g. a transaction) never matches this list. */
  readonly resourceTypes?: readonly string[];
  /** Interactions (`read`, `create`, `search-type`...). */
  readonly interactions?: readonly Interaction[];
}

/**
 * When a fault is active: every bound that is given must hold. Starts are inclusive, ends exclusive.
 * `startMs`/`endMs` are milliseconds after the injector's `startedAt` (sandbox start); `from`/`until` are ISO 8601
 * timestamps with a zone (`Z` or an offset).
 */
export interface FaultWindow {
  readonly startMs?: number;
  readonly endMs?: number;
  readonly from?: string;
  readonly until?: string;
}

/** Fields shared by every normalized fault. */
export interface FaultBase {
  /** Unique id; stats, `plan().fired` and the fault's random stream are keyed by it. */
  readonly id: string;
  /** Free text for humans; ignored by the injector. */
  readonly description?: string;
  /** Chance in [0, 1] that the fault fires on a matching request inside its window. */
  readonly probability: number;
  readonly match?: FaultMatch;
  readonly window?: FaultWindow;
}

export interface LatencyFault extends FaultBase {
  readonly kind: 'latency';
  /** Fixed delay in ms (default 0). */
  readonly fixedMs: number;
  /** Extra delay drawn uniformly from the integers 0..`jitterMs` ms, both inclusive (default 0). */
  readonly jitterMs: number;
}
export interface TimeoutFault extends FaultBase {
  readonly kind: 'timeout';
  /** Delay in ms, meant to exceed the client's timeout (required). */
  readonly delayMs: number;
}
export interface ResetFault extends FaultBase {
  readonly kind: 'reset';
}
export interface ErrorBeforeFault extends FaultBase {
  readonly kind: 'error-before';
  readonly status: FaultStatus;
}
export interface ErrorAfterFault extends FaultBase {
  readonly kind: 'error-after';
  readonly status: FaultStatus;
}
export interface CommitThenDropFault extends FaultBase {
  readonly kind: 'commit-then-drop';
}
/** Inclusive range of whole seconds. */
export interface SecondsRange {
  readonly min: number;
  readonly max: number;
}
export interface RateLimitFault extends FaultBase {
  readonly kind: 'rate-limit';
  /** `Retry-After` in whole seconds, drawn uniformly from `min..max`, both inclusive. */
  readonly retryAfterSeconds: SecondsRange;
}
export interface Early401Fault extends FaultBase {
  readonly kind: 'early-401';
}
export interface RevokeTokenFault extends FaultBase {
  readonly kind: 'revoke-token';
}
export interface VisibilityLagFault extends FaultBase {
  readonly kind: 'visibility-lag';
  /** Always 1: the lag is a property of the server, not a per-request draw. */
  readonly probability: 1;
  /** Only `resourceTypes` is meaningful for a lag. */
  readonly match?: Pick<FaultMatch, 'resourceTypes'>;
  /** Search hides resources written less than `lagMs` ms ago. */
  readonly lagMs: number;
}
export interface SchemaDriftFault extends FaultBase {
  readonly kind: 'schema-drift';
  /** Always 1: the drift is a property of the server, not a per-request draw. */
  readonly probability: 1;
  readonly match?: never;
  /** Element paths rejected on writes, each starting with its resource type (`Observation.note`). */
  readonly elements: readonly string[];
}

/** A normalized per-request fault (decided by `plan()`). */
export type RequestFault =
  | LatencyFault
  | TimeoutFault
  | ResetFault
  | ErrorBeforeFault
  | ErrorAfterFault
  | CommitThenDropFault
  | RateLimitFault
  | Early401Fault
  | RevokeTokenFault;

/** A normalized fault. */
export type Fault = RequestFault | VisibilityLagFault | SchemaDriftFault;

/** A normalized, validated profile, as returned by `FaultInjector.profile()`. */
export interface FaultProfile {
  readonly description?: string;
  readonly faults: readonly Fault[];
}

// ---------------------------------------------------------------------------------------------------------------
// Input schema.

const FAULT_ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/;
const HTTP_METHOD = /^[A-Za-z]+$/;
const RESOURCE_TYPE = /^[A-Z][A-Za-z0-9]*$/;
/** `Type.element(.child)*`, with an optional `[x]` suffix for choice elements: `Observation.value[x]`. */
const ELEMENT_PATH = /^[A-Z][A-Za-z0-9]*(\.[A-Za-z][A-Za-z0-9]*(\[x\])?)+$/;

const delayMs = (min: number) => z.number().int().min(min).max(MAX_FAULT_DELAY_MS);
const description = z.string().max(500).optional();
const probability = z.number().min(0).max(1).optional();

const MatchSchema = z.strictObject({
  methods: z
    .array(z.string().regex(HTTP_METHOD, 'must be an HTTP method name such as "POST"'))
    .min(1, 'must not be empty (omit it to match every method)')
    .optional(),
  resourceTypes: z
    .array(z.string().regex(RESOURCE_TYPE, 'must be a FHIR resource type such as "Observation"'))
    .min(1, 'must not be empty (omit it to match every resource type)')
    .optional(),
  interactions: z
    .array(z.enum(Interaction))
    .min(1, 'must not be empty (omit it to match every interaction)')
    .optional(),
});

const ResourceTypesOnlyMatchSchema = z.strictObject({ resourceTypes: MatchSchema.shape.resourceTypes });

const isoTimestamp = z.iso.datetime({
  offset: true,
  error: 'must be an ISO 8601 timestamp with a zone, e.g. "2025-01-01T00:00:00Z"',
});

const WindowSchema = z
  .strictObject({
    startMs: z.number().int().min(0).optional(),
    endMs: z.number().int().min(1).optional(),
    from: isoTimestamp.optional(),
    until: isoTimestamp.optional(),
  })
  .refine((w) => w.startMs === undefined || w.endMs === undefined || w.startMs < w.endMs, {
    message: 'must be greater than startMs',
    path: ['endMs'],
  })
  .refine((w) => w.from === undefined || w.until === undefined || Date.parse(w.from) < Date.parse(w.until), {
    message: 'must be later than from',
    path: ['until'],
  });

const seconds = z.number().int().min(0).max(MAX_RETRY_AFTER_SECONDS);
const RetryAfterSchema = z.union(
  [
    seconds,
    z
      .strictObject({ min: seconds, max: seconds })
      .refine((r) => r.min <= r.max, { message: 'must be at least min', path: ['max'] }),
  ],
  { error: `must be whole seconds (0-${MAX_RETRY_AFTER_SECONDS}) or a range { "min": seconds, "max": seconds }` },
);

const common = {
  id: z.string().regex(FAULT_ID, 'must be 1-64 characters of letters, digits, ".", "_", ":" or "-"').optional(),
  description,
  probability,
  match: MatchSchema.optional(),
  window: WindowSchema.optional(),
};

/** Adds an issue when a writes-only fault is restricted to an interaction that is not a write. */
function writesOnly(kind: string) {
  type WithInteractions = { match?: { interactions?: readonly Interaction[] | undefined } | undefined };
  return (fault: WithInteractions, ctx: z.RefinementCtx) => {
    fault.match?.interactions?.forEach((interaction, i) => {
      if (!WRITE_INTERACTIONS.has(interaction)) {
        ctx.addIssue({
          code: 'custom',
          path: ['match', 'interactions', i],
          message: `${kind} only fires on writes (${[...WRITE_INTERACTIONS].join(', ')}); "${interaction}" is not one`,
        });
      }
    });
  };
}

const serverWideProbability = (kind: string) =>
  z
    .literal(1, {
      error:
        `${kind} is not decided per request: omit probability or set it to 1 ` +
        '(limit it with window and match instead)',
    })
    .optional();

const LatencyInput = z
  .strictObject({
    ...common,
    kind: z.literal('latency'),
    fixedMs: delayMs(0).optional(),
    jitterMs: delayMs(0).optional(),
  })
  .refine((f) => (f.fixedMs ?? 0) + (f.jitterMs ?? 0) > 0, {
    message: 'a latency fault needs fixedMs or jitterMs greater than 0',
    path: ['fixedMs'],
  });
const TimeoutInput = z.strictObject({ ...common, kind: z.literal('timeout'), delayMs: delayMs(1) });
const ResetInput = z.strictObject({ ...common, kind: z.literal('reset') });
const status = z.literal(FAULT_STATUSES).optional();
const ErrorBeforeInput = z.strictObject({ ...common, kind: z.literal('error-before'), status });
const ErrorAfterInput = z
  .strictObject({ ...common, kind: z.literal('error-after'), status })
  .superRefine(writesOnly('error-after'));
const CommitThenDropInput = z
  .strictObject({ ...common, kind: z.literal('commit-then-drop') })
  .superRefine(writesOnly('commit-then-drop'));
const RateLimitInput = z.strictObject({
  ...common,
  kind: z.literal('rate-limit'),
  retryAfterSeconds: RetryAfterSchema.optional(),
});
const Early401Input = z.strictObject({ ...common, kind: z.literal('early-401') });
const RevokeTokenInput = z.strictObject({ ...common, kind: z.literal('revoke-token') });
const VisibilityLagInput = z.strictObject({
  id: common.id,
  description,
  kind: z.literal('visibility-lag'),
  probability: serverWideProbability('visibility-lag'),
  match: ResourceTypesOnlyMatchSchema.optional(),
  window: common.window,
  lagMs: delayMs(1),
});
const SchemaDriftInput = z.strictObject({
  id: common.id,
  description,
  kind: z.literal('schema-drift'),
  probability: serverWideProbability('schema-drift'),
  window: common.window,
  elements: z
    .array(z.string().regex(ELEMENT_PATH, 'must be an element path such as "Observation.note"'))
    .min(1, 'must list at least one element'),
});
const StormInput = z
  .strictObject({
    id: common.id,
    description,
    kind: z.literal(STORM_KIND),
    probability,
    match: common.match,
    startMs: z.number().int().min(0).optional(),
    durationMs: z.number().int().min(1),
    retryAfterSeconds: RetryAfterSchema.optional(),
  });

/** Schema of one fault as written in a profile (before normalization). */
export const FaultInputSchema = z.discriminatedUnion('kind', [
  LatencyInput,
  TimeoutInput,
  ResetInput,
  ErrorBeforeInput,
  ErrorAfterInput,
  CommitThenDropInput,
  RateLimitInput,
  Early401Input,
  RevokeTokenInput,
  VisibilityLagInput,
  SchemaDriftInput,
  StormInput,
]);
/** One fault as written in a profile. */
export type FaultInput = z.input<typeof FaultInputSchema>;

// ---------------------------------------------------------------------------------------------------------------
// Normalization.

type ParsedFault = z.output<typeof FaultInputSchema>;
type ParsedMatch = z.output<typeof MatchSchema>;
type ParsedWindow = z.output<typeof WindowSchema>;

function normalizeMatch(match: ParsedMatch | undefined): FaultMatch | undefined {
  if (match === undefined) return undefined;
  return {
    ...(match.methods && { methods: match.methods.map((m) => m.toUpperCase()) }),
    ...(match.resourceTypes && { resourceTypes: [...match.resourceTypes] }),
    ...(match.interactions && { interactions: [...match.interactions] }),
  };
}

function normalizeWindow(window: ParsedWindow | undefined): FaultWindow | undefined {
  if (window === undefined) return undefined;
  return {
    ...(window.startMs !== undefined && { startMs: window.startMs }),
    ...(window.endMs !== undefined && { endMs: window.endMs }),
    ...(window.from !== undefined && { from: window.from }),
    ...(window.until !== undefined && { until: window.until }),
  };
}

function normalizeRetryAfter(value: number | SecondsRange | undefined): SecondsRange {
  const v = value ?? DEFAULT_RETRY_AFTER_SECONDS;
  return typeof v === 'number' ? { min: v, max: v } : { min: v.min, max: v.max };
}

/** The id a fault gets when the profile gives none: `<kind>-<index>`, e.g. `reset-0`, `storm-5`. */
export function defaultFaultId(kind: string, index: number): string {
  return `${kind}-${index}`;
}

function normalizeFault(f: ParsedFault, index: number): Fault {
  // Key order is id, kind, description, probability, match, window, then the kind's own fields: the order a
  // human reads `GET /_admin/faults` in.
  const id = f.id ?? defaultFaultId(f.kind, index);
  const text = { ...(f.description !== undefined && { description: f.description }) };
  if (f.kind === STORM_KIND) {
    const startMs = f.startMs ?? DEFAULT_STORM_START_MS;
    const match = normalizeMatch(f.match);
    return {
      id,
      kind: 'rate-limit',
      ...text,
      probability: f.probability ?? DEFAULT_STORM_PROBABILITY,
      ...(match && { match }),
      window: { startMs, endMs: startMs + f.durationMs },
      retryAfterSeconds: normalizeRetryAfter(f.retryAfterSeconds),
    };
  }
  const window = normalizeWindow(f.window);
  const when = { ...(window && { window }) };
  if (f.kind === 'visibility-lag') {
    const match = f.match?.resourceTypes && { match: { resourceTypes: [...f.match.resourceTypes] } };
    return { id, kind: f.kind, ...text, probability: 1, ...match, ...when, lagMs: f.lagMs };
  }
  if (f.kind === 'schema-drift') {
    return { id, kind: f.kind, ...text, probability: 1, ...when, elements: [...new Set(f.elements)] };
  }
  const match = normalizeMatch(f.match);
  const where = { probability: f.probability ?? DEFAULT_FAULT_PROBABILITY, ...(match && { match }), ...when };
  switch (f.kind) {
    case 'latency':
      return { id, kind: f.kind, ...text, ...where, fixedMs: f.fixedMs ?? 0, jitterMs: f.jitterMs ?? 0 };
    case 'timeout':
      return { id, kind: f.kind, ...text, ...where, delayMs: f.delayMs };
    case 'error-before':
      return { id, kind: f.kind, ...text, ...where, status: f.status ?? DEFAULT_ERROR_BEFORE_STATUS };
    case 'error-after':
      return { id, kind: f.kind, ...text, ...where, status: f.status ?? DEFAULT_ERROR_AFTER_STATUS };
    case 'rate-limit':
      return { id, kind: f.kind, ...text, ...where, retryAfterSeconds: normalizeRetryAfter(f.retryAfterSeconds) };
    case 'reset':
    case 'commit-then-drop':
    case 'early-401':
    case 'revoke-token':
      return { id, kind: f.kind, ...text, ...where };
  }
}

/** Deep-freezes a JSON-like value, so the active profile cannot be edited behind the injector's back. */
function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    for (const child of Object.values(value)) deepFreeze(child);
    Object.freeze(value);
  }
  return value;
}

/**
 * Schema of a whole profile. Parsing yields the normalized {@link FaultProfile}: defaults filled in, storms
 * expanded, ids derived, duplicate ids rejected.
 */
export const FaultProfileSchema = z.strictObject({
  description,
  faults: z
    .array(FaultInputSchema)
    .max(MAX_FAULTS)
    .transform((faults, ctx): Fault[] => {
      const normalized = faults.map(normalizeFault);
      const firstIndex = new Map<string, number>();
      normalized.forEach((fault, i) => {
        const previous = firstIndex.get(fault.id);
        if (previous === undefined) {
          firstIndex.set(fault.id, i);
          return;
        }
        const derived =
          faults[i]?.id === undefined ? ' (derived from kind and index; give the fault an explicit id)' : '';
        ctx.addIssue({
          code: 'custom',
          path: [i, 'id'],
          message: `duplicate fault id "${fault.id}"${derived}; already used by faults[${previous}]`,
        });
      });
      return normalized;
    }),
});
/** A profile as written (before normalization). */
export type FaultProfileInput = z.input<typeof FaultProfileSchema>;

// ---------------------------------------------------------------------------------------------------------------
// Errors.

/** One problem found in a profile: where (`faults[2].probability`) and what. */
export interface FaultProfileProblem {
  readonly path: string;
  readonly message: string;
}

/** At most this many problems are spelled out in the error message (all are in `details.problems`). */
const MAX_PROBLEMS_IN_MESSAGE = 5;

function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const segment of path) {
    out += typeof segment === 'number' ? `[${segment}]` : `${out === '' ? '' : '.'}${String(segment)}`;
  }
  return out === '' ? '(profile)' : out;
}

/** The value at `path` inside `input`, to quote it in a message (profiles hold no PHI). */
function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let value = input;
  for (const segment of path) {
    if (typeof value !== 'object' || value === null) return undefined;
    value = (value as Record<PropertyKey, unknown>)[segment];
  }
  return value;
}

function quote(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 40 ? `${text.slice(0, 37)}...` : text;
}

function toProblem(issue: z.core.$ZodIssue, input: unknown): FaultProfileProblem {
  if (issue.code === 'unrecognized_keys') {
    // Name the key in the path, and say which kind the fault is: the usual cause is a field of another kind.
    const kind = valueAt(input, [...issue.path, 'kind']);
    const suffix = typeof kind === 'string' ? ` for kind "${kind}"` : '';
    const single = issue.keys.length === 1;
    return {
      path: formatPath(single ? [...issue.path, ...issue.keys] : issue.path),
      message: `unknown key${single ? '' : `s ${issue.keys.map(quote).join(', ')}`}${suffix}`,
    };
  }
  if (issue.code === 'invalid_union' && issue.discriminator === 'kind') {
    // zod's own message lists the literals but not what was given; quote the offending value.
    const value = valueAt(input, issue.path);
    const expected = FaultInputSchema.options.map((o) => o.shape.kind.value).join(', ');
    const given = value === undefined ? 'missing fault kind' : `unknown fault kind ${quote(value)}`;
    return { path: formatPath(issue.path), message: `${given}; expected one of: ${expected}` };
  }
  return { path: formatPath(issue.path), message: issue.message };
}

/**
 * Validates and normalizes a profile.
 *
 * @param input - the profile as parsed JSON.
 * @returns the normalized profile, deep-frozen.
 * @throws TetherError `FAULT_PROFILE_INVALID` naming every offending path (`details.problems` lists them all).
 */
export function parseFaultProfile(input: unknown): FaultProfile {
  const result = FaultProfileSchema.safeParse(input);
  if (result.success) {
    const { description: text, faults } = result.data;
    return deepFreeze({ ...(text !== undefined && { description: text }), faults });
  }
  const problems = result.error.issues.map((issue) => toProblem(issue, input));
  const shown = problems.slice(0, MAX_PROBLEMS_IN_MESSAGE).map((p) => `${p.path}: ${p.message}`);
  const more = problems.length > shown.length ? `; and ${problems.length - shown.length} more` : '';
  throw new TetherError('FAULT_PROFILE_INVALID', `Invalid fault profile: ${shown.join('; ')}${more}`, {
    details: { problems },
  });
}

/** True for the kinds `plan()` decides per request. */
export function isRequestFault(fault: Fault): fault is RequestFault {
  return fault.kind !== 'visibility-lag' && fault.kind !== 'schema-drift';
}
