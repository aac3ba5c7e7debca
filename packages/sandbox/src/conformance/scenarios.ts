import { isDeepStrictEqual } from 'node:util';
import {
  asArray,
  asObject,
  asString,
  bundleTypeOf,
  entriesOf,
  entryIds,
  errorClassOf,
  idOf,
  invariantViolations,
  isOutcomeClass,
  q,
  versionIdOf,
  versionIdOfResource,
} from './fhir-json.js';
import { contract, defineScenario, specEquals, specOneOf, specWhere, type Scenario } from './model.js';
import type { FhirTarget, TargetRequest, TargetResponse } from './target.js';

/**
 * The conformance scenarios. Each one starts from an empty server, drives it only through {@link FhirTarget} and
 * reduces what it saw to an observation record of plain values: status codes, booleans, counts, and labels instead
 * of server-assigned ids, so the records of two servers (and of two runs) can be compared with deep equality.
 *
 * Every field carries its expectation next to it. `spec` expectations cite the FHIR R4 section (relative to
 * https://hl7.org/fhir/R4/) and paraphrase the requirement; `contract` expectations are sandbox behaviour the spec
 * leaves open, written down in docs/sandbox.md.
 */

const SYS = 'urn:tether:conformance';
const SYS_A = 'urn:tether:conformance:a';
const SYS_B = 'urn:tether:conformance:b';

/**
 * A Patient with one business identifier (Patient has no required elements, so it is valid everywhere). `system`
 * null gives an identifier without a system (null rather than undefined, which would select the default).
 */
function patient(key: string, extra: Record<string, unknown> = {}, system: string | null = SYS): Record<string, unknown> {
  return {
    resourceType: 'Patient',
    identifier: [system === null ? { value: key } : { system, value: key }],
    ...extra,
  };
}

/** A minimal valid Observation (status and code are required) about `subject`. */
function observation(key: string, subject: string): Record<string, unknown> {
  return {
    resourceType: 'Observation',
    status: 'final',
    identifier: [{ system: SYS, value: key }],
    code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] },
    subject: { reference: subject },
  };
}

/** Sends a request and reports how many versions it stored (the write-count delta). */
async function send(t: FhirTarget, req: TargetRequest): Promise<{ res: TargetResponse; writes: number }> {
  const before = await t.writeCount();
  const res = await t.request(req);
  return { res, writes: (await t.writeCount()) - before };
}

function get(t: FhirTarget, path: string): Promise<TargetResponse> {
  return t.request({ method: 'GET', path });
}

/** The resources a `identifier=` search finds, in answer order. */
async function findByIdentifier(t: FhirTarget, type: string, token: string): Promise<readonly Record<string, unknown>[]> {
  const res = await get(t, `${type}?identifier=${q(token)}`);
  return entriesOf(res).flatMap((e) => {
    const r = asObject(e['resource']);
    return r ? [r] : [];
  });
}

function referenceOf(resource: Record<string, unknown> | undefined, element: string): string | undefined {
  return asString(asObject(resource?.[element])?.['reference']);
}

const is4xxOr5xx = (v: unknown): boolean => typeof v === 'number' && v >= 400 && v < 600;
const ANY_OUTCOME = 'an OperationOutcome with any issue code';

// ---------------------------------------------------------------------------------------------------------------

