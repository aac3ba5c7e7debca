/**
 * Options of the EHR client: one object, validated once by {@link resolveClientOptions}, frozen afterwards.
 *
 * Plain settings (numbers, lists) are checked with zod; I/O seams (clock, random, timers, dispatcher factory,
 * rate limiter, logger, event sink) are checked to be functions/objects and otherwise passed through, so tests
 * and the seeded fault simulator can replace every one of them.
 */
import { Pool, type Dispatcher } from 'undici';
import type { IBreaker } from 'cockatiel';
import { z } from 'zod';
import { TetherError } from '@tether/core';
import type { EhrClientEvent } from './events.js';
import type { RateLimiter } from './rate-limiter.js';
import type { TokenProvider } from './token-provider.js';

// ---------------------------------------------------------------------------------------------------------------
// Defaults. Every one is an exported named constant so that docs, tests and callers can refer to it.

/** Default TCP (and TLS) connect timeout, in milliseconds: 5 s. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;
/** Default time to wait for the response headers once the request was written, in milliseconds: 20 s. */
export const DEFAULT_HEADERS_TIMEOUT_MS = 20_000;
/** Default longest pause between two chunks of the response body, in milliseconds: 20 s. */
export const DEFAULT_BODY_TIMEOUT_MS = 20_000;
/** Default budget of one attempt (connect + send + headers + body), in milliseconds: 30 s. */
export const DEFAULT_ATTEMPT_TIMEOUT_MS = 30_000;
/** Default overall deadline of one call, all attempts, waits and backoff included, in milliseconds: 60 s. */
export const DEFAULT_DEADLINE_MS = 60_000;
/** Default number of attempts of a read (the first one included): 4, i.e. up to 3 retries. */
export const DEFAULT_MAX_ATTEMPTS = 4;
/** Default base of the exponential backoff, in milliseconds: 200 ms (retry n waits up to base × 2^(n-1)). */
export const DEFAULT_RETRY_BASE_DELAY_MS = 200;
/** Default cap of one backoff delay, in milliseconds: 5 s. */
export const DEFAULT_RETRY_MAX_DELAY_MS = 5_000;
/**
 * Default longest `Retry-After` the client waits for inside one call, in milliseconds: 30 s. A longer one is not
 * shortened (that would send before the EHR allows it): the call fails with `EHR_RATE_LIMITED` and its
 * `retryAfterMs`, and the caller's queue reschedules the work.
 */
export const DEFAULT_MAX_RETRY_AFTER_MS = 30_000;
/** Default number of consecutive transient failures that open a tenant's circuit: 5. */
export const DEFAULT_BREAKER_FAILURE_THRESHOLD = 5;
/** Default time an open circuit waits before it lets one trial request through, in milliseconds: 15 s. */
export const DEFAULT_BREAKER_HALF_OPEN_AFTER_MS = 15_000;
/** Default number of requests in flight per tenant: 8. */
export const DEFAULT_CONCURRENCY = 8;
/**
 * Default anti-starvation period of the per-tenant queue: 5. While both interactive and batch work wait, every
 * 5th free slot goes to the oldest batch waiter (so batch gets at least 1/5 of the slots under contention).
 */
export const DEFAULT_BATCH_EVERY = 5;
/** Default token bucket size per tenant (requests that may be sent in a burst): 50. */
export const DEFAULT_RATE_LIMIT_CAPACITY = 50;
/** Default refill rate of the per-tenant token bucket, in requests per second: 25. */
export const DEFAULT_RATE_LIMIT_REFILL_PER_SECOND = 25;
/** Default number of sockets per EHR origin (undici `Pool` `connections`): 16. */
export const DEFAULT_POOL_CONNECTIONS = 16;
/** Default idle keep-alive time of a pooled socket, in milliseconds: 4 s (undici's own default). */
export const DEFAULT_KEEP_ALIVE_TIMEOUT_MS = 4_000;
/** Default largest response body accepted, in bytes: 32 MiB. Larger bodies abort the attempt. */
export const DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024;
/** Default largest number of pages {@link EhrClient.searchPages} follows before it fails: 1000. */
export const DEFAULT_MAX_PAGES = 1000;
/**
 * Default statuses that prove a write was NOT applied, besides 4xx: none. A `503` is a response, and behind a
 * gateway the application may have applied the write before the gateway gave up, so by default every 5xx to a
 * write is `unknown`. A vendor profile that knows better (e.g. "503 is only ever sent by the throttling proxy,
 * before the application") lists the status here or on the {@link EhrTarget}.
 */
