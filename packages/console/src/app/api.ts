/**
 * The engine's HTTP API as the console uses it: bearer key, JSON in and out, errors as FHIR OperationOutcome.
 * The types mirror the API's JSON (docs/api.md); the console imports nothing from the engine (DESIGN §3), only
 * the shared vocabulary of core (command states from its browser-safe `command-states` entry, OperationOutcome types).
 */
import type { OperationOutcomeJson } from '@tether/core';
import { COMMAND_STATE_VALUES, type CommandState } from '@tether/core/command-states';

export type Role = 'viewer' | 'submitter' | 'operator' | 'admin';

export type { CommandState } from '@tether/core/command-states';
/** Every state, in the order of DESIGN §5 (the one list, from core). */
export const COMMAND_STATES: readonly CommandState[] = COMMAND_STATE_VALUES;

/** States a worker still owns or will again (docs/writeback.md "Sending", plus "Saved"). */
export const OPEN_STATES: readonly CommandState[] = ['queued', 'retry_wait', 'in_flight', 'unknown', 'acknowledged', 'conflict'];
/** What the exception queue lists. */
export const EXCEPTION_STATES: readonly CommandState[] = ['needs_review', 'rejected'];

/** GET /v1/me: the calling key (never its secret). */
export interface Me {
  readonly id: string;
  readonly name: string;
  readonly prefix: string;
  readonly role: Role;
  /** Tenants the key may act on; null: every tenant. */
  readonly tenants: readonly string[] | null;
}

/** A command as the API shows it: `resource` is `{resourceType, masked: true}` and `businessKey` an `h:` token for roles without PHI. */
export interface CommandView {
  readonly id: string;
  readonly tenantId: string;
  readonly context: string;
  readonly action: 'create' | 'update' | 'upsert' | 'delete';
  readonly resourceType: string;
  readonly businessKey: string;
  readonly idempotencyKey: string | null;
  readonly resource: Record<string, unknown>;
  readonly priority: 'interactive' | 'batch';
  readonly state: CommandState;
  readonly stateReason: string | null;
  readonly attempts: number;
  readonly attemptSeq: number;
  readonly nextAttemptAt: number;
  readonly leaseOwner: string | null;
  readonly ehrId: string | null;
  readonly ehrVersion: string | null;
  readonly generation: number;
  readonly requestedBy: string;
  readonly deadlineAt: number | null;
  readonly createdAt: number;
  readonly updatedAt: number;
}

export interface Attempt {
  readonly n: number;
  readonly worker: string | null;
  readonly startedAt: number;
  readonly endedAt: number | null;
  readonly outcome: string;
  readonly errorCode: string | null;
  readonly errorCategory: string | null;
  readonly ehrStatus: number | null;
  readonly verification: string | null;
  readonly correlationId: string | null;
  readonly steps: string | null;
}

export interface CommandEvent {
  readonly seq: number;
  readonly at: number;
  readonly kind: string;
  readonly actor: string;
  readonly fromState: CommandState | null;
  readonly toState: CommandState | null;
  readonly reason: string | null;
}

export interface CommandDetail {
  readonly command: CommandView;
  readonly attempts: readonly Attempt[];
  readonly events: readonly CommandEvent[];
}

export type EhrState =
  | { readonly status: 'found'; readonly copies: readonly { id: string; versionId: string | null; matchesCommand: boolean }[] }
  | { readonly status: 'absent' }
  | { readonly status: 'unavailable'; readonly code: string };

export interface ExceptionDetail extends CommandDetail {
  readonly lastEhrResponse: { n: number; status: number | null; errorCode: string | null; errorCategory: string | null } | null;
  readonly ehrState: EhrState;
}

export type BreakerState = 'closed' | 'open' | 'half-open';

export interface Stats {
  readonly now: number;
  readonly tenants: readonly { id: string; vendor: string; state: string; breaker: BreakerState }[];
  readonly queue: readonly { tenantId: string; state: CommandState; count: number; oldestCreatedAt: number | null }[];
  readonly verifiedPerMinute: readonly { tenantId: string; minuteStart: number; count: number }[];
  readonly attempts: readonly { tenantId: string; outcome: string; errorCategory: string | null; count: number }[];
}

export interface Tenant {
  readonly id: string;
  readonly vendor: string;
  readonly environment: string;
  readonly state: string;
  readonly stateReason: string | null;
}

export interface TenantHealth {
  readonly tenant: string;
  readonly vendor: string;
  readonly auth: { state: string; stateReason: string | null; grantedScopes: string | null; requestedScopes: string; accessTokenExpiresAt: number | null };
  readonly breaker: BreakerState;
  readonly rateLimit: { rateLimitedAttemptsLast15m: number };
  readonly queue: { byState: Partial<Record<CommandState, number>>; oldestOpenAgeSeconds: number | null; exceptions: number };
  readonly attemptsLast15m: readonly { outcome: string; errorCategory: string | null; count: number }[];
}

export interface NewCommand {
  readonly tenantId: string;
  readonly context: string;
  readonly action: string;
  readonly resourceType: string;
  readonly resource: unknown;
  readonly businessKey: string;
  readonly priority?: 'interactive' | 'batch';
}

export interface Accepted {
  readonly id: string;
  readonly state: CommandState;
  readonly created: boolean;
}

/** An API error: the OperationOutcome's `issue[0].diagnostics` and Tether error code, or what we know. */
export class ApiError extends Error {
  readonly status: number;
  /** The Tether error code (`issue[0].details.coding[0].code`), e.g. `API_UNAUTHENTICATED`. */
  readonly code: string;

