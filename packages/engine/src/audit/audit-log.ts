import { createRequire } from 'node:module';
import { setTimeout as delay } from 'node:timers/promises';
import { z } from 'zod';
import {
  AuditChainVerifier,
  TetherError,
  isTetherError,
  type AuditEntry,
  type AuditHead,
  type AuditJson,
  type AuditRecord,
  type AuditVerification,
  type TypedEmitter,
} from '@tether/core';
import type { AuthEventMap } from '../auth/index.js';
import type { AuditCommandEvent, AuditFilter, Store } from '../store/index.js';
import { ACTOR_PATTERN, authEventEntry, commandEventEntry } from './entries.js';
import { toAuditEvent, type FhirAuditEvent } from './fhir.js';

/** Default wait (ms) between two tailer passes that found nothing to copy. */
export const DEFAULT_AUDIT_TAIL_INTERVAL_MS = 1_000;
/** Default command events copied per transaction. */
export const DEFAULT_AUDIT_BATCH_SIZE = 200;
/** Records read per page by {@link AuditLog.verify}. */
const VERIFY_PAGE = 1_000;

const ENGINE_VERSION = (createRequire(import.meta.url)('../../package.json') as { version: string }).version;
/** Mapping version recorded when none is configured: the engine's own (its canonical → FHIR mapping). */
export const DEFAULT_MAPPING_VERSION = `tether-engine/${ENGINE_VERSION}`;

const optionsSchema = z
  .object({
    tailIntervalMs: z.number().int().positive().default(DEFAULT_AUDIT_TAIL_INTERVAL_MS),
    batchSize: z.number().int().min(1).max(1_000).default(DEFAULT_AUDIT_BATCH_SIZE),
  })
  .strict();

/** A line for the diagnostic sink: no PHI (codes and counts only). */
export interface AuditLogLine {
  readonly msg: string;
  readonly code?: string;
  readonly count?: number;
}

export interface AuditLogOptions extends z.input<typeof optionsSchema> {
  readonly store: Store;
  /** Epoch-ms clock for records made here (token events, operator actions). Default `Date.now`. */
  readonly clock?: () => number;
  /**
   * The mapping version of a command's delivery (vendor adapter version), recorded with each of its events.
   * Default: {@link DEFAULT_MAPPING_VERSION} for every command.
   */
  readonly mappingVersion?: (event: AuditCommandEvent) => string | null;
  /** Diagnostic sink (failed appends, tailer errors). */
  readonly log?: (line: AuditLogLine) => void;
}

/** What {@link AuditLog.record} takes: an entry whose time defaults to now and details to `{}`. */
export type AuditInput = Omit<AuditEntry, 'at' | 'details'> & { readonly at?: number; readonly details?: { readonly [key: string]: AuditJson } };

/** Options of {@link AuditLog.verify}. */
export interface AuditVerifyRequest {
  /** Seq/hash pairs exported earlier (an external anchor): each must still match. */
  readonly anchors?: readonly AuditHead[];
}

/**
 * The audit log service (DESIGN §10, docs/audit.md): records operator actions and token events, copies every
 * command event (submission, transitions, operator actions on commands) into the hash chain, answers queries,
 * verifies the chain and exports records as FHIR AuditEvent.
 *
 * Command events are not pushed by the worker: they are already written in the same transaction as each state
 * change (`command_events`), and a tailer copies them into the chain in order, with its cursor advanced in the
 * same transaction as the copies. So the write-back path needs no audit hook, a crash loses nothing (the tailer
 * resumes at its cursor) and nothing is copied twice (the cursor moves with the records).
 */
export class AuditLog {
  readonly options: Readonly<z.output<typeof optionsSchema>>;
  readonly #store: Store;
  readonly #clock: () => number;
  readonly #mappingVersion: (event: AuditCommandEvent) => string | null;
  readonly #log: (line: AuditLogLine) => void;
  /** Appends of token events, one after the other so the chain keeps their order. */
  #queue: Promise<void> = Promise.resolve();
  #stopping: AbortController | undefined;
  #loop: Promise<void> | undefined;