export const DEFAULT_WRITE_NOT_APPLIED_STATUSES: readonly number[] = Object.freeze([]);
/** Default `User-Agent` header. */
export const DEFAULT_USER_AGENT = 'tether-engine';
/**
 * Sanity cap on a server's `Retry-After`, in milliseconds: 1 h. A larger value (or a date far in the future) is
 * treated as 1 h, so that one malformed header cannot pause a tenant for days.
 */
export const RETRY_AFTER_SANITY_CAP_MS = 3_600_000;

// ---------------------------------------------------------------------------------------------------------------
// Seams.

/** Timer functions (default: the global ones). Fake timers or a simulator may replace them. */
export interface ClientTimers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

/**
 * A pino-compatible logger (`logger.warn({ ...fields }, 'message')`). The client only ever logs tenant ids,
 * resource types, interactions, statuses, timings and error codes: never URLs, query values or bodies.
 */
export interface ClientLogger {
  debug(fields: Record<string, unknown>, msg: string): void;
  info(fields: Record<string, unknown>, msg: string): void;
  warn(fields: Record<string, unknown>, msg: string): void;
  error(fields: Record<string, unknown>, msg: string): void;
  /**
   * Optional (pino has it): whether `level` is logged. The client asks before it builds the fields of its
   * per-attempt `debug` line, so a logger at `info` costs nothing per request.
   */
  isLevelEnabled?(level: string): boolean;
}

/** Options of the undici `Pool` the client creates for an origin (what the default factory passes to `Pool`). */
export interface PoolSettings {
  readonly connections: number;
  readonly connectTimeoutMs: number;
  readonly headersTimeoutMs: number;
  readonly bodyTimeoutMs: number;
  readonly keepAliveTimeoutMs: number;
}

/** Creates the dispatcher (normally an undici `Pool`) for one origin such as `https://fhir.example.org`. */
export type DispatcherFactory = (origin: string, settings: PoolSettings) => Dispatcher;

/** Sources of identifiers (default: random bytes from `crypto.getRandomValues`, pooled). */
export interface IdSource {
  /** A new correlation id (default: a UUID v4). */
  correlationId(): string;
  /** 16 random bytes as 32 lower-case hex digits (a W3C trace id). */
  traceId(): string;
  /** 8 random bytes as 16 lower-case hex digits (a W3C span id). */
  spanId(): string;
}

// ---------------------------------------------------------------------------------------------------------------
// Schema of the plain settings.

const ms = (min = 1) => z.number().int().min(min).max(86_400_000);

const RateLimitSchema = z.strictObject({
  /** Bucket size: requests that may be sent in a burst. */
  capacity: z.number().positive().max(1_000_000),
  /** Requests per second added back to the bucket. */
  refillPerSecond: z.number().positive().max(1_000_000),
});

/** The plain settings of the EHR client (also the `client` section of the service configuration). */
export const ehrClientSettingsSchema = z
  .strictObject({
    connectTimeoutMs: ms().default(DEFAULT_CONNECT_TIMEOUT_MS),
    headersTimeoutMs: ms().default(DEFAULT_HEADERS_TIMEOUT_MS),
    bodyTimeoutMs: ms().default(DEFAULT_BODY_TIMEOUT_MS),
    attemptTimeoutMs: ms().default(DEFAULT_ATTEMPT_TIMEOUT_MS),
    deadlineMs: ms().default(DEFAULT_DEADLINE_MS),
    maxAttempts: z.number().int().min(1).max(20).default(DEFAULT_MAX_ATTEMPTS),
    retryBaseDelayMs: ms(0).default(DEFAULT_RETRY_BASE_DELAY_MS),
    retryMaxDelayMs: ms(0).default(DEFAULT_RETRY_MAX_DELAY_MS),
    maxRetryAfterMs: ms(0).default(DEFAULT_MAX_RETRY_AFTER_MS),
    breakerFailureThreshold: z.number().int().min(1).max(1000).default(DEFAULT_BREAKER_FAILURE_THRESHOLD),
    breakerHalfOpenAfterMs: ms().default(DEFAULT_BREAKER_HALF_OPEN_AFTER_MS),
    concurrency: z.number().int().min(1).max(10_000).default(DEFAULT_CONCURRENCY),
    batchEvery: z.number().int().min(2).max(1000).default(DEFAULT_BATCH_EVERY),
    rateLimit: RateLimitSchema.nullable().default({
      capacity: DEFAULT_RATE_LIMIT_CAPACITY,
      refillPerSecond: DEFAULT_RATE_LIMIT_REFILL_PER_SECOND,
    }),
    poolConnections: z.number().int().min(1).max(10_000).default(DEFAULT_POOL_CONNECTIONS),
    keepAliveTimeoutMs: ms().default(DEFAULT_KEEP_ALIVE_TIMEOUT_MS),
    maxResponseBytes: z.number().int().min(1024).max(2 ** 31).default(DEFAULT_MAX_RESPONSE_BYTES),
    maxPages: z.number().int().min(1).max(1_000_000).default(DEFAULT_MAX_PAGES),
    writeNotAppliedStatuses: z
      .array(z.number().int().min(500).max(599))
      .max(100)
      .default([...DEFAULT_WRITE_NOT_APPLIED_STATUSES]),
    userAgent: z
      .string()
      .regex(/^[\x21-\x7e][\x20-\x7e]{0,199}$/, 'must be printable ASCII')
      .default(DEFAULT_USER_AGENT),
  })
  .refine((s) => s.retryBaseDelayMs <= s.retryMaxDelayMs, {
    message: 'retryBaseDelayMs must not exceed retryMaxDelayMs',
    path: ['retryBaseDelayMs'],
  });

