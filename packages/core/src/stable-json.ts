import { createHash } from 'node:crypto';

/**
 * Serialises a JSON value with object keys sorted at every level, so that two semantically equal values give the
 * same string. Arrays keep their order (order is meaningful in FHIR). `undefined` members are dropped, as
 * JSON.stringify does.
 */
export function stableStringify(value: unknown): string {
  if (value === null || typeof value !== 'object') {
    return JSON.stringify(value) ?? 'null';
  }
  if (Array.isArray(value)) {
    return `[${value.map((v) => (v === undefined ? 'null' : stableStringify(v))).join(',')}]`;
  }
  const obj = value as Record<string, unknown>;
  const keys = Object.keys(obj).filter((k) => obj[k] !== undefined).sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${stableStringify(obj[k])}`).join(',')}}`;
}

/** SHA-256 (hex) of the stable serialisation of a value. */
export function stableHash(value: unknown): string {
  return createHash('sha256').update(stableStringify(value)).digest('hex');
}

/**
 * Content hash of a FHIR resource: the stable hash of the resource without the server-assigned parts
 * (`meta.versionId`, `meta.lastUpdated`), so that the client's intent and the stored copy can be compared.
 */
export function resourceContentHash(resource: Record<string, unknown>): string {
  const { meta, ...rest } = resource;
  if (meta && typeof meta === 'object') {
    const { versionId: _v, lastUpdated: _l, ...metaRest } = meta as Record<string, unknown>;
    if (Object.keys(metaRest).length > 0) {
      return stableHash({ ...rest, meta: metaRest });
    }
  }
  return stableHash(rest);
}
