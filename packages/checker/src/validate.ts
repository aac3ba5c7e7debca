import { CheckerInputError } from './errors.js';
import type { Claim, LedgerEntry, Resource, WriteLogEntry } from './types.js';

/**
 * Shape checks for the four record kinds. Each takes the parsed value and a location (`file:line` from the NDJSON
 * reader, or `ledger[3]` when {@link check} is called with arrays) and returns a typed record or throws
 * {@link CheckerInputError} naming the location and the field.
 *
 * Fields the checker does not read are allowed and ignored (the generator may record a source message id, the
 * engine an attempt count): rejecting them would couple the checker to every producer's version. Fields it does
 * read are checked strictly: an audit that guesses at its input proves nothing.
 */

type Json = Record<string, unknown>;

const SHA256_HEX = /^[0-9a-f]{64}$/;

function fail(where: string, message: string): never {
  const m = /^(.*):(\d+)$/.exec(where);
  throw new CheckerInputError(`${where}: ${message}`, m ? { file: m[1] ?? where, line: Number(m[2]) } : { file: where });
}

function asObject(value: unknown, where: string, what: string): Json {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) fail(where, `expected a JSON object (${what})`);
  return value as Json;
}

function str(o: Json, key: string, where: string, opts: { allowEmpty?: boolean } = {}): string {
  const v = o[key];
  if (typeof v !== 'string' || (!opts.allowEmpty && v.length === 0)) fail(where, `'${key}' must be a non-empty string`);
  return v;
}

function optStr(o: Json, key: string, where: string): string | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') fail(where, `'${key}' must be a string when present`);
  return v;
}

function finite(o: Json, key: string, where: string): number {
  const v = o[key];
  if (typeof v !== 'number' || !Number.isFinite(v)) fail(where, `'${key}' must be a finite number`);
  return v;
}

function oneOf<T extends string>(o: Json, key: string, allowed: readonly T[], where: string): T {
  const v = o[key];
  if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v)) {
    fail(where, `'${key}' must be one of ${allowed.map((a) => `'${a}'`).join(', ')}`);
  }
  return v as T;
}

/**
 * Splits a `system|value` business key. The system may be empty (`|value`, an identifier without a system, as in
 * FHIR token search); the value may not. The split is at the FIRST `|`: a system is a URI and carries none.
 */
export function splitBusinessKey(key: string): { system: string; value: string } | undefined {
  const bar = key.indexOf('|');
  if (bar < 0 || bar === key.length - 1) return undefined;
  return { system: key.slice(0, bar), value: key.slice(bar + 1) };
}

/** Validates one intent-ledger record. */
export function toLedgerEntry(value: unknown, where: string): LedgerEntry {
  const o = asObject(value, where, 'an intent ledger entry');
  const businessKey = str(o, 'businessKey', where);
  if (!splitBusinessKey(businessKey)) fail(where, `'businessKey' must be 'system|value'`);
  const contentHash = str(o, 'contentHash', where).toLowerCase();
  if (!SHA256_HEX.test(contentHash)) fail(where, `'contentHash' must be a SHA-256 hex digest`);
  let canaries: string[] | undefined;
  if (o['canaries'] !== undefined) {
    const c = o['canaries'];
    // An empty canary would "occur" in every log; refuse it rather than report a meaningless hit.
    if (!Array.isArray(c) || !c.every((x): x is string => typeof x === 'string' && x.trim().length > 0)) {
      fail(where, `'canaries' must be an array of non-empty strings`);
    }
    canaries = c;
  }
  return {
    commandId: str(o, 'commandId', where),
    businessKey,
    resourceType: str(o, 'resourceType', where),
    action: oneOf(o, 'action', ['create', 'update'] as const, where),
    expect: oneOf(o, 'expect', ['accept', 'reject'] as const, where),
    contentHash,
    seq: finite(o, 'seq', where),
    ...(canaries ? { canaries } : {}),
  };
}

/** Validates one engine-claim record. */
export function toClaim(value: unknown, where: string): Claim {
  const o = asObject(value, where, 'an engine claim');
  const reason = optStr(o, 'reason', where);
  const ehrId = optStr(o, 'ehrId', where);
  return {
    commandId: str(o, 'commandId', where),
    state: str(o, 'state', where),
    ...(reason !== undefined ? { reason } : {}),
    ...(ehrId !== undefined ? { ehrId } : {}),
  };
}

/** Validates one receipt: a command id, or an object `{ commandId }` (a line of a receipts NDJSON file). */
export function toReceipt(value: unknown, where: string): string {
  if (typeof value === 'string' && value.length > 0) return value;
  return str(asObject(value, where, 'a receipt'), 'commandId', where);
}

/** Validates one EHR write-log record. */
export function toWriteLogEntry(value: unknown, where: string): WriteLogEntry {
  const o = asObject(value, where, 'a write-log entry');
  const ids = o['identifiers'];
  if (!Array.isArray(ids) || !ids.every((x): x is string => typeof x === 'string')) {
    fail(where, `'identifiers' must be an array of 'system|value' strings`);
  }
  const contentHash = o['contentHash'];
  if (contentHash !== undefined && contentHash !== null && typeof contentHash !== 'string') {
    fail(where, `'contentHash' must be a string or null when present`);
  }
  return {
    seq: finite(o, 'seq', where),
    at: optStr(o, 'at', where) ?? '',
    op: oneOf(o, 'op', ['create', 'update', 'delete'] as const, where),
    resourceType: str(o, 'resourceType', where),
    id: str(o, 'id', where),
    versionId: optStr(o, 'versionId', where) ?? '',
    requestId: optStr(o, 'requestId', where) ?? '',
    interaction: optStr(o, 'interaction', where) ?? '',
    contentHash: contentHash ?? null,
    identifiers: ids,
  };
}

/**
 * Validates one final-read resource. `id` is required: the checker tells resources apart by `Type/id`, and a
 * resource read back from an EHR always has one.
 */
export function toResource(value: unknown, where: string): Resource {
  const o = asObject(value, where, 'a FHIR resource');
  str(o, 'resourceType', where);
  str(o, 'id', where);
  if (o['identifier'] !== undefined && !Array.isArray(o['identifier'])) fail(where, `'identifier' must be an array`);
  return o as Resource;
}
