import { validateResource } from '@medplum/core';
import type { Resource } from '@medplum/fhirtypes';
import { ensureDefinitions } from '../fhir/definitions.js';
import type { TargetResponse } from './target.js';

/**
 * Small, total readers for FHIR JSON answers. Scenarios must turn whatever a server answers into an observation,
 * including answers that are wrong, so none of these throw: a missing element reads as undefined.
 */

export type JsonObject = Readonly<Record<string, unknown>>;

export function asObject(value: unknown): JsonObject | undefined {
  return value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as JsonObject) : undefined;
}

export function asArray(value: unknown): readonly unknown[] {
  return Array.isArray(value) ? value : [];
}

export function asString(value: unknown): string | undefined {
  return typeof value === 'string' ? value : undefined;
}

/** `resource.id` of an answer body. */
export function idOf(res: TargetResponse): string | undefined {
  return asString(asObject(res.body)?.['id']);
}

/** `resource.meta.versionId` of an answer body. */
export function versionIdOf(res: TargetResponse): string | undefined {
  return versionIdOfResource(res.body);
}

export function versionIdOfResource(resource: unknown): string | undefined {
  return asString(asObject(asObject(resource)?.['meta'])?.['versionId']);
}

/**
 * The error class of an answer: `none` for a success, else the FHIR IssueType of the first OperationOutcome issue
 * (`not-found`, `deleted`, `conflict`...), or `no-outcome` when an error came without an OperationOutcome. The HTTP
 * status is observed separately; this is the machine-readable reason a client would branch on.
 */
export function errorClassOf(res: TargetResponse): string {
  if (res.status < 400) return 'none';
  const body = asObject(res.body);
  if (body?.['resourceType'] !== 'OperationOutcome') return 'no-outcome';
  return asString(asObject(asArray(body['issue'])[0])?.['code']) ?? 'no-outcome';
}

/** Spec check shared by error fields: the spec asks for an OperationOutcome, but leaves the issue code open. */
export function isOutcomeClass(value: unknown): boolean {
  return typeof value === 'string' && value !== 'none' && value !== 'no-outcome';
}

/** The entries of a Bundle answer. */
export function entriesOf(res: TargetResponse): readonly JsonObject[] {
  return asArray(asObject(res.body)?.['entry']).flatMap((e) => {
    const o = asObject(e);
    return o ? [o] : [];
  });
}

export function bundleTypeOf(res: TargetResponse): string | null {
  const body = asObject(res.body);
  return body?.['resourceType'] === 'Bundle' ? (asString(body['type']) ?? null) : null;
}

/** Ids of the resources in a Bundle answer, in answer order. */
export function entryIds(res: TargetResponse): string[] {
  return entriesOf(res).flatMap((e) => {
    const id = asString(asObject(e['resource'])?.['id']);
    return id === undefined ? [] : [id];
  });
}

interface Issue {
  readonly severity?: string;
  readonly code?: string;
  readonly details?: { readonly text?: string };
}

/**
 * Keys of the FHIR invariants (`bdl-3`...) a resource breaks, according to `@medplum/core`'s validator. The sandbox
 * uses the same validator on the resources it *receives*; here it judges the Bundles the servers *answer*, which
 * neither server validates. Sorted and de-duplicated so it is a stable observation; issues that are not invariants
 * are reported by their IssueType (`structure`, `value`...).
 */
export function invariantViolations(resource: unknown): string[] {
  ensureDefinitions();
  const body = asObject(resource);
  if (!body || typeof body['resourceType'] !== 'string') return ['not-a-resource'];
  let issues: readonly Issue[];
  try {
    issues = validateResource(body as unknown as Resource);
  } catch (err) {
    issues = (err as { outcome?: { issue?: typeof issues } }).outcome?.issue ?? [{ code: 'exception' }];
  }
  const keys = new Set<string>();
  for (const issue of issues) {
    if (issue.severity === 'warning' || issue.severity === 'information') continue;
    const m = /Constraint (\S+) not met/.exec(issue.details?.text ?? '');
    keys.add(m?.[1] ?? issue.code ?? 'unknown');
  }
  return [...keys].sort();
}

/** URL-encodes a search value (`urn:a|v1` → `urn%3Aa%7Cv1`) so both targets parse the same query. */
export function q(value: string): string {
  return encodeURIComponent(value);
}