const crud = defineScenario({
  id: 'crud',
  title: 'CRUD: create, read, update, delete, read after delete',
  fields: {
    createStatus: specEquals(201, 'http.html#create', 'A successful create answers 201 Created.'),
    createIgnoresClientId: specEquals(true, 'http.html#create', 'If the resource in a create carries an id, the server SHALL ignore it and assign its own.'),
    readStatus: specEquals(200, 'http.html#read', 'A read of an existing resource answers 200.'),
    readReturnsCreated: specEquals(true, 'http.html#read', 'A read returns the current content of the resource.'),
    updateStatus: specEquals(200, 'http.html#update', 'An update of an existing resource answers 200 OK.'),
    readAfterUpdateSeesUpdate: specEquals(true, 'http.html#update', 'After an update, a read returns the new content.'),
    deleteStatus: specOneOf([200, 202, 204], 'http.html#delete', 'A successful delete answers 200 (with a body), 204 (without) or 202 (non-committal).'),
    readAfterDeleteStatus: specOneOf(
      [410, 404],
      'http.html#read',
      'A read of a deleted resource answers 410 Gone; "systems that do not track deleted records will treat deleted records as an unknown resource" (404).',
    ),
    readAfterDeleteErrorClass: specWhere(ANY_OUTCOME, isOutcomeClass, 'http.html#read', 'Errors SHOULD come with an OperationOutcome; the issue code is not prescribed.'),
    deleteAgainStatus: specOneOf(
      [200, 204],
      'http.html#delete',
      'Deleting a resource that is already deleted has no effect and should answer 200 or 204 (SHOULD, not SHALL).',
    ),
    deleteUnknownStatus: specOneOf(
      [200, 202, 204],
      'http.html#delete',
      'Deleting a resource that does not exist at all should answer 200, 204 or 202, like a successful delete (SHOULD).',
    ),
    readUnknownStatus: specEquals(404, 'http.html#read', 'A read of an unknown resource answers 404 Not Found.'),
    updateAsCreateStatus: specEquals(
      201,
      'http.html#update',
      'A server that allows update-as-create SHALL answer 201 Created (not 200) when the PUT created the resource.',
    ),
    reviveStatus: specEquals(
      201,
      'http.html#update',
      'An update that brings a deleted resource back to life answers 201 Created ("if the resource was created (or brought back to life/re-created)").',
    ),
    writes: specEquals(
      5,
      'http.html#delete',
      'create + update + delete + update-as-create + revive store one version each; deleting a deleted or unknown resource has no effect.',
    ),
  },
  async run(t) {
    const before = await t.writeCount();
    const created = await t.request({
      method: 'POST',
      path: 'Patient',
      body: patient('crud-1', { id: 'client-supplied-id', gender: 'male' }),
    });
    const id = idOf(created) ?? 'no-id';
    const read = await get(t, `Patient/${id}`);
    const readBody = asObject(read.body);
    const updated = await t.request({ method: 'PUT', path: `Patient/${id}`, body: patient('crud-1', { id, gender: 'female' }) });
    const afterUpdate = await get(t, `Patient/${id}`);
    const deleted = await t.request({ method: 'DELETE', path: `Patient/${id}` });
    const afterDelete = await get(t, `Patient/${id}`);
    const deleteAgain = await t.request({ method: 'DELETE', path: `Patient/${id}` });
    const deleteUnknown = await t.request({ method: 'DELETE', path: 'Patient/never-existed-1' });
    const readUnknown = await get(t, 'Patient/never-existed-2');
    const upsert = await t.request({ method: 'PUT', path: 'Patient/crud-upsert-1', body: patient('crud-upsert', { id: 'crud-upsert-1' }) });
    const revive = await t.request({ method: 'PUT', path: `Patient/${id}`, body: patient('crud-1', { id, gender: 'other' }) });
    return {
      createStatus: created.status,
      createIgnoresClientId: idOf(created) !== undefined && idOf(created) !== 'client-supplied-id',
      readStatus: read.status,
      readReturnsCreated:
        read.status === 200 &&
        readBody?.['id'] === id &&
        readBody['gender'] === 'male' &&
        asString(asObject(asArray(readBody['identifier'])[0])?.['value']) === 'crud-1',
      updateStatus: updated.status,
      readAfterUpdateSeesUpdate: asObject(afterUpdate.body)?.['gender'] === 'female',
      deleteStatus: deleted.status,
      readAfterDeleteStatus: afterDelete.status,
      readAfterDeleteErrorClass: errorClassOf(afterDelete),
      deleteAgainStatus: deleteAgain.status,
      deleteUnknownStatus: deleteUnknown.status,
      readUnknownStatus: readUnknown.status,
      updateAsCreateStatus: upsert.status,
      reviveStatus: revive.status,
      writes: (await t.writeCount()) - before,
    };
  },
});

// ---------------------------------------------------------------------------------------------------------------