  /** Throws TetherError `CONFIG_INVALID` when an option is invalid. Starts nothing. */
  constructor(options: AuditLogOptions) {
    const { store, clock, mappingVersion, log, ...plain } = options;
    const parsed = optionsSchema.safeParse(plain);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new TetherError('CONFIG_INVALID', `Invalid audit log option '${issue?.path.join('.') ?? ''}': ${issue?.message ?? ''}`);
    }
    if (!store) throw new TetherError('CONFIG_INVALID', 'The audit log needs a store.');
    this.options = Object.freeze(parsed.data);
    this.#store = store;
    this.#clock = clock ?? Date.now;
    this.#mappingVersion = mappingVersion ?? (() => DEFAULT_MAPPING_VERSION);
    this.#log = log ?? (() => {});
  }

  /**
   * Appends one record now (operator actions, API key changes, anything not already a command event) and resolves
   * once it is committed. The actor must be `api:<key-id>`, `operator:<key-id>`, `worker:<id>` or `system`;
   * details must hold no PHI. Throws `CONFIG_INVALID` for a malformed entry.
   */
  async record(input: AuditInput): Promise<AuditRecord> {
    if (typeof input.actor !== 'string' || !ACTOR_PATTERN.test(input.actor)) {
      throw new TetherError('CONFIG_INVALID', 'Invalid audit entry: actor must be api:<key-id>, operator:<key-id>, worker:<id> or system.');
    }
    const [record] = await this.#store.audit.append([{ ...input, at: input.at ?? this.#clock(), details: input.details ?? {} }]);
    return record as AuditRecord;
  }

  /**
   * Subscribes to the auth broker's events (token refreshed, refresh failed, tenant paused/resumed, clock skew)
   * and appends a record for each, in emission order. Appends run in the background (an emitter cannot wait);
   * `flush()` waits for them. A failed append is reported to `log` and does not affect the broker. Returns the
   * function that unsubscribes.
   */
  attachBroker(broker: { readonly events: TypedEmitter<AuthEventMap> }): () => void {
    const names: (keyof AuthEventMap)[] = ['token:refreshed', 'token:refresh-failed', 'tenant:paused', 'tenant:resumed', 'auth:clock-skew'];
    const offs = names.map((name) =>
      broker.events.on(name, (payload) => {
        const entry = authEventEntry(name, payload, this.#clock());
        if (entry) this.#enqueue(entry);
      }),
    );
    return () => offs.forEach((off) => off());
  }

  /** Resolves once every record enqueued by broker events so far has been appended (or has failed). */
  async flush(): Promise<void> {
    await this.#queue;
  }

  /**
   * Copies command events into the chain until it is caught up (batches of `batchSize`, each one transaction with
   * the cursor). Returns how many were copied. Safe to call from any number of processes at once.
   */
  async copyCommandEvents(): Promise<number> {
    let total = 0;
    for (;;) {
      const copied = await this.#store.audit.copyCommandEvents((event) => commandEventEntry(event, { mappingVersion: this.#mappingVersion }), this.options.batchSize);
      total += copied.length;
      if (copied.length < this.options.batchSize) return total;
    }
  }

  /** Starts the tailer: copies command events every `tailIntervalMs` until `stop()`. Idempotent. */
  start(): void {
    if (this.#loop) return;
    const stopping = new AbortController();
    this.#stopping = stopping;
    this.#loop = this.#tail(stopping.signal);
  }

  /** Stops the tailer after its current pass and waits for pending token-event appends. */
  async stop(): Promise<void> {
    this.#stopping?.abort();
    await this.#loop;
    this.#loop = undefined;
    this.#stopping = undefined;
    await this.flush();
  }

  /** Records in seq order (see {@link AuditFilter}). */
  async query(filter: AuditFilter = {}): Promise<AuditRecord[]> {
    return this.#store.audit.list(filter);
  }

  /**
   * Reads the whole chain, page by page, and verifies it against the head row and the given anchors. Reports
   * seqs and kinds of problems only, never record contents.
   */
  async verify(request: AuditVerifyRequest = {}): Promise<AuditVerification> {
    const head = await this.#store.audit.head();
    const verifier = new AuditChainVerifier({ head: head ?? null, ...(request.anchors ? { anchors: request.anchors } : {}) });
    let afterSeq = 0;
    for (;;) {
      const page = await this.#store.audit.list({ afterSeq, limit: VERIFY_PAGE });
      for (const record of page) verifier.push(record);
      const last = page[page.length - 1];
      if (!last || page.length < VERIFY_PAGE) break;
      afterSeq = last.seq;
    }
    return verifier.finish();
  }

  /** One record as a FHIR R4 AuditEvent. */
  toAuditEvent(record: AuditRecord): FhirAuditEvent {
    return toAuditEvent(record);
  }

  #enqueue(entry: AuditEntry): void {
    this.#queue = this.#queue.then(
      () =>
        this.#store.audit.append([entry]).then(
          () => undefined,
          (err: unknown) => this.#log({ msg: 'audit: a token event could not be recorded', code: isTetherError(err) ? err.code : 'INTERNAL' }),
        ),
    );
  }

  async #tail(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      try {
        await this.copyCommandEvents();
      } catch (err) {
        // The store is down or the log damaged: nothing was copied (the cursor did not move); try again later.
        this.#log({ msg: 'audit: copying command events failed', code: isTetherError(err) ? err.code : 'INTERNAL' });
      }
      await delay(this.options.tailIntervalMs, undefined, { signal }).catch(() => {});
    }
  }
}
