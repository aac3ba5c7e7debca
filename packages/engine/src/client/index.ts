/**
 * The EHR client subsystem: the only entrance to `packages/engine/src/client/`. See docs/client.md.
 */
export { createEhrClient } from './client.js';
export type { EhrClient, SearchOptions, PageOptions } from './client.js';
export type {
  CallOptions,
  WriteOptions,
  EhrTarget,
  EhrResponse,
  EhrRequestSpec,
  WriteResult,
  WriteHeaders,
  FhirResource,
  FhirBundle,
  SearchParams,
} from './types.js';
export {
  DEFAULT_CONNECT_TIMEOUT_MS,
  DEFAULT_HEADERS_TIMEOUT_MS,
  DEFAULT_BODY_TIMEOUT_MS,
  DEFAULT_ATTEMPT_TIMEOUT_MS,
  DEFAULT_DEADLINE_MS,
  DEFAULT_MAX_ATTEMPTS,
  DEFAULT_RETRY_BASE_DELAY_MS,
  DEFAULT_RETRY_MAX_DELAY_MS,
  DEFAULT_MAX_RETRY_AFTER_MS,
  DEFAULT_BREAKER_FAILURE_THRESHOLD,
  DEFAULT_BREAKER_HALF_OPEN_AFTER_MS,
  DEFAULT_CONCURRENCY,
  DEFAULT_BATCH_EVERY,
  DEFAULT_RATE_LIMIT_CAPACITY,
  DEFAULT_RATE_LIMIT_REFILL_PER_SECOND,
  DEFAULT_POOL_CONNECTIONS,
  DEFAULT_KEEP_ALIVE_TIMEOUT_MS,
  DEFAULT_MAX_RESPONSE_BYTES,
  DEFAULT_MAX_PAGES,
  DEFAULT_WRITE_NOT_APPLIED_STATUSES,
  DEFAULT_USER_AGENT,
  RETRY_AFTER_SANITY_CAP_MS,
  defaultDispatcherFactory,
  ehrClientSettingsSchema,
  resolveClientOptions,
} from './options.js';
export type {
  EhrClientOptions,
  EhrClientSettings,
  RateLimit,
  ClientTimers,
  ClientLogger,
  DispatcherFactory,
  PoolSettings,
  IdSource,
} from './options.js';
export type {
  EhrClientEventMap,
  EhrClientEventName,
  EhrClientEvent,
  EhrClientListener,
  WriteOutcome,
  AttemptOutcome,
  FailureReason,
  RequestFacts,
} from './events.js';
export { inProcessRateLimiter, storeRateLimiter } from './rate-limiter.js';
export type { RateLimiter, RateLimitDecision, RateLimitStore } from './rate-limiter.js';
export type { Priority } from './concurrency.js';
export type { EhrInteraction, HttpMethod } from './interaction.js';
export { backoffCeiling, backoffDelay, parseRetryAfter, retrySchedule } from './retry.js';
export type { BackoffPolicy, ScheduleRow } from './retry.js';
export { parseTraceparent } from './trace.js';
export type { TokenProvider } from './token-provider.js';