const versioning = defineScenario({
  id: 'versioning',
  title: 'Versioning: versionId per update, vread, instance history order, history after delete',
  fields: {
    versionIdsDistinct: specEquals(
      true,
      'http.html#concurrency',
      'Version ids may be generated in any fashion but are unique within the address space of all versions of the same resource.',
    ),
    versionIdsSequential: contract(
      true,
      'docs/sandbox.md#versioning (spec: http.html#concurrency leaves the format open)',
      'The sandbox numbers versions 1, 2, 3... per resource, so W/"n" ETags are predictable in tests.',
    ),
    vreadFirstStatus: specEquals(200, 'http.html#vread', 'vread of an existing version answers 200.'),
    vreadFirstIsFirstVersion: specEquals(true, 'http.html#vread', 'vread returns the content of exactly that version.'),
    vreadUnknownVersionStatus: specEquals(404, 'http.html#vread', 'vread of a version that does not exist answers 404.'),
    historyStatus: specEquals(200, 'http.html#history', 'Instance history answers 200 with a history Bundle.'),
    historyOrder: specEquals([3, 2, 1], 'http.html#history', 'History is sorted with oldest versions last (newest first).'),
    historyOrderOnSecondRead: specEquals([3, 2, 1], 'http.html#history', 'The order is a property of the interaction, so reading history twice gives the same order.'),
    historyInvariantViolations: specEquals(
      [],
      'bundle.html',
      'A history Bundle satisfies the Bundle invariants, among them bdl-3 (entry.request is mandatory in a history) and bdl-4 (entry.response likewise).',
    ),
    vreadAfterDeleteStatus: specEquals(
      200,
      'http.html#delete',
      'For servers that keep version history, delete does not remove it: vread of an earlier version still answers 200.',
    ),
    historyAfterDeleteStatus: specEquals(200, 'http.html#history', 'History stays readable after a delete and includes deleted resources.'),
    historyAfterDeleteNewestIsDeletion: specEquals(
      true,
      'http.html#history',
      'The deletion is a history entry of its own: request.method DELETE and no resource, newest first.',
    ),
    writes: specEquals(4, 'http.html#delete', 'Three versions plus the deletion (which is a version of its own in the history).'),
  },
  async run(t) {
    const before = await t.writeCount();
    const v1 = await t.request({ method: 'POST', path: 'Patient', body: patient('ver-1', { gender: 'male' }) });
    const id = idOf(v1) ?? 'no-id';
    const v2 = await t.request({ method: 'PUT', path: `Patient/${id}`, body: patient('ver-1', { id, gender: 'female' }) });
    const v3 = await t.request({ method: 'PUT', path: `Patient/${id}`, body: patient('ver-1', { id, gender: 'other' }) });
    const versions = [versionIdOf(v1), versionIdOf(v2), versionIdOf(v3)];
    const first = versions[0] ?? 'no-version';
    // Ordinal (1-based) of a version id among the three we wrote; 0 when it is none of them.
    const ordinal = (entry: Record<string, unknown>): number => {
      const fromResource = versionIdOfResource(entry['resource']);
      const etag = asString(asObject(entry['response'])?.['etag']);
      const fromEtag = etag === undefined ? undefined : /"([^"]+)"/.exec(etag)?.[1];
      const v = fromResource ?? fromEtag;
      return v === undefined ? 0 : versions.indexOf(v) + 1;
    };

    const vreadFirst = await get(t, `Patient/${id}/_history/${first}`);
    const vreadUnknown = await get(t, `Patient/${id}/_history/424242`);
    const history = await get(t, `Patient/${id}/_history`);
    const historyAgain = await get(t, `Patient/${id}/_history`);
    await t.request({ method: 'DELETE', path: `Patient/${id}` });
    const vreadAfterDelete = await get(t, `Patient/${id}/_history/${first}`);
    const historyAfterDelete = await get(t, `Patient/${id}/_history`);
    const newest = entriesOf(historyAfterDelete)[0];

    return {
      versionIdsDistinct: versions.every((v) => v !== undefined) && new Set(versions).size === 3,
      versionIdsSequential: isDeepStrictEqual(versions, ['1', '2', '3']),
      vreadFirstStatus: vreadFirst.status,
      vreadFirstIsFirstVersion: versionIdOf(vreadFirst) === first && asObject(vreadFirst.body)?.['gender'] === 'male',
      vreadUnknownVersionStatus: vreadUnknown.status,
      historyStatus: history.status,
      historyOrder: entriesOf(history).map(ordinal),
      historyOrderOnSecondRead: entriesOf(historyAgain).map(ordinal),
      historyInvariantViolations: invariantViolations(history.body),
      vreadAfterDeleteStatus: vreadAfterDelete.status,
      historyAfterDeleteStatus: historyAfterDelete.status,
      historyAfterDeleteNewestIsDeletion:
        newest !== undefined && asObject(newest['request'])?.['method'] === 'DELETE' && newest['resource'] === undefined,
      writes: (await t.writeCount()) - before,
    };
  },
});