/** The plain settings, as accepted (every field optional; see the `DEFAULT_*` constants). */
export type EhrClientSettings = z.input<typeof ehrClientSettingsSchema>;

/** A token bucket: `capacity` requests in a burst, refilled at `refillPerSecond`. */
export type RateLimit = z.output<typeof RateLimitSchema>;

/**
 * Everything {@link createEhrClient} accepts. Only `tokenProvider` is required.
 *
 * Timeouts (all in milliseconds, see the `DEFAULT_*` constants for defaults):
 * - `connectTimeoutMs`: TCP/TLS connect. A request that never connected was not sent.
 * - `headersTimeoutMs`: from the request being written to the end of the response headers.
 * - `bodyTimeoutMs`: longest gap between two body chunks.
 * - `attemptTimeoutMs`: one attempt, end to end.
 * - `deadlineMs`: the whole call (queueing, rate-limit waits, every attempt and every backoff). Per call,
 *   `CallOptions.deadlineMs` overrides it. No retry is started that could not finish before it.
 */
export interface EhrClientOptions extends EhrClientSettings {
  /** Gives access tokens for (tenant, context), refreshes after a 401 and prechecks scopes. Required. */
  readonly tokenProvider: TokenProvider;
  /** Epoch-millisecond clock. Default `Date.now`. Drives deadlines, the breaker, rate limits and Retry-After. */
  readonly clock?: () => number;
  /** Uniform random number in [0, 1) for backoff jitter. Default `Math.random`. */
  readonly random?: () => number;
  /**
   * Timers used for deadlines, per-attempt timeouts and the default `sleep`. Default: the global timers, on which
   * the client keeps its deadlines and attempt budgets in one heap under a single Node timer (`DeadlineTimers`).
   * Injected timers are used as given.
   */
  readonly timers?: ClientTimers;
  /**
   * Waits `ms` milliseconds (backoff, Retry-After, local rate limit). Must reject (or resolve early) when `signal`
   * aborts. Default: built on `timers`. Tests inject one that advances a fake clock instead of waiting.
   */
  readonly sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
  /** Creates the dispatcher for an origin. Default: `new Pool(origin, …)` with the timeouts above. */
  readonly dispatcherFactory?: DispatcherFactory;
  /**
   * Creates the cockatiel breaker policy deciding when a circuit opens. Default:
   * `new ConsecutiveBreaker(breakerFailureThreshold)`. A `SamplingBreaker` or `CountBreaker` also fits.
   */
  readonly breakerFactory?: () => IBreaker;
  /** Shared token buckets. Default: {@link inProcessRateLimiter}; distributed mode: {@link storeRateLimiter}. */
  readonly rateLimiter?: RateLimiter;
  /** Logger (pino-compatible). Default: none. */
  readonly logger?: ClientLogger;
  /** Receives every event (see {@link EhrClientEventMap}); `client.on()` is the per-event alternative. */
  readonly onEvent?: (event: EhrClientEvent) => void;
  /** Identifier sources. Default: UUID v4 correlation ids and random hex trace/span ids from pooled `crypto.getRandomValues` bytes. */
  readonly ids?: Partial<IdSource>;
}

