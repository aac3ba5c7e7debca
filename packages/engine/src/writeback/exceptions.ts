/**
 * The exception queue (DESIGN §5): commands that need a human. A library API for now (the HTTP API and the console
 * come later). Every action is a compare-and-swap transition recorded in `command_events` with the operator and
 * their note: who did what, when, and why.
 */
import { TetherError, isTetherError } from '@tether/core';
import type { EhrClient, FhirResource } from '../client/index.js';
import type { CommandAttemptRecord, CommandEventRecord, CommandRecord, CommandState, Store } from '../store/index.js';
import { businessKeySearch, carriesBusinessKey, contentMatches } from './command.js';
import { assertTransition } from './state-machine.js';

/** Who acts, and why. `reason` is stored in the audit event (it may be free text: it is never logged). */
export interface OperatorAction {
  /** Operator id (no PHI), stored as `operator:<actor>`. */
  readonly actor: string;
  readonly reason: string;
}

/** One resource the EHR holds for the command's business key. */
export interface EhrCopy {
  readonly id: string;
  readonly versionId: string | null;
  /** True when it holds the business key and every field the command sends, unchanged. */
  readonly matchesCommand: boolean;
}

/** What the EHR holds right now for the command's business key. */
export type EhrState =
  | { readonly status: 'found'; readonly copies: readonly EhrCopy[] }
  | { readonly status: 'absent' }
  | { readonly status: 'unavailable'; readonly code: string };

/** Everything an operator needs to decide. */
export interface ExceptionDetail {
  /** The command, including the original payload (`resource`, may hold PHI: show, never log). */
  readonly command: CommandRecord;
  /** The attempts timeline. */
  readonly attempts: readonly CommandAttemptRecord[];
  /** Submission, transitions, operator actions. */
  readonly events: readonly CommandEventRecord[];
  /** The last attempt that got an answer (or an error) from the EHR. */
  readonly lastEhrResponse: { readonly n: number; readonly status: number | null; readonly errorCode: string | null; readonly errorCategory: string | null } | null;
  /** The EHR's current state, found by business-key search. */
  readonly ehrState: EhrState;
}

/** Where each operator action may start. */
const ACTION_FROM: Readonly<Record<'retry' | 'resolve' | 'cancel', readonly CommandState[]>> = {
  retry: ['needs_review', 'rejected'],
  resolve: ['needs_review'],
  cancel: ['needs_review', 'rejected', 'queued', 'retry_wait'],
};

/** The exception queue over a store, with an EHR client to show the EHR's current state. */
export class ExceptionQueue {
  readonly #store: Store;
  readonly #client: EhrClient;
  readonly #clock: () => number;

  constructor(options: { store: Store; client: EhrClient; clock?: () => number }) {
    this.#store = options.store;
    this.#client = options.client;
    this.#clock = options.clock ?? Date.now;
  }

  /** Commands waiting for a human (`needs_review`), oldest first. */
  async list(filter: { tenantId?: string; limit?: number } = {}): Promise<CommandRecord[]> {
    return this.#store.commands.list({ ...filter, states: ['needs_review'] });
  }

  /** One command with its full context. Throws `COMMAND_NOT_FOUND`. */
  async show(id: string): Promise<ExceptionDetail> {
    const command = await this.#get(id);
    const [attempts, events] = await Promise.all([this.#store.commands.attempts(id), this.#store.commands.events(id)]);
    const last = [...attempts].reverse().find((a) => a.ehrStatus !== null || a.errorCode !== null);
    return {
      command,
      attempts,
      events,
      lastEhrResponse: last ? { n: last.n, status: last.ehrStatus, errorCode: last.errorCode, errorCategory: last.errorCategory } : null,
      ehrState: await this.#ehrState(command),
    };
  }

  /**
   * Back to `queued` with a fresh budget (attempts and age). The next attempt reconciles before writing, so a
   * retry after an unclear outcome cannot duplicate. From `needs_review` or `rejected` (e.g. after a mapping fix).
   * It also resets the failure budget of the command's patient (its `operator:retry` event is the reset mark, see
   * `CommandRepo.patientFailures`), and the first attempt after it is sent whatever that budget says.
   */
  async retry(id: string, action: OperatorAction): Promise<CommandRecord> {
    const now = this.#clock();
    return this.#act(id, 'retry', action, { state: 'queued', stateReason: 'operator_retry', attempts: 0, budgetStartedAt: now, nextAttemptAt: now });
  }

  /** The operator confirmed the EHR has it: `verified`, with the note. From `needs_review`. */
  async resolve(id: string, action: OperatorAction): Promise<CommandRecord> {
    return this.#act(id, 'resolve', action, { state: 'verified', stateReason: 'operator_resolved' });
  }

  /** Drop the intent: `cancelled`. From `needs_review`, `rejected`, or while still waiting (`queued`, `retry_wait`). */
  async cancel(id: string, action: OperatorAction): Promise<CommandRecord> {
    return this.#act(id, 'cancel', action, { state: 'cancelled', stateReason: 'operator_cancelled' });
  }

  async #get(id: string): Promise<CommandRecord> {
    const command = await this.#store.commands.get(id);
    if (!command) throw new TetherError('COMMAND_NOT_FOUND');
    return command;
  }

  async #act(
    id: string,
    kind: 'retry' | 'resolve' | 'cancel',
    action: OperatorAction,
    patch: { state: CommandState; stateReason: string } & Record<string, unknown>,
  ): Promise<CommandRecord> {
    if (typeof action.actor !== 'string' || action.actor.length === 0 || typeof action.reason !== 'string' || action.reason.length === 0) {
      throw new TetherError('COMMAND_INVALID', 'An operator action needs an actor and a reason.');
    }
    const command = await this.#get(id);
    if (!ACTION_FROM[kind].includes(command.state)) {
      throw new TetherError('COMMAND_NOT_RETRYABLE', `A command in state ${command.state} cannot be given '${kind}'.`, { details: { state: command.state, action: kind } });
    }
    assertTransition(command.state, patch.state);
    const next = await this.#store.commands.transition(command.id, command.version, { ...patch, leaseOwner: null, leaseExpiresAt: null }, {
      kind: `operator:${kind}`,
      actor: `operator:${action.actor}`,
      reason: action.reason,
    });
    // A worker leased or changed it in the meantime: re-read and decide again.
    if (!next) throw new TetherError('COMMAND_STATE_CONFLICT');
    return next;
  }

  async #ehrState(command: CommandRecord): Promise<EhrState> {
    const tenant = await this.#store.tenants.get(command.tenantId);
    if (!tenant) return { status: 'unavailable', code: 'TENANT_NOT_FOUND' };
    try {
      const res = await this.#client.search({ tenantId: tenant.id, baseUrl: tenant.fhirBaseUrl }, command.context, command.resourceType, businessKeySearch(command.businessKey));
      const copies = (res.body.entry ?? [])
        .map((e) => e['resource'] as FhirResource | undefined)
        .filter((r): r is FhirResource => r?.resourceType === command.resourceType && carriesBusinessKey(r, command.businessKey))
        .map((r) => {
          const meta = r['meta'] as { versionId?: unknown } | undefined;
          return {
            id: r.id ?? '',
            versionId: typeof meta?.versionId === 'string' ? meta.versionId : null,
            matchesCommand: contentMatches(command.resource, r, command.businessKey),
          };
        });
      return copies.length === 0 ? { status: 'absent' } : { status: 'found', copies };
    } catch (err) {
      return { status: 'unavailable', code: isTetherError(err) ? err.code : 'INTERNAL' };
    }
  }
}
