import { createHash } from 'node:crypto';

/**
 * Top-level elements that are not part of a resource's clinical content: `id` and `meta` are assigned by the
 * server (and differ between the intent and the stored copy), `text` is a narrative some EHRs generate. They are
 * removed before hashing so that the load generator's intent and the EHR's final copy hash alike.
 */
export const NON_CONTENT_ELEMENTS: readonly string[] = Object.freeze(['id', 'meta', 'text']);

/**
 * Serialises a JSON value with object keys sorted (by UTF-16 code unit, as `Array.prototype.sort` does) at every
 * level. Arrays keep their order: in FHIR the order of repeating elements is meaningful. Members whose value is
 * `undefined` are dropped and `undefined` array items become `null`, exactly as `JSON.stringify` does, so a value
 * that went through a JSON round trip serialises the same as before.
 *
 * This is written out here rather than imported from `@tether/core` on purpose: the checker must not share code
 * with the engine it audits, or a bug in that code would hide itself.
 */
export function stableStringify(value: unknown): string {
  // JSON.stringify(undefined) (and of functions/symbols) is undefined; at the top level that serialises as null.
  return value === null || typeof value !== 'object' ? (JSON.stringify(value) ?? 'null') : stringifyObject(value);
}

/*
 * Plain loops and string concatenation rather than map/filter/join: the checker hashes every live resource of a
 * run (hundreds of thousands in a nightly), and this was most of its time.
 */
function stringifyObject(value: object): string {
  if (Array.isArray(value)) {
    let out = '[';
    for (let i = 0; i < value.length; i++) {
      const v: unknown = value[i];
      if (i > 0) out += ',';
      out += v === undefined ? 'null' : stableStringify(v);
    }
    return `${out}]`;
  }
  const obj = value as Record<string, unknown>;
  const keys = Object.keys(obj).sort();
  let out = '{';
  let first = true;
  for (const k of keys) {
    const v = obj[k];
    if (v === undefined) continue;
    out += `${first ? '' : ','}${JSON.stringify(k)}:${stableStringify(v)}`;
    first = false;
  }
  return `${out}}`;
}

/**
 * The clinical content of a resource: a shallow copy without the top-level {@link NON_CONTENT_ELEMENTS}. Nested
 * `id`s (element ids, contained resources) are content and stay.
 */
export function canonicalContent(resource: Readonly<Record<string, unknown>>): Record<string, unknown> {
  const content: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(resource)) {
    if (!NON_CONTENT_ELEMENTS.includes(k)) content[k] = v;
  }
  return content;
}

/**
 * SHA-256 (lower-case hex) of the {@link stableStringify stable JSON} of a resource's {@link canonicalContent}.
 *
 * The load generator hashes the resource it is about to submit (business-key identifier included) and writes the
 * hash into the intent ledger; the checker hashes the EHR's final copy the same way and compares. Export and use
 * this very function in the generator: two hand-written canonicalisations would drift.
 *
 * @param resource - a FHIR resource as parsed JSON
 */
export function canonicalContentHash(resource: Readonly<Record<string, unknown>>): string {
  return createHash('sha256').update(stableStringify(canonicalContent(resource))).digest('hex');
}
