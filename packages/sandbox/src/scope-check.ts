import { scopesAllow, type ScopedInteraction } from '@tether/core';
import type { Route } from './fhir/rest.js';
import { Interaction } from './interactions.js';

const SCOPED: ReadonlySet<string> = new Set<ScopedInteraction>([
  'read',
  'vread',
  'history-instance',
  'history-type',
  'search-type',
  'create',
  'update',
  'delete',
]);

/**
 * Checks a route against the granted scope string (SMART v1 or v2). Returns undefined when allowed, otherwise the
 * scope that would be needed (for `WWW-Authenticate: Bearer error="insufficient_scope", scope="..."`).
 * Batch and transaction Bundles are checked entry by entry by the caller; metadata needs no scope.
 *
 * Patient-context scopes are checked by resource type and interaction only: the sandbox does not filter results
 * to the patient's compartment (see docs/sandbox.md).
 */
export function checkScope(grantedScope: string, route: Route): string | undefined {
  if (route.resourceType === undefined || !SCOPED.has(route.interaction)) return undefined;
  if (route.interaction === Interaction.Capabilities) return undefined;
  const decision = scopesAllow(grantedScope, {
    resourceType: route.resourceType,
    interaction: route.interaction as ScopedInteraction,
  });
  return decision.allowed ? undefined : decision.required;
}