  constructor(status: number, code: string, message: string) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }

  static fromOutcome(status: number, body: unknown): ApiError {
    const issue = (body as Partial<OperationOutcomeJson> | null)?.issue?.[0];
    if ((body as { resourceType?: unknown } | null)?.resourceType === 'OperationOutcome' && issue) {
      const code = issue.details?.coding?.[0]?.code ?? issue.code;
      return new ApiError(status, code, issue.diagnostics ?? issue.details?.text ?? `HTTP ${status}`);
    }
    return new ApiError(status, `HTTP_${status}`, `The API answered HTTP ${status}.`);
  }
}

/** Can a role do it? Mirrors the API's role sets (the API enforces them anyway). */
export const can = {
  submit: (role: Role): boolean => role === 'submitter' || role === 'operator' || role === 'admin',
  operate: (role: Role): boolean => role === 'operator' || role === 'admin',
  seePhi: (role: Role): boolean => role === 'operator' || role === 'admin',
  admin: (role: Role): boolean => role === 'admin',
};

/** A masked business or idempotency key: the API's keyed-hash token. */
export const isMaskedKey = (value: string | null): boolean => value !== null && value.startsWith('h:');
export const isMaskedResource = (resource: Record<string, unknown>): boolean => resource['masked'] === true;

export class Api {
  readonly #key: string;
  readonly #onUnauthenticated: (error: ApiError) => void;

  constructor(key: string, onUnauthenticated: (error: ApiError) => void = () => {}) {
    this.#key = key;
    this.#onUnauthenticated = onUnauthenticated;
  }

  async request<T>(method: 'GET' | 'POST', path: string, options: { body?: unknown; headers?: Record<string, string>; signal?: AbortSignal } = {}): Promise<T> {
    const headers: Record<string, string> = { accept: 'application/json', authorization: `Bearer ${this.#key}`, ...options.headers };
    if (options.body !== undefined) headers['content-type'] = 'application/json';
    let res: Response;
    try {
      res = await fetch(path, {
        method,
        headers,
        ...(options.body !== undefined ? { body: JSON.stringify(options.body) } : {}),
        ...(options.signal ? { signal: options.signal } : {}),
        cache: 'no-store',
        credentials: 'omit',
      });
    } catch (err) {
      if ((err as Error).name === 'AbortError') throw err;
      throw new ApiError(0, 'NETWORK', 'The engine did not answer (network error).');
    }
    const text = await res.text();
    let body: unknown = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = null;
    }
    if (!res.ok) {
      const error = ApiError.fromOutcome(res.status, body);
      if (res.status === 401) this.#onUnauthenticated(error);
      throw error;
    }
    return body as T;
  }

  me = (signal?: AbortSignal): Promise<Me> => this.request('GET', '/v1/me', signal ? { signal } : {});
  stats = (signal?: AbortSignal): Promise<Stats> => this.request('GET', '/v1/stats', signal ? { signal } : {});
  tenants = (signal?: AbortSignal): Promise<{ tenants: Tenant[] }> => this.request('GET', '/v1/tenants', signal ? { signal } : {});
  tenantHealth = (id: string, signal?: AbortSignal): Promise<TenantHealth> =>
    this.request('GET', `/v1/tenants/${encodeURIComponent(id)}/health`, signal ? { signal } : {});
  resumeTenant = (id: string): Promise<Tenant> => this.request('POST', `/v1/tenants/${encodeURIComponent(id)}/resume`, { body: {} });

  commands = (q: { tenant?: string; state?: string; limit?: number }, signal?: AbortSignal): Promise<{ commands: CommandView[] }> =>
    this.request('GET', `/v1/commands${query(q)}`, signal ? { signal } : {});
  command = (id: string, signal?: AbortSignal): Promise<CommandDetail> => this.request('GET', `/v1/commands/${encodeURIComponent(id)}`, signal ? { signal } : {});
  submit = (command: NewCommand, idempotencyKey?: string): Promise<Accepted> =>
    this.request('POST', '/v1/commands', { body: command, ...(idempotencyKey ? { headers: { 'idempotency-key': idempotencyKey } } : {}) });
  cancelCommand = (id: string, reason: string): Promise<{ command: CommandView }> =>
    this.request('POST', `/v1/commands/${encodeURIComponent(id)}/cancel`, { body: { reason } });

  /** The embedded sandbox EHR (development): 404 API_NOT_FOUND when none runs. */
  sandbox = (signal?: AbortSignal): Promise<{ fhirBaseUrl?: string; faults: unknown; stats: unknown }> =>
    this.request('GET', '/v1/sandbox', signal ? { signal } : {});
  setSandboxFaults = (profile: unknown): Promise<unknown> => this.request('POST', '/v1/sandbox/faults', { body: profile });

  exceptions = (q: { tenant?: string; limit?: number }, signal?: AbortSignal): Promise<{ exceptions: CommandView[] }> =>
    this.request('GET', `/v1/exceptions${query(q)}`, signal ? { signal } : {});
  exception = (id: string, signal?: AbortSignal): Promise<ExceptionDetail> => this.request('GET', `/v1/exceptions/${encodeURIComponent(id)}`, signal ? { signal } : {});
  act = (id: string, action: 'retry' | 'resolve' | 'cancel', reason: string): Promise<{ command: CommandView }> =>
    this.request('POST', `/v1/exceptions/${encodeURIComponent(id)}/${action}`, { body: { reason } });
}

function query(q: Record<string, string | number | undefined>): string {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(q)) if (v !== undefined && v !== '') params.set(k, String(v));
  const s = params.toString();
  return s ? `?${s}` : '';
}