// ---------------------------------------------------------------------------------------------------------------

const ifMatch = defineScenario({
  id: 'if-match',
  title: 'If-Match: current version, stale version, malformed header',
  fields: {
    currentStatus: specEquals(200, 'http.html#concurrency', 'An update whose If-Match names the current version proceeds.'),
    currentWrote: specEquals(true, 'http.html#concurrency', 'The matching update is applied.'),
    staleStatus: specEquals(
      412,
      'http.html#concurrency',
      'If the version in If-Match does not match the current one, the server answers 412 Precondition Failed instead of updating.',
    ),
    staleWrote: specEquals(false, 'http.html#concurrency', '"Instead of updating": a stale If-Match writes nothing.'),
    staleErrorClass: specWhere(ANY_OUTCOME, isOutcomeClass, 'http.html#concurrency', 'The 412 SHOULD carry an OperationOutcome; the issue code is not prescribed.'),
    malformedStatus: contract(
      400,
      'docs/sandbox.md#if-match (spec: http.html#concurrency only defines the W/"n" form)',
      'An If-Match that is not a version ETag (here: `three`) is refused with 400 FHIR_INVALID_IF_MATCH.',
    ),
    malformedWrote: contract(
      false,
      'docs/sandbox.md#if-match',
      'A client that sent a precondition never gets an unconditional write: a malformed If-Match writes nothing.',
    ),
  },
  async run(t) {
    const created = await t.request({ method: 'POST', path: 'Patient', body: patient('im-1') });
    const id = idOf(created) ?? 'no-id';
    const v1 = versionIdOf(created) ?? 'no-version';
    const body = (gender: string): Record<string, unknown> => patient('im-1', { id, gender });
    const current = await send(t, { method: 'PUT', path: `Patient/${id}`, body: body('female'), headers: { 'if-match': `W/"${v1}"` } });
    const stale = await send(t, { method: 'PUT', path: `Patient/${id}`, body: body('male'), headers: { 'if-match': `W/"${v1}"` } });
    const malformed = await send(t, { method: 'PUT', path: `Patient/${id}`, body: body('other'), headers: { 'if-match': 'three' } });
    return {
      currentStatus: current.res.status,
      currentWrote: current.writes > 0,
      staleStatus: stale.res.status,
      staleWrote: stale.writes > 0,
      staleErrorClass: errorClassOf(stale.res),
      malformedStatus: malformed.res.status,
      malformedWrote: malformed.writes > 0,
    };
  },
});

// ---------------------------------------------------------------------------------------------------------------

