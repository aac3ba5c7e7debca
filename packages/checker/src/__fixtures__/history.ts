import { canonicalContentHash } from '../canonical.js';
import type { CheckInputs, Claim, LedgerEntry, Resource, WriteLogEntry } from '../types.js';

/** The business-key identifier system of the synthetic histories. */
export const SYSTEM = 'urn:tether:bk';

/** `urn:tether:bk|<value>` */
export const bk = (value: string): string => `${SYSTEM}|${value}`;

/**
 * A minimal Observation carrying business key `value` (without id/meta: the fake EHR adds them, which also proves
 * that the checker's hash ignores them).
 */
export function obs(value: string, heartRate: number, extra: Record<string, unknown> = {}): Record<string, unknown> & { resourceType: string } {
  return {
    resourceType: 'Observation',
    status: 'final',
    identifier: [{ system: SYSTEM, value }],
    code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] },
    subject: { reference: 'Patient/p1' },
    valueQuantity: { value: heartRate, unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' },
    ...extra,
  };
}

type Content = Record<string, unknown> & { resourceType: string };

/**
 * Builds a run's history by hand: the generator's intents, the engine's claims, and a tiny fake EHR that keeps a
 * write log (in the sandbox's format) and the live resources. Each test scripts exactly the misbehaviour it wants
 * the checker to catch.
 */
export class History {
  readonly ledger: LedgerEntry[] = [];
  readonly claims: Claim[] = [];
  readonly writeLog: WriteLogEntry[] = [];
  readonly #live = new Map<string, Resource>();
  #seq = 0;
  #ids = 0;

  /** Records an intent; returns the command id. */
  intent(
    commandId: string,
    key: string,
    content: Content,
    opts: { seq?: number; action?: 'create' | 'update'; expect?: 'accept' | 'reject'; canaries?: string[] } = {},
  ): string {
    this.ledger.push({
      commandId,
      businessKey: bk(key),
      resourceType: content.resourceType,
      action: opts.action ?? 'create',
      expect: opts.expect ?? 'accept',
      contentHash: canonicalContentHash(content),
      seq: opts.seq ?? 1,
      ...(opts.canaries ? { canaries: opts.canaries } : {}),
    });
    return commandId;
  }

  claim(commandId: string, state: string, reason?: string, ehrId?: string): this {
    this.claims.push({ commandId, state, ...(reason !== undefined ? { reason } : {}), ...(ehrId !== undefined ? { ehrId } : {}) });
    return this;
  }

  /** The fake EHR applies a create; returns the server id. */
  create(content: Content): string {
    const id = `r${++this.#ids}`;
    this.#write('create', id, content, '1');
    return id;
  }

  update(id: string, content: Content): void {
    const prev = this.#live.get(`${content.resourceType}/${id}`);
    const version = String(Number((prev?.['meta'] as { versionId?: string } | undefined)?.versionId ?? 0) + 1);
    this.#write('update', id, content, version);
  }

  delete(resourceType: string, id: string): void {
    this.#live.delete(`${resourceType}/${id}`);
    this.writeLog.push(this.#entry('delete', resourceType, id, 'x', undefined));
  }

  /** The final read: every live resource, with the server's id, meta and a generated narrative. */
  finalRead(): Resource[] {
    return [...this.#live.values()];
  }

  inputs(extra: Partial<CheckInputs> = {}): CheckInputs {
    return {
      ledger: this.ledger,
      claims: this.claims,
      writeLog: this.writeLog,
      finalRead: this.finalRead(),
      businessKeySystem: SYSTEM,
      ...extra,
    };
  }

  #write(op: 'create' | 'update', id: string, content: Content, versionId: string): void {
    const resource: Resource = {
      ...content,
      id,
      meta: { versionId, lastUpdated: '2026-11-01T00:00:00Z', tag: [{ system: 'urn:tether', code: 'engine' }] },
      text: { status: 'generated', div: '<div xmlns="http://www.w3.org/1999/xhtml">generated</div>' },
    };
    this.#live.set(`${content.resourceType}/${id}`, resource);
    this.writeLog.push(this.#entry(op, content.resourceType, id, versionId, resource));
  }

  #entry(op: WriteLogEntry['op'], resourceType: string, id: string, versionId: string, resource: Resource | undefined): WriteLogEntry {
    const ids = (resource?.['identifier'] as { system?: string; value?: string }[] | undefined) ?? [];
    return {
      seq: ++this.#seq,
      at: new Date(Date.UTC(2026, 10, 1, 0, 0, this.#seq)).toISOString(),
      op,
      resourceType,
      id,
      versionId,
      requestId: `req-${this.#seq}`,
      interaction: op === 'delete' ? 'delete' : op,
      contentHash: resource ? 'sandbox-hash-not-comparable' : null,
      identifiers: ids.map((i) => `${i.system ?? ''}|${i.value ?? ''}`),
    };
  }
}