/** The validated, frozen plain settings. */
export type ResolvedSettings = Readonly<z.output<typeof ehrClientSettingsSchema>> & { readonly rateLimit: Readonly<RateLimit> | null };

/** Validated options: frozen settings plus the resolved seams. */
export interface ResolvedClientOptions {
  readonly settings: ResolvedSettings;
  readonly tokenProvider: TokenProvider;
  readonly clock: () => number;
  readonly random: () => number;
  readonly timers: ClientTimers;
  /** Whether `timers` are the global ones (not injected): the client may then batch its timeouts on one timer. */
  readonly globalTimers: boolean;
  readonly sleep: (ms: number, signal: AbortSignal) => Promise<void>;
  readonly dispatcherFactory: DispatcherFactory;
  readonly breakerFactory: (() => IBreaker) | undefined;
  readonly rateLimiter: RateLimiter | undefined;
  readonly logger: ClientLogger;
  /** Whether the logger logs `debug` now (false without a logger; asks `isLevelEnabled` when it has one). */
  readonly logsDebug: () => boolean;
  readonly onEvent: ((event: EhrClientEvent) => void) | undefined;
  readonly ids: IdSource;
}

const SEAMS = [
  'tokenProvider',
  'clock',
  'random',
  'timers',
  'sleep',
  'dispatcherFactory',
  'breakerFactory',
  'rateLimiter',
  'logger',
  'onEvent',
  'ids',
] as const;

const NOOP_LOGGER: ClientLogger = Object.freeze({ debug() {}, info() {}, warn() {}, error() {} });

const GLOBAL_TIMERS: ClientTimers = Object.freeze({
  setTimeout: (fn: () => void, ms: number): unknown => setTimeout(fn, ms),
  clearTimeout: (handle: unknown): void => clearTimeout(handle as ReturnType<typeof setTimeout>),
});

/** The default dispatcher: one undici `Pool` per origin, HTTP/1.1 without pipelining. */
export const defaultDispatcherFactory: DispatcherFactory = (origin, s) =>
  new Pool(origin, {
    connections: s.connections,
    // One request per socket at a time: with pipelining, undici may re-dispatch requests queued behind a failed
    // one on a new socket, and "was this write sent?" would depend on socket history.
    pipelining: 1,
    connect: { timeout: s.connectTimeoutMs },
    headersTimeout: s.headersTimeoutMs,
    bodyTimeout: s.bodyTimeoutMs,
    keepAliveTimeout: s.keepAliveTimeoutMs,
  });

function invalid(path: string, message: string): TetherError {
  return new TetherError('CONFIG_INVALID', `Invalid EHR client option '${path}': ${message}`, { details: { option: path } });
}

function sleepOn(timers: ClientTimers): (ms: number, signal: AbortSignal) => Promise<void> {
  return (ms, signal) =>
    new Promise<void>((resolve, reject) => {
      if (signal.aborted) {
        reject(signal.reason);
        return;
      }
      const onAbort = (): void => {
        timers.clearTimeout(handle);
        reject(signal.reason);
      };
      const handle = timers.setTimeout(() => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      }, ms);
      signal.addEventListener('abort', onAbort, { once: true });
    });
}

/**
 * Random ids from one pool: 4 KiB from `crypto.getRandomValues`, turned into 8192 hex digits at once, then handed
 * out in slices. Per read that is no native call at all (a refill serves ~100 reads), where one `randomUUID` and
 * two `Buffer#toString('hex')` per read were ~4% of the client's CPU in the benchmark profile.
 *
 * Ids that outlive the call (the correlation id and trace id in every response) are assembled from pieces of at
 * most 12 characters, which V8 copies, so that they never pin the pool string in memory.
 */