const conditionalCreate = defineScenario({
  id: 'conditional-create',
  title: 'Conditional create (If-None-Exist): no match, one match, several matches',
  fields: {
    noneStatus: specEquals(201, 'http.html#ccreate', 'No match: the server performs the create (201).'),
    noneWrote: specEquals(true, 'http.html#ccreate', 'No match: the resource is created.'),
    oneStatus: specEquals(200, 'http.html#ccreate', 'One match: the server ignores the POST and answers 200 OK.'),
    oneWrote: specEquals(false, 'http.html#ccreate', 'One match: nothing is written.'),
    oneReturnsExisting: specEquals(true, 'http.html#ccreate', 'One match: the answer identifies the existing resource (its id).'),
    severalStatus: specEquals(412, 'http.html#ccreate', 'Several matches: 412 Precondition Failed (criteria not selective enough).'),
    severalWrote: specEquals(false, 'http.html#ccreate', 'Several matches: nothing is written.'),
    severalErrorClass: specWhere(ANY_OUTCOME, isOutcomeClass, 'http.html#ccreate', 'The 412 SHOULD carry an OperationOutcome.'),
    resourcesWithKeyAfter: specEquals(1, 'http.html#ccreate', 'Repeating a conditional create leaves exactly one resource with the key.'),
  },
  async run(t) {
    const cond = (key: string): Readonly<Record<string, string>> => ({ 'if-none-exist': `identifier=${q(`${SYS}|${key}`)}` });
    const none = await send(t, { method: 'POST', path: 'Patient', body: patient('cc-1'), headers: cond('cc-1') });
    const one = await send(t, { method: 'POST', path: 'Patient', body: patient('cc-1'), headers: cond('cc-1') });
    await t.request({ method: 'POST', path: 'Patient', body: patient('cc-dup') });
    await t.request({ method: 'POST', path: 'Patient', body: patient('cc-dup') });
    const several = await send(t, { method: 'POST', path: 'Patient', body: patient('cc-dup'), headers: cond('cc-dup') });
    return {
      noneStatus: none.res.status,
      noneWrote: none.writes > 0,
      oneStatus: one.res.status,
      oneWrote: one.writes > 0,
      oneReturnsExisting: idOf(one.res) !== undefined && idOf(one.res) === idOf(none.res),
      severalStatus: several.res.status,
      severalWrote: several.writes > 0,
      severalErrorClass: errorClassOf(several.res),
      resourcesWithKeyAfter: (await findByIdentifier(t, 'Patient', `${SYS}|cc-1`)).length,
    };
  },
});

// ---------------------------------------------------------------------------------------------------------------

const identifierSearch = defineScenario({
  id: 'identifier-search',
  title: 'Identifier search: system|value, value only, |value, system|, no match, POST _search, deleted resources',
  fields: {
    searchStatus: specEquals(200, 'http.html#search', 'A search answers 200 with a Bundle.'),
    searchBundleType: specEquals('searchset', 'http.html#search', 'The answer is a Bundle of type searchset.'),
    systemAndValue: specEquals(['A'], 'search.html#token', '[system]|[code] matches identifiers with that system and value only.'),
    valueOnly: specEquals(['A', 'B', 'D'], 'search.html#token', '[code] alone matches that value in any system, or none.'),
    noSystem: specEquals(['D'], 'search.html#token', '|[code] matches that value only on identifiers without a system.'),
    systemOnly: specEquals(['A', 'C'], 'search.html#token', '[system]| matches any value in that system.'),
    noMatch: specEquals([], 'search.html#token', 'A value nobody has matches nothing.'),
    noMatchStatus: specEquals(200, 'http.html#search', 'An empty result is still 200 with an empty searchset, not 404.'),
    postSearchStatus: specEquals(
      200,
      'http.html#search',
      'Servers that support search SHALL also support POST [base]/[type]/_search with an application/x-www-form-urlencoded body.',
    ),
    postSearch: specEquals(['A'], 'http.html#search', 'The POST form of a search has exactly the semantics of the GET form.'),
    deletedNotFound: specEquals([], 'http.html#delete', 'A deleted resource is no longer found by search.'),
    searchInvariantViolations: specEquals([], 'bundle.html', 'The searchset Bundle satisfies the Bundle invariants.'),
  },
  async run(t) {
    const labels = new Map<string, string>();
    const make = async (label: string, key: string, system: string | null): Promise<void> => {
      const res = await t.request({ method: 'POST', path: 'Patient', body: patient(key, {}, system) });
      const id = idOf(res);
      if (id !== undefined) labels.set(id, label);
    };
    await make('A', 'k1', SYS_A);
    await make('B', 'k1', SYS_B);
    await make('C', 'k2', SYS_A);
    await make('D', 'k1', null);
    // Labels instead of ids; sorted because the spec defines no order without _sort.
    const search = async (token: string): Promise<{ res: TargetResponse; found: string[] }> => {
      const res = await get(t, `Patient?identifier=${q(token)}`);
      return { res, found: entryIds(res).map((id) => labels.get(id) ?? 'unknown').sort() };
    };
    const systemAndValue = await search(`${SYS_A}|k1`);
    const valueOnly = await search('k1');
    const noSystem = await search('|k1');
    const systemOnly = await search(`${SYS_A}|`);
    const noMatch = await search(`${SYS_A}|nobody-has-this`);
    const postSearch = await t.request({ method: 'POST', path: 'Patient/_search', form: { identifier: `${SYS_A}|k1` } });
    const cId = [...labels].find(([, label]) => label === 'C')?.[0] ?? 'no-id';
    await t.request({ method: 'DELETE', path: `Patient/${cId}` });
    const deleted = await search(`${SYS_A}|k2`);
    return {
      searchStatus: valueOnly.res.status,
      searchBundleType: bundleTypeOf(valueOnly.res),
      systemAndValue: systemAndValue.found,
      valueOnly: valueOnly.found,
      noSystem: noSystem.found,
      systemOnly: systemOnly.found,
      noMatch: noMatch.found,
      noMatchStatus: noMatch.res.status,
      postSearchStatus: postSearch.status,
      postSearch: entryIds(postSearch).map((id) => labels.get(id) ?? 'unknown').sort(),
      deletedNotFound: deleted.found,
      searchInvariantViolations: invariantViolations(valueOnly.res.body),
    };
  },
});

