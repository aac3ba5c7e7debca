/**
 * The delivery protocol against the real sandbox (auth on, a tenant registered through TenantService, tokens from
 * the TokenBroker, the real EHR client) on the SQLite store. The sandbox write log is the judge: every test that
 * must not duplicate counts the creates carrying the business key.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { BUSINESS_KEY_SYSTEM, stampBusinessKey, submitCommand } from './command.js';
import { ExceptionQueue } from './exceptions.js';
import { defaultVendorProfile } from './options.js';
import type { CommandAttemptRecord } from '../store/index.js';
import type { WritebackEvent } from './events.js';
import { observation, startHarness, TENANT, type Harness } from './__fixtures__/harness.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

const POST_ONLY = { methods: ['POST'] };

async function stateOf(harness: Harness, id: string) {
  const command = await harness.store.commands.get(id);
  if (!command) throw new Error('command missing');
  return command;
}

describe('write-back against the sandbox (SQLite store)', () => {
  it('a clean create reaches verified, with exactly one create in the write log', async () => {
    h = await startHarness();
    const { id, state } = await h.submit({ businessKey: 'lab:clean-1' });
    expect(state).toBe('queued');
    await h.worker().runUntilIdle();

    const command = await stateOf(h, id);
    expect(command).toMatchObject({ state: 'verified', attempts: 1, leaseOwner: null, ehrVersion: '1' });
    expect(await h.creates('lab:clean-1')).toHaveLength(1);
    // The stamped identifier is in the EHR next to the source's own identifier.
    const stored = await h.client.read(h.target, 'system', 'Observation', command.ehrId ?? '');
    expect(stored.body['identifier']).toEqual([
      { system: 'urn:source:lab', value: 'lab-72' },
      { system: BUSINESS_KEY_SYSTEM, value: 'lab:clean-1' },
    ]);
    // Verified from the create's answer (the sandbox returns the stored copy): one EHR call, no read-back.
    const [attempt] = await h.store.commands.attempts(id);
    expect(attempt).toMatchObject({ n: 1, outcome: 'applied', ehrStatus: 201, verification: 'verified', steps: 'create:201' });
    const events = await h.store.commands.events(id);
    expect(events.map((e) => [e.fromState, e.toState, e.reason])).toEqual([
      [null, 'queued', null],
      ['in_flight', 'acknowledged', 'ehr_has_it'],
      ['acknowledged', 'verified', 'verified_from_create_response'],
    ]);
  });

  it('without verifyFromCreateResponse the create is read back: two EHR calls, the same audit trail', async () => {
    // The default profile verifies from the answer for vendor `generic` only.
    expect(defaultVendorProfile({ vendor: 'generic' }).verifyFromCreateResponse).toBe(true);
    expect(defaultVendorProfile({ vendor: 'epic' }).verifyFromCreateResponse).toBe(false);
    h = await startHarness();
    const { id } = await h.submit({ businessKey: 'lab:readback-1' });
    await h.worker({ vendorProfile: () => ({ conditionalCreate: true }) }).runUntilIdle();
    expect(await stateOf(h, id)).toMatchObject({ state: 'verified', attempts: 1, ehrVersion: '1' });
    const [attempt] = await h.store.commands.attempts(id);
    expect(attempt).toMatchObject({ outcome: 'applied', verification: 'verified', steps: 'create:201 read:200' });
    expect((await h.store.commands.events(id)).map((e) => [e.fromState, e.toState])).toEqual([
      [null, 'queued'],
      ['in_flight', 'acknowledged'],
      ['acknowledged', 'verified'],
    ]);
  });

  it('a create answer that differs from what was sent is not taken as verification: the read-back decides', async () => {
    // Someone else already wrote the key with other content: the conditional create answers 200 with that copy.
    h = await startHarness();
    await h.client.create(h.target, 'system', stampBusinessKey(observation(90), 'lab:other-1') as never);
    const { id } = await h.submit({ businessKey: 'lab:other-1', resource: observation(91) });
    await h.worker().runUntilIdle();
    const [attempt] = await h.store.commands.attempts(id);
    expect(attempt?.steps).toBe('create:200 read:200');
    expect(await stateOf(h, id)).toMatchObject({ state: 'needs_review', stateReason: 'verify_mismatch' });
    expect(await h.creates('lab:other-1')).toHaveLength(1);
  });

  it('commit-then-drop on every create: verified through search, still exactly one create (no blind resend)', async () => {
    h = await startHarness({ faults: { faults: [{ id: 'drop', kind: 'commit-then-drop', match: POST_ONLY }] } });
    const { id } = await h.submit({ businessKey: 'lab:drop-1' });
    await h.worker().runUntilIdle();

    expect(await stateOf(h, id)).toMatchObject({ state: 'verified', attempts: 1 });
    expect(await h.creates('lab:drop-1')).toHaveLength(1);
    const [attempt] = await h.store.commands.attempts(id);
    expect(attempt).toMatchObject({ outcome: 'unknown', errorCode: 'EHR_OUTCOME_UNKNOWN', verification: 'verified' });
    expect(attempt?.steps).toBe('create:unknown search:200 read:200');
    expect((await h.store.commands.events(id)).map((e) => e.toState)).toEqual(['queued', 'unknown', 'acknowledged', 'verified']);
  });

  it('the deliberately broken retry-without-verify option duplicates under commit-then-drop (what the chaos sensitivity run relies on)', async () => {
    h = await startHarness({ faults: { faults: [{ id: 'drop', kind: 'commit-then-drop', match: POST_ONLY, window: { endMs: 1_000_000 } }] } });
    const { id } = await h.submit({ businessKey: 'lab:broken-1' });
    const worker = h.worker({ unsafeBroken: 'retry-without-verify', maxAttempts: 3 });
    await worker.runUntilIdle();
    // Every attempt was dropped after commit and blindly resent: one create per attempt.
    expect((await h.creates('lab:broken-1')).length).toBeGreaterThanOrEqual(2);
    expect((await stateOf(h, id)).state).toBe('needs_review');
  });

  it('the deliberately broken no-key-lock option duplicates when two commands of one key are due together (what the chaos sensitivity run relies on)', async () => {
    // A create and an upsert of one business key, due at once, with search lagging 500 ms behind writes.
    const faults = { faults: [{ id: 'lag', kind: 'visibility-lag', lagMs: 500 }] };
    h = await startHarness({ faults });
    await h.submit({ businessKey: 'lab:nolock-1', resource: observation(60) });
    await h.submit({ businessKey: 'lab:nolock-1', action: 'upsert', resource: observation(61) });
    // Correct: the per-key lease serialises them; the upsert updates what the create made. One create.
    await h.worker({ concurrency: 4 }).runUntilIdle();
    expect(await h.creates('lab:nolock-1')).toHaveLength(1);

    // Broken: both leased at once; the upsert's search cannot see the create yet, so both create (plain creates).
    await h.submit({ businessKey: 'lab:nolock-2', resource: observation(62) });
    await h.submit({ businessKey: 'lab:nolock-2', action: 'upsert', resource: observation(63) });
    const leased: string[] = [];
    const worker = h.worker({ concurrency: 4, unsafeBroken: 'no-key-lock', onEvent: (e) => e.name === 'command:leased' && leased.push(e.commandId) });
    await worker.runUntilIdle();
    expect(leased).toHaveLength(2);
    expect((await h.creates('lab:nolock-2')).length).toBeGreaterThanOrEqual(2);
  });

  it('reset before processing: proven absent after the window, retried (reconciling first), verified, one create', async () => {
    h = await startHarness({ faults: { faults: [{ id: 'reset', kind: 'reset', match: POST_ONLY }] } });
    const { id } = await h.submit({ businessKey: 'lab:reset-1' });
    const worker = h.worker();
    await worker.tick();
    await worker.settle();
    const afterFirst = await stateOf(h, id);
    expect(afterFirst).toMatchObject({ state: 'retry_wait', stateReason: 'proven_absent' });
    expect(await h.creates('lab:reset-1')).toHaveLength(0);

    await h.setFaults({ faults: [] });
    await worker.runUntilIdle();
    expect(await stateOf(h, id)).toMatchObject({ state: 'verified', attempts: 2 });
    expect(await h.creates('lab:reset-1')).toHaveLength(1);
    const timeline = await h.store.commands.attempts(id);
    expect(timeline.map((a) => [a.n, a.outcome, a.verification])).toEqual([
      [1, 'unknown', 'absent'],
      [2, 'applied', 'verified'],
    ]);
    // The whole window was searched (3 polls) before the retry, and the retry searched before it created.
    expect(timeline[0]?.steps).toBe('create:unknown search:200 search:200 search:200');
    expect(timeline[1]?.steps).toBe('search:200 create:201');
  });

  it('error-after 500 (applied, then a 500): verified, one create', async () => {
    h = await startHarness({ faults: { faults: [{ id: 'e500', kind: 'error-after', status: 500, match: POST_ONLY }] } });
    const { id } = await h.submit({ businessKey: 'lab:e500-1' });
    await h.worker().runUntilIdle();
    expect(await stateOf(h, id)).toMatchObject({ state: 'verified' });
    expect(await h.creates('lab:e500-1')).toHaveLength(1);
    const [attempt] = await h.store.commands.attempts(id);
    expect(attempt).toMatchObject({ outcome: 'unknown', ehrStatus: 500, verification: 'verified' });
  });

  it('visibility lag 500 ms + commit-then-drop: the verification rides out the lag, one create', async () => {
    h = await startHarness({
      faults: { faults: [{ id: 'lag', kind: 'visibility-lag', lagMs: 500 }, { id: 'drop', kind: 'commit-then-drop', match: POST_ONLY }] },
    });
    const { id } = await h.submit({ businessKey: 'lab:lag-1' });
    // 4 polls over 1.2 s: the first (at 300 ms) cannot see the write yet.
    await h.worker({ verifyWindowMs: 1_200, verifyPolls: 4 }).runUntilIdle();
    expect(await stateOf(h, id)).toMatchObject({ state: 'verified', attempts: 1 });
    expect(await h.creates('lab:lag-1')).toHaveLength(1);
    const [attempt] = await h.store.commands.attempts(id);
    expect(attempt?.steps?.startsWith('create:unknown search:200 search:200')).toBe(true);
  });

  it('without conditional create, a verification window shorter than the lag duplicates: why the window must exceed it', async () => {
    // The hazard the window exists for, shown: plain create (Epic-like), lag 500 ms, window 150 ms.
    h = await startHarness({
      conditionalCreate: false,
      faults: { faults: [{ id: 'lag', kind: 'visibility-lag', lagMs: 500 }, { id: 'drop', kind: 'commit-then-drop', match: POST_ONLY, probability: 1, window: { endMs: 600_000 } }] },
    });
    const { id } = await h.submit({ businessKey: 'lab:short-window' });
    const worker = h.worker({ verifyWindowMs: 150, verifyPolls: 1 });
    await worker.tick();
    await worker.settle();
    expect(await stateOf(h, id)).toMatchObject({ state: 'retry_wait', stateReason: 'proven_absent' });
    await h.setFaults({ faults: [{ id: 'lag', kind: 'visibility-lag', lagMs: 500 }] });
    await worker.runUntilIdle();
    // Falsely "proven absent", resent: two creates. With the default window (5 s) this cannot happen.
    expect(await h.creates('lab:short-window')).toHaveLength(2);
  });

  it('422 schema drift: rejected with the reason, nothing written', async () => {
    h = await startHarness({ faults: { faults: [{ id: 'drift', kind: 'schema-drift', elements: ['Observation.note'] }] } });
    const { id } = await h.submit({ businessKey: 'lab:drift-1', resource: observation(80, { note: [{ text: 'free text' }] }) });
    await h.worker().runUntilIdle();
    expect(await stateOf(h, id)).toMatchObject({ state: 'rejected', stateReason: 'EHR_VALIDATION', leaseOwner: null });
    const [attempt] = await h.store.commands.attempts(id);
    expect(attempt).toMatchObject({ outcome: 'rejected', ehrStatus: 422, errorCategory: 'validation' });
    expect(await h.writes()).toEqual([]);
  });

  it('idempotency: same key and payload → the same command; another payload → IDEMPOTENCY_KEY_REUSED', async () => {
    h = await startHarness();
    const first = await h.submit({ businessKey: 'lab:idem-1', idempotencyKey: 'req-1' });
    const replay = await h.submit({ businessKey: 'lab:idem-1', idempotencyKey: 'req-1' });
    expect(replay).toEqual({ ...first, created: false });
    await expect(h.submit({ businessKey: 'lab:idem-1', idempotencyKey: 'req-1', resource: observation(99) })).rejects.toMatchObject({
      code: 'IDEMPOTENCY_KEY_REUSED',
      httpStatus: 422,
    });
    await h.worker().runUntilIdle();
    expect(await h.creates('lab:idem-1')).toHaveLength(1);
  });

  it('update with a stale version: update → needs_review with the EHR version; upsert → re-read, retried once, verified', async () => {
    h = await startHarness();
    const created = await h.submit({ businessKey: 'lab:upd-1' });
    const worker = h.worker();
    await worker.runUntilIdle();
    const ehrId = (await stateOf(h, created.id)).ehrId ?? '';
    // Someone else changes it in the EHR: version 2.
    const other = await h.client.update(h.target, 'system', { ...(await h.client.read(h.target, 'system', 'Observation', ehrId)).body, status: 'amended' });
    expect(other.outcome).toBe('applied');

    const update = await h.submit({ businessKey: 'lab:upd-1', action: 'update', resource: observation(75), baseVersion: '1' });
    await worker.runUntilIdle();
    expect(await stateOf(h, update.id)).toMatchObject({ state: 'needs_review', stateReason: 'version_conflict' });
    const events = await h.store.commands.events(update.id);
    expect(events.map((e) => e.toState)).toEqual(['queued', 'conflict', 'needs_review']);
    expect(events.at(-1)?.reason).toBe('version_conflict; based_on=1; ehr_current=2');

    const upsert = await h.submit({ businessKey: 'lab:upd-1', action: 'upsert', resource: observation(76), baseVersion: '1' });
    await worker.runUntilIdle();
    expect(await stateOf(h, upsert.id)).toMatchObject({ state: 'verified', ehrId, ehrVersion: '3' });
    expect((await h.store.commands.events(upsert.id)).map((e) => e.toState)).toEqual(['queued', 'conflict', 'in_flight', 'acknowledged', 'verified']);
    const [attempt] = await h.store.commands.attempts(upsert.id);
    // The target is found by the id the earlier create recorded (a consistent read), not by a search.
    expect(attempt?.steps).toBe('read:200 update:412 search:200 update:200 read:200');
    expect(await h.creates('lab:upd-1')).toHaveLength(1);
  });

  it('an upsert whose key exists but is not yet visible to search updates it (found by the conditional create), once', async () => {
    h = await startHarness({ faults: { faults: [{ id: 'lag', kind: 'visibility-lag', lagMs: 60_000 }] } });
    // The resource exists in the EHR, but searches will not show it for a minute; no command recorded its id.
    const seeded = { ...observation(70), resourceType: 'Observation', identifier: [{ system: BUSINESS_KEY_SYSTEM, value: 'lab:lag-upsert' }] };
    const existing = await h.client.create(h.target, 'system', seeded);
    expect(existing.outcome).toBe('applied');
    const upsert = await h.submit({ businessKey: 'lab:lag-upsert', action: 'upsert', resource: observation(71) });
    await h.worker().runUntilIdle();
    expect((await stateOf(h, upsert.id)).state).toBe('verified');
    const [attempt] = await h.store.commands.attempts(upsert.id);
    expect(attempt?.steps).toBe('search:200 create:200 read:200 update:200 read:200');
    expect(await h.creates('lab:lag-upsert')).toHaveLength(1);
  });

  it('ordering: a command whose newer sibling is verified becomes superseded and is never sent', async () => {
    h = await startHarness();
    // By generation: the older one is batch, so the newer (interactive) one is leased and verified first.
    const older = await h.submit({ businessKey: 'lab:ord-1', action: 'upsert', resource: observation(60), priority: 'batch' });
    const newer = await h.submit({ businessKey: 'lab:ord-1', action: 'upsert', resource: observation(61) });
    expect([older.generation, newer.generation]).toEqual([1, 2]);
    // By source time: the later submission carries the older event.
    const late = await h.submit({ businessKey: 'lab:ord-2', action: 'upsert', resource: observation(70), sourceTimestamp: 2_000 });
    const stale = await h.submit({ businessKey: 'lab:ord-2', action: 'upsert', resource: observation(71), sourceTimestamp: 1_000 });
    await h.worker({ concurrency: 1 }).runUntilIdle();

    expect((await stateOf(h, newer.id)).state).toBe('verified');
    expect(await stateOf(h, older.id)).toMatchObject({ state: 'superseded', stateReason: 'newer_generation_verified' });
    expect((await stateOf(h, late.id)).state).toBe('verified');
    expect((await stateOf(h, stale.id)).state).toBe('superseded');
    // Each key was written once: the superseded commands sent nothing.
    const writes = await h.writes();
    expect(writes).toHaveLength(2);
    const values = await Promise.all(
      [newer.id, late.id].map(async (id) => (await h!.client.read(h!.target, 'system', 'Observation', (await stateOf(h!, id)).ehrId ?? '')).body['valueQuantity']),
    );
    expect(values.map((v) => (v as { value: number }).value)).toEqual([61, 70]);
  });

  it('delete: found by business key, deleted, read back as gone; a second delete of the same key is already satisfied', async () => {
    h = await startHarness();
    await h.submit({ businessKey: 'lab:del-1' });
    const worker = h.worker();
    await worker.runUntilIdle();
    const del = await h.submit({ businessKey: 'lab:del-1', action: 'delete' });
    await worker.runUntilIdle();
    expect(await stateOf(h, del.id)).toMatchObject({ state: 'verified' });
    expect((await h.store.commands.attempts(del.id))[0]?.steps).toBe('search:200 delete:204 read:404');
    const again = await h.submit({ businessKey: 'lab:del-1', action: 'delete' });
    await worker.runUntilIdle();
    expect(await stateOf(h, again.id)).toMatchObject({ state: 'verified' });
    expect((await h.writes()).map((w) => w['op'])).toEqual(['create', 'delete']);
  });

  it('a 429 waits for Retry-After without spending the attempts budget', async () => {
    h = await startHarness({ faults: { faults: [{ id: 'limit', kind: 'rate-limit', retryAfterSeconds: 2, match: POST_ONLY }] } });
    const { id } = await h.submit({ businessKey: 'lab:429-1' });
    const worker = h.worker();
    const before = h.clock();
    await worker.tick();
    await worker.settle();
    const waiting = await stateOf(h, id);
    expect(waiting).toMatchObject({ state: 'retry_wait', stateReason: 'rate_limited', attempts: 0 });
    expect(waiting.nextAttemptAt - before).toBeGreaterThanOrEqual(1_900);
    await h.setFaults({ faults: [] });
    h.advance(2_100);
    await worker.runUntilIdle();
    expect((await stateOf(h, id)).state).toBe('verified');
  });

  it('budgets: a command that keeps failing goes to the exception queue after maxAttempts', async () => {
    h = await startHarness({ faults: { faults: [{ id: 'down', kind: 'error-before', status: 503, match: POST_ONLY }] } });
    const { id } = await h.submit({ businessKey: 'lab:budget-1' });
    const worker = h.worker({ maxAttempts: 3 });
    for (let i = 0; i < 4; i++) {
      await worker.runUntilIdle();
      h.advance(1_000);
    }
    expect(await stateOf(h, id)).toMatchObject({ state: 'needs_review', stateReason: 'attempts_exhausted', attempts: 3 });
    expect((await h.store.commands.attempts(id)).map((a) => a.outcome)).toEqual(['unknown', 'unknown', 'unknown']);
    expect(await h.writes()).toEqual([]);
  });

  it('a worker killed mid-attempt (after its create reached the EHR): the next worker reconciles, one create', async () => {
    h = await startHarness();
    const { id } = await h.submit({ businessKey: 'lab:kill-1' });
    // The "dead" worker: leases, sends the create, dies before recording anything.
    const [leased] = await h.store.commands.lease({ owner: 'dead-worker', now: h.clock(), leaseMs: 10_000 });
    expect(leased?.id).toBe(id);
    expect((await h.client.create(h.target, 'system', leased!.resource as never)).outcome).toBe('applied');

    const survivor = h.worker();
    await survivor.runUntilIdle();
    expect((await stateOf(h, id)).state).toBe('in_flight'); // the lease is still live: nobody touches it
    h.advance(10_001);
    await survivor.runUntilIdle();
    expect(await stateOf(h, id)).toMatchObject({ state: 'verified', attemptSeq: 2 });
    expect(await h.creates('lab:kill-1')).toHaveLength(1);
    expect((await h.store.commands.attempts(id)).map((a) => [a.n, a.outcome, a.worker])).toEqual([
      [1, 'abandoned', null],
      [2, 'found', survivor.id],
    ]);
  });

  it('graceful stop cuts the verification wait short and releases the command, which the next worker finishes', async () => {
    h = await startHarness({ faults: { faults: [{ id: 'drop', kind: 'commit-then-drop', match: POST_ONLY }] } });
    const { id } = await h.submit({ businessKey: 'lab:stop-1' });
    const worker = h.worker({ verifyWindowMs: 60_000, verifyPolls: 2 });
    worker.start();
    for (let i = 0; i < 200 && (await stateOf(h, id)).state !== 'unknown'; i++) await new Promise((r) => setTimeout(r, 10));
    const started = Date.now();
    await worker.stop();
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(await stateOf(h, id)).toMatchObject({ state: 'retry_wait', stateReason: 'verify_interrupted', leaseOwner: null });

    await h.worker().runUntilIdle();
    expect((await stateOf(h, id)).state).toBe('verified');
    expect(await h.creates('lab:stop-1')).toHaveLength(1);
  });
});

describe('exception queue', () => {
  it('shows full context, and retry / resolve / cancel are audited with who and why', async () => {
    h = await startHarness();
    const queue = new ExceptionQueue({ store: h.store, client: h.client, clock: h.clock });
    // An update of something the EHR does not have → needs_review.
    const missing = await h.submit({ businessKey: 'lab:exq-1', action: 'update', resource: observation(50) });
    await h.worker().runUntilIdle();
    expect((await queue.list({ tenantId: 'clinic' })).map((c) => c.id)).toEqual([missing.id]);

    const detail = await queue.show(missing.id);
    expect(detail.command).toMatchObject({ state: 'needs_review', stateReason: 'not_found_in_ehr' });
    expect(detail.command.resource['valueQuantity']).toMatchObject({ value: 50 });
    expect(detail.attempts).toHaveLength(1);
    expect(detail.ehrState).toEqual({ status: 'absent' });
    expect(detail.events.map((e) => e.toState)).toEqual(['queued', 'needs_review']);

    // Retry (with a fresh budget) — it still is not there, so it comes back.
    const retried = await queue.retry(missing.id, { actor: 'nurse-lead', reason: 'checked the EHR, try again' });
    expect(retried).toMatchObject({ state: 'queued', attempts: 0, stateReason: 'operator_retry' });
    await h.worker().runUntilIdle();
    expect((await stateOf(h, missing.id)).state).toBe('needs_review');

    const cancelled = await queue.cancel(missing.id, { actor: 'nurse-lead', reason: 'duplicate order' });
    expect(cancelled.state).toBe('cancelled');
    const events = await h.store.commands.events(missing.id);
    expect(events.filter((e) => e.kind.startsWith('operator:')).map((e) => [e.kind, e.actor, e.reason, e.toState])).toEqual([
      ['operator:retry', 'operator:nurse-lead', 'checked the EHR, try again', 'queued'],
      ['operator:cancel', 'operator:nurse-lead', 'duplicate order', 'cancelled'],
    ]);
    await expect(queue.retry(missing.id, { actor: 'x', reason: 'y' })).rejects.toMatchObject({ code: 'COMMAND_NOT_RETRYABLE' });
    await expect(queue.show('no-such-command')).rejects.toMatchObject({ code: 'COMMAND_NOT_FOUND' });
  });

  it('resolve: the operator confirms the EHR has it; the EHR state shows the copy', async () => {
    h = await startHarness({ faults: { faults: [{ id: 'drift', kind: 'schema-drift', elements: ['Observation.note'] }] } });
    const queue = new ExceptionQueue({ store: h.store, client: h.client });
    const { id } = await h.submit({ businessKey: 'lab:exq-2', resource: observation(90, { note: [{ text: 'n' }] }) });
    const worker = h.worker({ maxAttempts: 1 });
    await worker.runUntilIdle();
    expect((await stateOf(h, id)).state).toBe('rejected');
    // The operator creates it by hand (without the note), then resolves.
    const command = await stateOf(h, id);
    const { note: _note, ...withoutNote } = command.resource;
    await h.client.create(h.target, 'system', withoutNote as never);
    await expect(queue.resolve(id, { actor: 'op', reason: 'entered manually' })).rejects.toMatchObject({ code: 'COMMAND_NOT_RETRYABLE' });
    const detail = await queue.show(id);
    expect(detail.ehrState).toMatchObject({ status: 'found', copies: [{ matchesCommand: false, versionId: '1' }] });
    expect(detail.lastEhrResponse).toMatchObject({ status: 422, errorCode: 'EHR_VALIDATION' });
    // rejected → retry → (still drifting) rejected; resolve needs needs_review, so walk it there through a retry
    // that finds the manual copy: the retry reconciles first and sees the mismatch.
    await queue.retry(id, { actor: 'op', reason: 'mapping fixed' });
    await worker.runUntilIdle();
    expect(await stateOf(h, id)).toMatchObject({ state: 'needs_review', stateReason: 'verify_mismatch' });
    const resolved = await queue.resolve(id, { actor: 'op', reason: 'manual entry is the intended one' });
    expect(resolved).toMatchObject({ state: 'verified', stateReason: 'operator_resolved' });
    expect((await h.creates('lab:exq-2')).length).toBe(1);
  });
});

describe('poison protection: the per-patient failure budget', () => {
  const BAD = { subject: { reference: 'Patient/poisoned-1' } };
  const GOOD = { subject: { reference: 'Patient/healthy-1' } };

  /** FHIR requests the sandbox has seen (its fault injector counts every one). */
  async function requestsSeen(harness: Harness): Promise<number> {
    const res = await fetch(`${harness.sandbox.url}/_admin/faults/stats`);
    return ((await res.json()) as { requestsSeen: number }).requestsSeen;
  }
  /** EHR calls named by timeline rows (`create:201 read:200` is two). */
  const callsOf = (attempts: readonly CommandAttemptRecord[]): number => attempts.reduce((n, a) => n + (a.steps === null ? 0 : a.steps.split(' ').length), 0);

  it('a patient whose writes keep being refused spends its budget: its next command is held unsent while another patient’s verify; an operator retry sends it and resets the budget', async () => {
    h = await startHarness({ faults: { faults: [{ id: 'drift', kind: 'schema-drift', elements: ['Observation.note'] }] } });
    const events: WritebackEvent[] = [];
    const worker = h.worker({ patientFailureBudget: 3, concurrency: 1, onEvent: (e) => events.push(e) });

    // Failure 1: an update based on a version someone else has moved on (412) → version_conflict.
    const created = await h.submit({ businessKey: 'poison:obs-1', resource: observation(10, BAD) });
    await worker.runUntilIdle();
    const ehrId = (await stateOf(h, created.id)).ehrId ?? '';
    await h.client.update(h.target, 'system', { ...(await h.client.read(h.target, 'system', 'Observation', ehrId)).body, status: 'amended' });
    const stale = await h.submit({ businessKey: 'poison:obs-1', action: 'update', resource: observation(11, BAD), baseVersion: '1' });
    await worker.runUntilIdle();
    expect(await stateOf(h, stale.id)).toMatchObject({ state: 'needs_review', stateReason: 'version_conflict' });
    // Failures 2 and 3: refused by the EHR (422).
    const refused = [
      await h.submit({ businessKey: 'poison:obs-2', resource: observation(12, { ...BAD, note: [{ text: 'n' }] }) }),
      await h.submit({ businessKey: 'poison:obs-3', resource: observation(13, { ...BAD, note: [{ text: 'n' }] }) }),
    ];
    await worker.runUntilIdle();
    for (const r of refused) expect(await stateOf(h, r.id)).toMatchObject({ state: 'rejected', stateReason: 'EHR_VALIDATION' });
    expect((await h.store.commands.attempts(stale.id)).map((a) => a.patientFailure)).toEqual([true]);
    expect((await h.store.commands.attempts(created.id)).map((a) => a.patientFailure)).toEqual([false]);
    expect(await h.store.commands.patientFailures(TENANT, 'Patient/poisoned-1', 0)).toBe(3);

    // The budget is spent: the patient's next command (valid: the EHR would take it) is not sent; the other
    // patient's commands are.
    const held = await h.submit({ businessKey: 'poison:obs-4', resource: observation(14, BAD) });
    const others = [
      await h.submit({ businessKey: 'poison:healthy-1', resource: observation(30, GOOD) }),
      await h.submit({ businessKey: 'poison:healthy-2', resource: observation(31, GOOD) }),
    ];
    const before = await requestsSeen(h);
    await worker.runUntilIdle();
    expect(await stateOf(h, held.id)).toMatchObject({ state: 'needs_review', stateReason: 'patient_budget_exhausted', leaseOwner: null });
    expect(await h.store.commands.attempts(held.id)).toEqual([
      expect.objectContaining({ n: 1, outcome: 'budget_exhausted', errorCode: 'patient_budget_exhausted', steps: null, patientFailure: false }),
    ]);
    for (const o of others) expect((await stateOf(h, o.id)).state).toBe('verified');
    // Every FHIR request of that round was one of the other patient's (their timelines name each EHR call).
    const otherCalls = callsOf((await Promise.all(others.map((o) => h!.store.commands.attempts(o.id)))).flat());
    expect(otherCalls).toBe(2);
    expect(await requestsSeen(h)).toBe(before + otherCalls);
    expect(await h.creates('poison:obs-4')).toEqual([]);

    // The operator retries it: it is sent and verified, and the patient's budget starts afresh.
    const queue = new ExceptionQueue({ store: h.store, client: h.client, clock: h.clock });
    expect((await queue.list({ tenantId: TENANT })).map((c) => [c.id, c.stateReason])).toContainEqual([held.id, 'patient_budget_exhausted']);
    await queue.retry(held.id, { actor: 'op', reason: 'patient record unlocked in the EHR' });
    expect(await h.store.commands.patientFailures(TENANT, 'Patient/poisoned-1', 0)).toBe(0);
    await worker.runUntilIdle();
    expect(await stateOf(h, held.id)).toMatchObject({ state: 'verified' });
    expect(await h.creates('poison:obs-4')).toHaveLength(1);
    const next = await h.submit({ businessKey: 'poison:obs-5', resource: observation(15, BAD) });
    await worker.runUntilIdle();
    expect((await stateOf(h, next.id)).state).toBe('verified');

    // The patient reference stays in the commands table: no event, attempt row or state reason carries it.
    const ids = [created.id, stale.id, ...refused.map((r) => r.id), held.id, next.id];
    const trail = JSON.stringify([
      events,
      await Promise.all(ids.map((id) => h!.store.commands.attempts(id))),
      await Promise.all(ids.map((id) => h!.store.commands.events(id))),
    ]);
    expect(trail).not.toContain('poisoned-1');
  });

  it('counts EHR refusals and unclear outcomes against the patient; not rate limits, auth, outages or proven-absent writes', async () => {
    h = await startHarness();
    const worker = h.worker();
    const queue = new ExceptionQueue({ store: h.store, client: h.client, clock: h.clock });
    const patient = { subject: { reference: 'Patient/flags-1' } };
    const firstAttempt = async (businessKey: string, faults: unknown[], extra: Record<string, unknown> = {}) => {
      await h!.setFaults({ faults });
      const { id } = await h!.submit({ businessKey, resource: observation(40, { ...patient, ...extra }) });
      await worker.tick();
      await worker.settle();
      const [attempt] = await h!.store.commands.attempts(id);
      // Out of the way, so that no later round leases it again under another fault profile.
      const { state } = await stateOf(h!, id);
      if (state !== 'cancelled' && state !== 'verified') await queue.cancel(id, { actor: 'test', reason: 'done' });
      return attempt;
    };
    expect(await firstAttempt('flags:503', [{ id: 'down', kind: 'error-before', status: 503, match: POST_ONLY }])).toMatchObject({
      outcome: 'unknown',
      verification: 'absent',
      patientFailure: false,
    });
    expect(await firstAttempt('flags:401', [{ id: 'auth', kind: 'early-401', match: POST_ONLY }])).toMatchObject({
      outcome: 'rejected',
      errorCategory: 'auth',
      patientFailure: false,
    });
    expect(await firstAttempt('flags:422', [{ id: 'drift', kind: 'schema-drift', elements: ['Observation.note'] }], { note: [{ text: 'n' }] })).toMatchObject({
      outcome: 'rejected',
      errorCategory: 'validation',
      patientFailure: true,
    });
    expect(await firstAttempt('flags:429', [{ id: 'limit', kind: 'rate-limit', retryAfterSeconds: 1, match: POST_ONLY }])).toMatchObject({
      outcome: 'rate_limited',
      patientFailure: false,
    });
    await new Promise((resolve) => setTimeout(resolve, 1_100)); // the client holds the tenant's writes for Retry-After
    // Sent, the answer lost, and every lookup of the verification window failing: unclear.
    expect(
      await firstAttempt('flags:unclear', [
        { id: 'drop', kind: 'commit-then-drop', match: POST_ONLY },
        { id: 'search-down', kind: 'error-before', status: 503, match: { methods: ['GET'] } },
      ]),
    ).toMatchObject({ outcome: 'unknown', verification: 'unclear', patientFailure: true });
    expect(await h.store.commands.patientFailures(TENANT, 'Patient/flags-1', 0)).toBe(2);
  }, 30_000);
});

