import { getStatus, type WithId } from '@medplum/core';
import { FhirRouter, MemoryRepository, type FhirRequest } from '@medplum/fhir-router';
import type { Resource } from '@medplum/fhirtypes';
import { ensureDefinitions } from '../fhir/definitions.js';
import type { FhirTarget, TargetRequest, TargetResponse } from './target.js';

/**
 * Medplum's in-memory repository with a write counter. `updateResource` and `patchResource` of MemoryRepository
 * store through `this.createResource`, so counting `createResource` and successful `deleteResource` calls counts
 * every stored version exactly once.
 */
class CountingMemoryRepository extends MemoryRepository {
  writes = 0;

  override async createResource<T extends Resource>(resource: T): Promise<WithId<T>> {
    const out = await super.createResource(resource);
    this.writes++;
    return out;
  }

  override async deleteResource(resourceType: string, id: string): Promise<void> {
    await super.deleteResource(resourceType, id);
    this.writes++;
  }
}

/**
 * `@medplum/fhir-router`'s `FhirRouter` over its `MemoryRepository`, in-process, the way medplum's own router tests
 * drive it (`router.handleRequest(req, repo)`). Their answer is `[OperationOutcome, Resource?]`; the HTTP status is
 * derived with `getStatus(outcome)`, which is what medplum's HTTP server does, and the body is the resource when there
 * is one, else the outcome.
 *
 * `config.transactions: true` is set on every request: without it medplum processes a `transaction` Bundle as a
 * batch (the flag is a per-project feature switch on medplum's server), which would make the transaction scenario
 * compare the sandbox against batch semantics.
 *
 * Known limits of this stand-in, so its observations are read correctly: MemoryRepository is medplum's test double,
 * not its Postgres repository. It does no validation, keeps no deletion records and has no rollback; several of the
 * differences recorded in KNOWN_DIFFERENCES are properties of MemoryRepository, not of medplum's production server.
 */
export function createMedplumTarget(): FhirTarget {
  // The same loader the sandbox uses: @medplum/core keeps one global schema, and search matching needs the R4
  // SearchParameters in it.
  ensureDefinitions();
  const router = new FhirRouter();
  const repo = new CountingMemoryRepository();
  return {
    name: 'medplum',
    async request(req: TargetRequest): Promise<TargetResponse> {
      const fhirRequest: FhirRequest = {
        method: req.method,
        url: req.path,
        // handleRequest refuses a request whose pathname is set: it derives it from `url`.
        pathname: '',
        params: {},
        query: {},
        // Handlers mutate bodies (the batch processor assigns ids in place): give them a private copy. A form body
        // arrives as the field record medplum's HTTP layer would have parsed it into.
        body: req.form !== undefined ? { ...req.form } : req.body === undefined ? undefined : structuredClone(req.body),
        headers: { ...(req.headers ?? {}) },
        config: { transactions: true },
      };
      const [outcome, resource] = await router.handleRequest(fhirRequest, repo);
      return { status: getStatus(outcome), body: resource ?? outcome };
    },
    writeCount: () => Promise.resolve(repo.writes),
    close: () => Promise.resolve(),
  };
}