// ---------------------------------------------------------------------------------------------------------------

// Fixed placeholders: medplum only rewrites lower-case RFC 4122 shaped urn:uuid values.
const URN_PATIENT = 'urn:uuid:0d4c6a9e-1f0b-4c1e-9a57-5b0e6f1c2a01';
const URN_OBS = 'urn:uuid:0d4c6a9e-1f0b-4c1e-9a57-5b0e6f1c2a02';
const URN_COND_1 = 'urn:uuid:0d4c6a9e-1f0b-4c1e-9a57-5b0e6f1c2a03';
const URN_COND_2 = 'urn:uuid:0d4c6a9e-1f0b-4c1e-9a57-5b0e6f1c2a04';
/** An extension of type uri that carries a urn:uuid, to see whether non-Reference links are rewritten too. */
const SOURCE_EXTENSION = 'urn:tether:conformance:extension:source-patient';

function transactionOf(entries: readonly Record<string, unknown>[]): Record<string, unknown> {
  return { resourceType: 'Bundle', type: 'transaction', entry: entries };
}

/** `response.status` of each entry, reduced to the 3-digit code the spec requires it to start with. */
function entryStatuses(res: TargetResponse): string[] {
  return entriesOf(res).map((e) => (asString(asObject(e['response'])?.['status']) ?? '').slice(0, 3));
}