const RANDOM_POOL_BYTES = 4096;
const randomPool = Buffer.alloc(RANDOM_POOL_BYTES);
let hexPool = '';
let hexOffset = 0;
function hexDigits(count: number): number {
  if (hexOffset + count > hexPool.length) {
    crypto.getRandomValues(randomPool);
    hexPool = randomPool.toString('hex');
    hexOffset = 0;
  }
  const at = hexOffset;
  hexOffset += count;
  return at;
}
/** RFC 9562 variant bits (10xx) for the 17th hex digit of a UUID. */
const UUID_VARIANT = '89ab89ab89ab89ab';
/** A random UUID v4 (RFC 9562 §5.4), lower case. */
function randomUuid(): string {
  const i = hexDigits(32);
  const h = hexPool;
  const variant = UUID_VARIANT[parseInt(h[i + 16] as string, 16)] as string;
  return `${h.slice(i, i + 8)}-${h.slice(i + 8, i + 12)}-4${h.slice(i + 13, i + 16)}-${variant}${h.slice(i + 17, i + 20)}-${h.slice(i + 20, i + 32)}`;
}
/** 16 random bytes as 32 hex digits (a W3C trace id). */
function randomTraceId(): string {
  const i = hexDigits(32);
  return hexPool.slice(i, i + 12) + hexPool.slice(i + 12, i + 24) + hexPool.slice(i + 24, i + 32);
}
/** 8 random bytes as 16 hex digits (a W3C span id; only ever sent, never kept, so a slice is fine). */
function randomSpanId(): string {
  const i = hexDigits(16);
  return hexPool.slice(i, i + 16);
}

/**
 * Validates the options once (throwing `CONFIG_INVALID` naming the first bad option), fills in defaults and
 * freezes the result. Called by {@link createEhrClient}; exported for tests and for documentation generators.
 */
export function resolveClientOptions(input: EhrClientOptions): ResolvedClientOptions {
  if (typeof input !== 'object' || input === null) throw invalid('(options)', 'must be an object');
  const plain: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(input)) {
    if (!(SEAMS as readonly string[]).includes(key)) plain[key] = value;
  }
  const parsed = ehrClientSettingsSchema.safeParse(plain);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw invalid(issue?.path.join('.') || '(options)', issue?.message ?? 'invalid');
  }
  const tp = input.tokenProvider as Partial<TokenProvider> | undefined;
  if (typeof tp?.getAccessToken !== 'function' || typeof tp.refreshAfterUnauthorized !== 'function') {
    throw invalid('tokenProvider', 'must implement getAccessToken and refreshAfterUnauthorized');
  }
  for (const fn of ['clock', 'random', 'sleep', 'dispatcherFactory', 'breakerFactory', 'onEvent'] as const) {
    if (input[fn] !== undefined && typeof input[fn] !== 'function') throw invalid(fn, 'must be a function');
  }
  if (input.timers !== undefined && (typeof input.timers.setTimeout !== 'function' || typeof input.timers.clearTimeout !== 'function')) {
    throw invalid('timers', 'must have setTimeout and clearTimeout');
  }
  if (input.rateLimiter !== undefined && typeof input.rateLimiter.take !== 'function') throw invalid('rateLimiter', 'must have take()');
  if (input.logger !== undefined) {
    for (const level of ['debug', 'info', 'warn', 'error'] as const) {
      if (typeof input.logger[level] !== 'function') throw invalid(`logger.${level}`, 'must be a function');
    }
  }
  const settings = parsed.data;
  const frozenSettings: ResolvedSettings = Object.freeze({
    ...settings,
    rateLimit: settings.rateLimit === null ? null : Object.freeze({ ...settings.rateLimit }),
    writeNotAppliedStatuses: Object.freeze([...settings.writeNotAppliedStatuses]) as number[],
  });
  const timers = input.timers ?? GLOBAL_TIMERS;
  const logger = input.logger;
  const logsDebug =
    logger === undefined ? () => false : typeof logger.isLevelEnabled === 'function' ? () => logger.isLevelEnabled?.('debug') === true : () => true;
  const ids: IdSource = {
    correlationId: input.ids?.correlationId ?? randomUuid,
    traceId: input.ids?.traceId ?? randomTraceId,
    spanId: input.ids?.spanId ?? randomSpanId,
  };
  return Object.freeze({
    settings: frozenSettings,
    tokenProvider: input.tokenProvider,
    clock: input.clock ?? Date.now,
    random: input.random ?? Math.random,
    timers,
    globalTimers: input.timers === undefined,
    sleep: input.sleep ?? sleepOn(timers),
    dispatcherFactory: input.dispatcherFactory ?? defaultDispatcherFactory,
    breakerFactory: input.breakerFactory,
    rateLimiter: input.rateLimiter,
    logger: input.logger ?? NOOP_LOGGER,
    logsDebug,
    onEvent: input.onEvent,
    ids: Object.freeze(ids),
  });
}