describe('hand-off at submission (SQLite store)', () => {
  it('hands a new command to a running worker at submission: delivered without a lease query or a poll wait', async () => {
    h = await startHarness();
    const harness = h;
    const events: WritebackEvent[] = [];
    const worker = harness.worker({ concurrency: 2, pollIntervalMs: 60_000, onEvent: (e) => events.push(e) });
    // Not running: nothing is claimed, the command would be queued as usual.
    expect(worker.claim(TENANT)).toBeUndefined();
    worker.start();
    // The first lease query found nothing: the worker now sleeps for a minute.
    await new Promise((resolve) => setTimeout(resolve, 100));
    const input = { tenantId: TENANT, context: 'system', action: 'create', resourceType: 'Observation', resource: observation(72), requestedBy: 'test' } as const;
    const res = await submitCommand(harness.store, { ...input, businessKey: 'lab:handoff-1' }, { dispatch: worker });
    expect(res).toMatchObject({ state: 'in_flight', created: true, generation: 1 });
    const until = Date.now() + 10_000;
    while ((await stateOf(harness, res.id)).state !== 'verified' && Date.now() < until) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(await stateOf(harness, res.id)).toMatchObject({ state: 'verified', attempts: 1, leaseOwner: null });
    expect(await harness.creates('lab:handoff-1')).toHaveLength(1);
    expect(await harness.store.commands.attempts(res.id)).toEqual([expect.objectContaining({ n: 1, outcome: 'applied', worker: worker.id })]);
    // The same timeline as a command taken by a lease query.
    expect((await harness.store.commands.events(res.id)).map((e) => [e.fromState, e.toState])).toEqual([
      [null, 'queued'],
      ['in_flight', 'acknowledged'],
      ['acknowledged', 'verified'],
    ]);
    expect(events.filter((e) => e.commandId === res.id).map((e) => e.name)).toEqual(['command:leased', 'command:releasing', 'command:settled']);

    // Slots: a claim holds one until it is adopted; with none free, or for another tenant's worker, no claim.
    const a = worker.claim(TENANT);
    const b = worker.claim(TENANT);
    expect(a).toMatchObject({ owner: worker.id, leaseMs: 10_000 });
    expect(b).toBeDefined();
    expect(worker.claim(TENANT)).toBeUndefined();
    worker.adopt(undefined);
    expect(worker.claim(TENANT)).toBeDefined();
    worker.adopt(undefined);
    worker.adopt(undefined);
    const scoped = harness.worker({ tenantId: 'another-tenant' });
    scoped.start();
    expect(scoped.claim(TENANT)).toBeUndefined();
    await scoped.stop();

    // stop() waits for a submission that claimed a slot before it, and claims nothing after.
    const pending = worker.claim(TENANT);
    expect(pending).toBeDefined();
    let stopped = false;
    const stopping = worker.stop().then(() => (stopped = true));
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(stopped).toBe(false);
    expect(worker.claim(TENANT)).toBeUndefined();
    worker.adopt(undefined);
    await stopping;
    expect(stopped).toBe(true);
  }, 30_000);

  it('queues the command as usual when the worker has no free slot or another command of the key is open', async () => {
    h = await startHarness();
    const harness = h;
    const worker = harness.worker({ concurrency: 1, pollIntervalMs: 60_000 });
    worker.start();
    await new Promise((resolve) => setTimeout(resolve, 100));
    const input = { tenantId: TENANT, context: 'system', action: 'create', resourceType: 'Observation', resource: observation(72), requestedBy: 'test' } as const;
    // Two of one key at once: the first is handed over, the second waits in the queue (one attempt per key).
    const [first, second] = await Promise.all([
      submitCommand(harness.store, { ...input, businessKey: 'lab:handoff-2' }, { dispatch: worker }),
      submitCommand(harness.store, { ...input, businessKey: 'lab:handoff-2' }, { dispatch: worker }),
    ]);
    expect([first.state, second.state]).toEqual(['in_flight', 'queued']);
    // One slot, taken: a third command (another key) is queued too.
    const third = await submitCommand(harness.store, { ...input, businessKey: 'lab:handoff-3' }, { dispatch: worker });
    expect(third.state === 'queued' || (await stateOf(harness, first.id)).state === 'verified').toBe(true);
    await worker.stop();
    // The queued ones are delivered by the lease path.
    await harness.worker().runUntilIdle();
    for (const id of [first.id, second.id, third.id]) expect((await stateOf(harness, id)).state).toBe('verified');
    expect(await harness.creates('lab:handoff-2')).toHaveLength(1);
  }, 30_000);
});
