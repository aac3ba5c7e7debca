/**
 * The distributed case: workers on separate PostgreSQL store instances (as separate engine processes would be)
 * sharing one database, against the sandbox with write faults. The lease query's per-business-key rule and
 * SKIP LOCKED are what is under test.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { CommandState } from '../store/index.js';
import { isSettled } from './state-machine.js';
import type { WritebackEvent } from './events.js';
import { PATIENT_BUDGET_CACHE_MS } from './options.js';
import { WritebackWorker } from './worker.js';
import { observation, startHarness, type Harness } from './__fixtures__/harness.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

describe('write-back on PostgreSQL', () => {
  it('two workers, 100 commands (20 sharing 5 business keys), write faults: no key leased twice at once, all final, no duplicate', async () => {
    h = await startHarness({
      kind: 'postgres',
      faults: {
        faults: [
          { id: 'drop', kind: 'commit-then-drop', probability: 0.1, match: { methods: ['POST', 'PUT'] } },
          { id: 'e500', kind: 'error-after', status: 500, probability: 0.05, match: { methods: ['POST', 'PUT'] } },
          { id: 'reset', kind: 'reset', probability: 0.05, match: { methods: ['POST', 'PUT'] } },
        ],
      },
    });
    const keyOf = new Map<string, string>();
    const uniqueKeys: string[] = [];
    for (let i = 0; i < 80; i++) {
      const key = `lab:pg-${i}`;
      uniqueKeys.push(key);
      keyOf.set((await h.submit({ businessKey: key, resource: observation(i) })).id, key);
    }
    for (let i = 0; i < 20; i++) {
      const key = `lab:shared-${i % 5}`;
      keyOf.set((await h.submit({ businessKey: key, action: 'upsert', resource: observation(1_000 + i) })).id, key);
    }

    // Held business keys, from the workers' own lifecycle events (`releasing` is emitted before the commit that
    // frees the lease, so a correct run never shows a key leased while held).
    const held = new Map<string, string>();
    const overlaps: string[] = [];
    const onEvent = (e: WritebackEvent) => {
      const key = keyOf.get(e.commandId) ?? '?';
      if (e.name === 'command:leased') {
        if (held.has(key)) overlaps.push(`${key}: ${held.get(key)} and ${e.commandId}`);
        held.set(key, e.commandId);
      } else if ((e.name === 'command:releasing' || e.name === 'command:lease-lost') && held.get(key) === e.commandId) {
        held.delete(key);
      }
    };
    const workers = [0, 1].map(
      (i) =>
        new WritebackWorker({
          store: h!.openStore(),
          client: h!.client,
          clock: h!.clock,
          workerId: `pg-worker-${i}`,
          concurrency: 8,
          leaseMs: 20_000,
          verifyWindowMs: 300,
          verifyPolls: 2,
          backoffBaseMs: 10,
          backoffMaxMs: 50,
          pollIntervalMs: 10,
          onEvent,
        }),
    );
    for (const w of workers) w.start();
    const deadline = Date.now() + 60_000;
    let states: CommandState[] = [];
    while (Date.now() < deadline) {
      states = (await h.store.commands.list({ tenantId: 'clinic', limit: 1_000 })).map((c) => c.state);
      if (states.length === 100 && states.every(isSettled)) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    await Promise.all(workers.map((w) => w.stop()));

    expect(overlaps).toEqual([]);
    expect(states.filter((s) => !isSettled(s))).toEqual([]);
    expect(states.filter((s) => s !== 'verified' && s !== 'superseded')).toEqual([]);
    // Both workers did work.
    const byWorker = new Set((await Promise.all([...keyOf.keys()].map((id) => h!.store.commands.attempts(id)))).flat().map((a) => a.worker));
    expect(byWorker).toEqual(new Set(['pg-worker-0', 'pg-worker-1']));
    // One create per business key, unique and shared alike.
    const creates = (await h.writes()).filter((w) => w['op'] === 'create');
    const perKey = new Map<string, number>();
    for (const w of creates) {
      for (const id of w['identifiers'] as string[]) if (id.startsWith('urn:tether:business-key|')) perKey.set(id, (perKey.get(id) ?? 0) + 1);
    }
    expect(perKey.size).toBe(85);
    expect([...perKey.values()].every((n) => n === 1)).toBe(true);
    // The shared keys end with the content of their newest verified generation.
    for (let k = 0; k < 5; k++) {
      const siblings = await h.store.commands.list({ tenantId: 'clinic', businessKey: `lab:shared-${k}` });
      const newestVerified = siblings.filter((c) => c.state === 'verified').sort((a, b) => b.generation - a.generation)[0];
      expect(newestVerified?.generation).toBe(4);
    }
  }, 90_000);

  it('a worker killed before sending: its lease expires, another process leases, reconciles and creates once', async () => {
    h = await startHarness({ kind: 'postgres' });
    const { id } = await h.submit({ businessKey: 'lab:pg-kill' });
    // Process A leases and dies (never sends, never records).
    const processA = h.openStore();
    const [leased] = await processA.commands.lease({ owner: 'process-a', now: h.clock(), leaseMs: 5_000 });
    expect(leased?.id).toBe(id);
    await processA.close();

    const survivor = new WritebackWorker({ store: h.openStore(), client: h.client, clock: h.clock, verifyWindowMs: 300, verifyPolls: 2 });
    await survivor.runUntilIdle();
    expect((await h.store.commands.get(id))?.state).toBe('in_flight');
    h.advance(5_001);
    await survivor.runUntilIdle();
    expect(await h.store.commands.get(id)).toMatchObject({ state: 'verified', attemptSeq: 2 });
    expect(await h.creates('lab:pg-kill')).toHaveLength(1);
    const timeline = await h.store.commands.attempts(id);
    expect(timeline.map((a) => [a.n, a.outcome])).toEqual([
      [1, 'abandoned'],
      [2, 'applied'],
    ]);
    // Reconciled first (attempt 2 searched before it created).
    expect(timeline[1]?.steps).toBe('search:200 create:201');
    await survivor.stop();
  });

  it('the per-patient failure budget is shared by processes and outlives them: failures one process saw hold the patient’s next commands in others', async () => {
    h = await startHarness({ kind: 'postgres', faults: { faults: [{ id: 'drift', kind: 'schema-drift', elements: ['Observation.note'] }] } });
    const patient = { subject: { reference: 'Patient/pg-poisoned' } };
    const engineProcess = (workerId: string) =>
      new WritebackWorker({ store: h!.openStore(), client: h!.client, clock: h!.clock, workerId, verifyWindowMs: 300, verifyPolls: 2, patientFailureBudget: 2 });
    const stateOf = async (id: string) => (await h!.store.commands.get(id))?.state;

    // Process B reads the patient's count (nothing yet) while delivering a valid command.
    const processB = engineProcess('process-b');
    const first = await h.submit({ businessKey: 'pg-poison:0', resource: observation(1, patient) });
    await processB.runUntilIdle();
    expect(await stateOf(first.id)).toBe('verified');
    // Process A sees the patient's writes refused twice: the budget is spent.
    const processA = engineProcess('process-a');
    const refused = [
      await h.submit({ businessKey: 'pg-poison:1', resource: observation(2, { ...patient, note: [{ text: 'n' }] }) }),
      await h.submit({ businessKey: 'pg-poison:2', resource: observation(3, { ...patient, note: [{ text: 'n' }] }) }),
    ];
    await processA.runUntilIdle();
    for (const r of refused) expect(await stateOf(r.id)).toBe('rejected');
    await processA.stop();

    // Once its cached count expired, process B holds the patient's next command, unsent.
    h.advance(PATIENT_BUDGET_CACHE_MS);
    const heldByB = await h.submit({ businessKey: 'pg-poison:3', resource: observation(4, patient) });
    await processB.runUntilIdle();
    expect(await h.store.commands.get(heldByB.id)).toMatchObject({ state: 'needs_review', stateReason: 'patient_budget_exhausted' });
    await processB.stop();
    // A process started afterwards (a restart) holds the next one too: the count lives in the database.
    const processC = engineProcess('process-c');
    const heldByC = await h.submit({ businessKey: 'pg-poison:4', resource: observation(5, patient) });
    const other = await h.submit({ businessKey: 'pg-poison:other', resource: observation(6, { subject: { reference: 'Patient/pg-healthy' } }) });
    await processC.runUntilIdle();
    expect(await h.store.commands.get(heldByC.id)).toMatchObject({ state: 'needs_review', stateReason: 'patient_budget_exhausted' });
    expect(await stateOf(other.id)).toBe('verified');
    expect(await h.creates('pg-poison:3')).toEqual([]);
    expect(await h.creates('pg-poison:4')).toEqual([]);
    await processC.stop();
  });
});