const transaction = defineScenario({
  id: 'transaction',
  title: 'Transaction: urn:uuid references, all-or-nothing, conditional create identities, duplicate identities, conditional references',
  fields: {
    okStatus: specEquals(200, 'http.html#transaction', 'A transaction whose entries all succeed answers 200 OK with a response Bundle.'),
    okBundleType: specEquals('transaction-response', 'http.html#transaction-response', 'The answer is a Bundle of type transaction-response.'),
    okEntryStatuses: specEquals(['201', '201'], 'bundle-definitions.html#Bundle.entry.response.status', 'Each entry response status starts with the entry\'s HTTP code: 201 for a create.'),
    okResponseInvariantViolations: specEquals([], 'bundle.html', 'The transaction-response Bundle satisfies the Bundle invariants.'),
    okReferenceResolved: specEquals(
      true,
      'http.html#trules',
      'A reference to another entry\'s urn:uuid fullUrl is replaced by the id the server assigned to that entry.',
    ),
    okUriElementRewritten: specEquals(
      true,
      'http.html#trules',
      'Servers SHALL replace all matching links in the bundle, including elements of type uri (here an extension valueUri holding the urn:uuid), not only Reference.reference.',
    ),
    okWrites: specEquals(2, 'http.html#transaction', 'Both creates are applied.'),
    failStatus: specWhere('any 4xx or 5xx', is4xxOr5xx, 'http.html#transaction', 'If any entry fails, the server rejects the whole transaction with a 400- or 500-class status.'),
    failErrorClass: specWhere(ANY_OUTCOME, isOutcomeClass, 'http.html#transaction', 'The failure SHOULD carry an OperationOutcome.'),
    failWrites: specEquals(0, 'http.html#transaction', 'A failed transaction SHALL apply nothing: "accept all actions ... or reject all resources".'),
    failCreatedEntryPersisted: specEquals(false, 'http.html#transaction', 'The create that succeeded before the failing entry must not survive.'),
    failTargetUnchanged: specEquals(true, 'http.html#transaction', 'The resource the failing entry addressed keeps its version.'),
    conditionalEntryStatuses: specEquals(
      ['201', '200'],
      'http.html#ccreate',
      'Inside a transaction, a conditional create with one match is ignored and its entry answers 200.',
    ),
    conditionalRefWhenReferrerFirst: specEquals(
      true,
      'http.html#trules',
      'A reference to the fullUrl of a conditional create that matched resolves to the existing resource; "the outcome of processing the transaction SHALL NOT depend on the order of the resources".',
    ),
    conditionalRefWhenConditionalFirst: specEquals(true, 'http.html#trules', 'Same, with the conditional create listed before the entry that references it.'),
    conditionalWrites: specEquals(2, 'http.html#ccreate', 'Only the two Observations are written; the matched Patient is not created again.'),
    duplicateIdentityStatus: specWhere(
      'any 4xx or 5xx',
      is4xxOr5xx,
      'http.html#trules',
      'If any resource identities overlap in the DELETE/POST/PUT steps, the transaction SHALL fail ("a resource can only appear in a transaction once").',
    ),
    duplicateIdentityWrites: specEquals(0, 'http.html#trules', 'The failed transaction applies nothing.'),
    searchReferenceResolved: specEquals(
      true,
      'http.html#trules',
      'Conditional references: in a transaction a reference may be a search URI (Patient?identifier=...); with a single match the server SHALL replace it with a reference to the matching resource.',
    ),
  },
  async run(t) {
    // (1) Two creates, the second referring to the first by urn:uuid.
    const ok = await send(t, {
      method: 'POST',
      path: '',
      body: transactionOf([
        { fullUrl: URN_PATIENT, resource: patient('tx-p1'), request: { method: 'POST', url: 'Patient' } },
        {
          fullUrl: URN_OBS,
          resource: { ...observation('tx-o1', URN_PATIENT), extension: [{ url: SOURCE_EXTENSION, valueUri: URN_PATIENT }] },
          request: { method: 'POST', url: 'Observation' },
        },
      ]),
    });
    const p1 = (await findByIdentifier(t, 'Patient', `${SYS}|tx-p1`))[0];
    const o1 = (await findByIdentifier(t, 'Observation', `${SYS}|tx-o1`))[0];
    const p1Id = asString(p1?.['id']);
    const p1Ref = p1Id === undefined ? undefined : `Patient/${p1Id}`;
    // A relative (Patient/id) or absolute ([base]/Patient/id) rewrite both count.
    const sourceUri = asArray(o1?.['extension'])
      .map((e) => asObject(e))
      .filter((e) => e?.['url'] === SOURCE_EXTENSION)
      .map((e) => asString(e?.['valueUri']))[0];

    // (2) A create that succeeds, then an update with a stale If-Match that must fail: nothing may remain.
    const target = await t.request({ method: 'POST', path: 'Patient', body: patient('tx-target') });
    const targetId = idOf(target) ?? 'no-id';
    const staleVersion = versionIdOf(target) ?? 'no-version';
    const current = await t.request({ method: 'PUT', path: `Patient/${targetId}`, body: patient('tx-target', { id: targetId, gender: 'female' }) });
    const fail = await send(t, {
      method: 'POST',
      path: '',
      body: transactionOf([
        { resource: patient('tx-p2'), request: { method: 'POST', url: 'Patient' } },
        {
          resource: patient('tx-target', { id: targetId, gender: 'male' }),
          request: { method: 'PUT', url: `Patient/${targetId}`, ifMatch: `W/"${staleVersion}"` },
        },
      ]),
    });
    const targetAfter = await get(t, `Patient/${targetId}`);

    // (3) References to a conditional create that matches an existing Patient, in both entry orders.
    const existing = await t.request({ method: 'POST', path: 'Patient', body: patient('tx-existing') });
    const existingRef = `Patient/${idOf(existing) ?? 'no-id'}`;
    const conditionalEntry = (fullUrl: string): Record<string, unknown> => ({
      fullUrl,
      resource: patient('tx-existing'),
      request: { method: 'POST', url: 'Patient', ifNoneExist: `identifier=${q(`${SYS}|tx-existing`)}` },
    });
    const before = await t.writeCount();
    const referrerFirst = await t.request({
      method: 'POST',
      path: '',
      body: transactionOf([
        { resource: observation('tx-o2', URN_COND_1), request: { method: 'POST', url: 'Observation' } },
        conditionalEntry(URN_COND_1),
      ]),
    });
    await t.request({
      method: 'POST',
      path: '',
      body: transactionOf([conditionalEntry(URN_COND_2), { resource: observation('tx-o3', URN_COND_2), request: { method: 'POST', url: 'Observation' } }]),
    });
    const conditionalWrites = (await t.writeCount()) - before;
    const o2 = (await findByIdentifier(t, 'Observation', `${SYS}|tx-o2`))[0];
    const o3 = (await findByIdentifier(t, 'Observation', `${SYS}|tx-o3`))[0];

    // (4) The same resource twice in one transaction (two updates of one id): the transaction must fail.
    const duplicate = await send(t, {
      method: 'POST',
      path: '',
      body: transactionOf([
        { resource: patient('tx-target', { id: targetId, gender: 'other' }), request: { method: 'PUT', url: `Patient/${targetId}` } },
        { resource: patient('tx-target', { id: targetId, gender: 'unknown' }), request: { method: 'PUT', url: `Patient/${targetId}` } },
      ]),
    });

    // (5) A conditional reference (a search URI instead of an id) to the one existing Patient with that key.
    await t.request({
      method: 'POST',
      path: '',
      body: transactionOf([
        {
          resource: observation('tx-o4', `Patient?identifier=${q(`${SYS}|tx-existing`)}`),
          request: { method: 'POST', url: 'Observation' },
        },
      ]),
    });
    const o4 = (await findByIdentifier(t, 'Observation', `${SYS}|tx-o4`))[0];

    return {
      okStatus: ok.res.status,
      okBundleType: bundleTypeOf(ok.res),
      okEntryStatuses: entryStatuses(ok.res),
      okResponseInvariantViolations: invariantViolations(ok.res.body),
      okReferenceResolved: p1Ref !== undefined && referenceOf(o1, 'subject') === p1Ref,
      okUriElementRewritten: p1Ref !== undefined && (sourceUri === p1Ref || sourceUri?.endsWith(`/${p1Ref}`) === true),
      okWrites: ok.writes,
      failStatus: fail.res.status,
      failErrorClass: errorClassOf(fail.res),
      failWrites: fail.writes,
      failCreatedEntryPersisted: (await findByIdentifier(t, 'Patient', `${SYS}|tx-p2`)).length > 0,
      failTargetUnchanged: versionIdOf(targetAfter) !== undefined && versionIdOf(targetAfter) === versionIdOf(current),
      conditionalEntryStatuses: entryStatuses(referrerFirst),
      conditionalRefWhenReferrerFirst: referenceOf(o2, 'subject') === existingRef,
      conditionalRefWhenConditionalFirst: referenceOf(o3, 'subject') === existingRef,
      conditionalWrites,
      duplicateIdentityStatus: duplicate.res.status,
      duplicateIdentityWrites: duplicate.writes,
      searchReferenceResolved: referenceOf(o4, 'subject') === existingRef,
    };
  },
});

/** Every scenario, in the order the suite runs and the docs list them. */
export const SCENARIOS: readonly Scenario[] = [crud, versioning, ifMatch, conditionalCreate, identifierSearch, transaction];
