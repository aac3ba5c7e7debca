import type { DifferenceKey, KnownDifference } from './model.js';

/**
 * Every field where the sandbox and `@medplum/fhir-router` (FhirRouter + MemoryRepository, in-process) observe
 * different values, and every field where the sandbox misses the FHIR R4 requirement, keyed `scenario.field`.
 *
 * The conformance test fails when a difference occurs that is not listed here, when a listed one no longer occurs,
 * when the observed values or the verdict no longer match, and when docs/sandbox.md does not carry the section
 * rendered from this list. So this file is the single, checked record of how the sandbox compares.
 *
 * `sandbox-bug-pending` entries are sandbox defects reported to the sandbox owner; they are listed so the suite stays
 * green meanwhile, and the suite fails as soon as one is fixed (then delete the entry and regenerate the docs).
 *
 * Remember what medplum stands for here: its router over MemoryRepository, medplum's in-memory test double. Several
 * `medplum-violates-spec` entries are MemoryRepository properties (no deletion records, no rollback, ids kept on
 * create), not necessarily properties of medplum's production server.
 */
export const KNOWN_DIFFERENCES: Readonly<Record<DifferenceKey, KnownDifference>> = {
  // --- crud ------------------------------------------------------------------------------------------------------
  'crud.createIgnoresClientId': {
    verdict: 'medplum-violates-spec',
    sandbox: true,
    medplum: false,
    note: 'MemoryRepository.createResource keeps an id the client put in the body of a POST; the sandbox assigns its own.',
  },
  'crud.deleteStatus': {
    verdict: 'spec-allows-both',
    sandbox: 204,
    medplum: 200,
    note: 'The sandbox answers 204 without a body; medplum answers 200 with an OperationOutcome. Clients must accept both.',
  },
  'crud.readAfterDeleteStatus': {
    verdict: 'spec-allows-both',
    sandbox: 410,
    medplum: 404,
    note:
      'The sandbox keeps a deletion record and answers 410 Gone. MemoryRepository removes the resource, so a read looks like an unknown id (404), ' +
      'which the spec permits for systems that do not track deleted records; the price is the broken history, see versioning.historyAfterDelete*.',
  },
  'crud.readAfterDeleteErrorClass': {
    verdict: 'spec-allows-both',
    sandbox: 'deleted',
    medplum: 'not-found',
    note: 'Follows from the status: the sandbox says why (IssueType deleted), medplum reports an unknown resource.',
  },
  'crud.deleteAgainStatus': {
    verdict: 'medplum-violates-spec',
    sandbox: 204,
    medplum: 404,
    note: 'Deleting an already deleted resource should have no effect and answer 200/204 (a SHOULD); MemoryRepository.deleteResource throws not-found.',
  },
  'crud.deleteUnknownStatus': {
    verdict: 'medplum-violates-spec',
    sandbox: 204,
    medplum: 404,
    note: 'Delete is idempotent in the spec ("or if the resource does not exist at all ... 200/204/202", a SHOULD); medplum answers 404.',
  },
  'crud.updateAsCreateStatus': {
    verdict: 'medplum-violates-spec',
    sandbox: 201,
    medplum: 200,
    note: 'A PUT that created the resource SHALL answer 201; medplum\'s update handler always answers 200 (allOk).',
  },
  'crud.reviveStatus': {
    verdict: 'medplum-violates-spec',
    sandbox: 201,
    medplum: 200,
    note: 'A PUT that brings a deleted resource back to life SHALL answer 201; medplum answers 200.',
  },

  // --- versioning ------------------------------------------------------------------------------------------------
  'versioning.versionIdsSequential': {
    verdict: 'spec-silent',
    sandbox: true,
    medplum: false,
    note: 'The spec only requires version ids to be unique per resource. The sandbox counts 1, 2, 3...; medplum uses random UUIDs. Never compute the next version id in a client.',
  },
  'versioning.historyOrderOnSecondRead': {
    verdict: 'medplum-violates-spec',
    sandbox: [3, 2, 1],
    medplum: [1, 2, 3],
    note:
      'MemoryRepository.readHistory calls Array.prototype.reverse() on its stored history array, so every read flips the order ' +
      '(the first read is newest first, the second oldest first).',
  },
  'versioning.historyInvariantViolations': {
    verdict: 'medplum-violates-spec',
    sandbox: [],
    medplum: ['bdl-3'],
    note:
      'medplum\'s history entries carry only the resource, no entry.request or entry.response, which breaks bdl-3 and bdl-4; ' +
      '@medplum/core\'s validator (the one the suite applies) reports bdl-3.',
  },
  'versioning.vreadAfterDeleteStatus': {
    verdict: 'medplum-violates-spec',
    sandbox: 200,
    medplum: 404,
    note: 'MemoryRepository.readVersion first reads the current resource, so after a delete every version becomes unreachable.',
  },
  'versioning.historyAfterDeleteStatus': {
    verdict: 'medplum-violates-spec',
    sandbox: 200,
    medplum: 404,
    note: 'History must include deleted resources; MemoryRepository.readHistory fails with not-found once the resource is deleted.',
  },
  'versioning.historyAfterDeleteNewestIsDeletion': {
    verdict: 'medplum-violates-spec',
    sandbox: true,
    medplum: false,
    note: 'The sandbox records the deletion as a history entry (request.method DELETE, no resource); medplum has no history left to show.',
  },

  // --- if-match --------------------------------------------------------------------------------------------------
  'if-match.staleErrorClass': {
    verdict: 'spec-allows-both',
    sandbox: 'conflict',
    medplum: 'processing',
    note: 'Both answer 412; the IssueType differs. Branch on the status (and, for the sandbox, on the Tether error code FHIR_VERSION_CONFLICT).',
  },
  'if-match.malformedStatus': {
    verdict: 'spec-silent',
    sandbox: 400,
    medplum: 200,
    note: 'medplum only understands an If-Match with a quoted value and silently ignores anything else; the sandbox refuses it (FHIR_INVALID_IF_MATCH).',
  },
  'if-match.malformedWrote': {
    verdict: 'spec-silent',
    sandbox: false,
    medplum: true,
    note: 'Consequence of the above: on medplum a client that asked for a version check gets an unconditional write (a possible lost update).',
  },

  // --- transaction -----------------------------------------------------------------------------------------------
  'transaction.failStatus': {
    verdict: 'spec-allows-both',
    sandbox: 400,
    medplum: 412,
    note: 'The sandbox wraps any entry failure in 400 FHIR_TRANSACTION_FAILED (the entry\'s own status is in the details); medplum passes the failing entry\'s 412 through.',
  },
  'transaction.failWrites': {
    verdict: 'medplum-violates-spec',
    sandbox: 0,
    medplum: 1,
    note: 'MemoryRepository.withTransaction runs the callback without any rollback ("MockRepository currently does not support transactions"), so the create processed before the failing update stays.',
  },
  'transaction.failCreatedEntryPersisted': {
    verdict: 'medplum-violates-spec',
    sandbox: false,
    medplum: true,
    note: 'Same cause: the Patient created by the failed transaction is found by search afterwards.',
  },
  'transaction.searchReferenceResolved': {
    verdict: 'medplum-violates-spec',
    sandbox: true,
    medplum: false,
    note:
      'A conditional reference such as Patient?identifier=... inside a transaction: the sandbox resolves it to the one matching resource ' +
      '(no or several matches fail the transaction), as the spec requires; medplum\'s MemoryRepository stack stores it verbatim.',
  },
};
