import { describe, expect, it } from 'vitest';
import { bk, History, obs, SYSTEM } from './__fixtures__/history.js';
import { check, isViolation } from './check.js';
import { CheckerInputError } from './errors.js';
import type { CheckInputs, CheckReport } from './types.js';

/** Every violation count at zero; each test overrides exactly the class it provokes, so a stray hit fails. */
const NO_VIOLATIONS = { lost: 0, duplicated: 0, unexpected: 0, corrupt: 0, stale: 0, dropped: 0, canaryHits: 0 };

function violations(r: CheckReport): typeof NO_VIOLATIONS {
  const { lost, duplicated, unexpected, corrupt, stale, dropped, canaryHits } = r;
  return { lost, duplicated, unexpected, corrupt, stale, dropped, canaryHits };
}

/** The inputs without any claims file (as when the engine's history was not collected). */
function withoutClaims(h: History): CheckInputs {
  return { ledger: h.ledger, writeLog: h.writeLog, finalRead: h.finalRead(), businessKeySystem: SYSTEM };
}

describe('a clean run', () => {
  it('reports all zeros, counts outcomes, and is not a violation', () => {
    const h = new History();
    h.intent('c1', 'a', obs('a', 70));
    h.intent('c2', 'a', obs('a', 72), { seq: 2, action: 'update' });
    h.intent('c3', 'b', obs('b', 60));
    h.intent('c4', 'c', obs('c', -1, { status: 'bogus' }), { expect: 'reject' });
    const a = h.create(obs('a', 70));
    h.update(a, obs('a', 72));
    const b = h.create(obs('b', 60));
    h.claim('c1', 'verified', undefined, a).claim('c2', 'verified', undefined, `Observation/${a}`).claim('c3', 'acknowledged', undefined, b);
    h.claim('c4', 'rejected', 'EHR 422: invalid status');

    const r = check(h.inputs({ seed: 7, faults: { total: 0 } }));
    expect(violations(r)).toEqual(NO_VIOLATIONS);
    expect(r).toMatchObject({ seed: 7, commands: 4, acknowledged: 3, ambiguous: 0, recovered: 0, quarantined: 1, faults: { total: 0 } });
    expect(r.details).toEqual({ lost: [], duplicated: [], unexpected: [], corrupt: [], stale: [], dropped: [], canaryHits: [], warnings: [] });
    expect(isViolation(r)).toBe(false);
  });

  it('takes the seed from the fault stats when none is given, and null without either', () => {
    const h = new History();
    expect(check(h.inputs({ faults: { seed: 42 } })).seed).toBe(42);
    expect(check(h.inputs()).seed).toBeNull();
    expect(check(h.inputs()).faults).toEqual({});
  });
});

describe('lost', () => {
  it('an acknowledged create that never reached the EHR', () => {
    const h = new History();
    h.intent('c1', 'a', obs('a', 70));
    h.claim('c1', 'verified');
    const r = check(h.inputs());
    expect(violations(r)).toEqual({ ...NO_VIOLATIONS, lost: 1 });
    expect(r.details.lost).toEqual([{ businessKey: bk('a'), commandIds: ['c1'], note: expect.stringContaining('0 create(s)') as unknown }]);
    expect(isViolation(r)).toBe(true);
  });

  it('an acknowledged create that was deleted afterwards (not a duplicate: only one create)', () => {
    const h = new History();
    h.intent('c1', 'a', obs('a', 70));
    h.claim('c1', 'verified');
    h.delete('Observation', h.create(obs('a', 70)));
    const r = check(h.inputs());
    expect(violations(r)).toEqual({ ...NO_VIOLATIONS, lost: 1 });
    expect(r.details.lost[0]?.note).toContain('1 create(s), 1 of the key');
  });

  it('an expected-accept command that is absent when no claims were collected (lost, not dropped)', () => {
    const h = new History();
    h.intent('c1', 'a', obs('a', 70));
    const r = check(withoutClaims(h));
    expect(violations(r)).toEqual({ ...NO_VIOLATIONS, lost: 1 });
    expect(r.ambiguous).toBe(1);
  });

  it('a receipted command the engine has no record of is lost; without the receipt it is dropped', () => {
    const h = new History();
    h.intent('c1', 'a', obs('a', 70));
    h.intent('c2', 'b', obs('b', 71));
    h.claim('c2', 'verified');
    h.create(obs('b', 71));
    const receipted = check(h.inputs({ receipts: ['c1', 'c2'] }));
    expect(violations(receipted)).toEqual({ ...NO_VIOLATIONS, lost: 1 });
    expect(receipted.details.lost).toEqual([{ businessKey: bk('a'), commandIds: ['c1'], note: expect.stringContaining('1 receipted command(s) the engine has no record of') as unknown }]);
    expect(violations(check(h.inputs()))).toEqual({ ...NO_VIOLATIONS, dropped: 1 });
  });

  it('warns about receipts for commands outside the ledger, and about receipts without claims', () => {
    const h = new History();
    h.intent('c1', 'a', obs('a', 70));
    h.claim('c1', 'verified');
    h.create(obs('a', 70));
    expect(check(h.inputs({ receipts: ['c1', 'zz'] })).details.warnings).toEqual([expect.stringContaining('receipts for commands that are not in the ledger') as unknown]);
    expect(() => check(h.inputs({ receipts: [{} as unknown as string] }))).toThrow(/receipts\[0\]/);
  });

  it('a no-reason rejection whose key was written and then deleted is lost (it cannot be "dropped": something was written)', () => {
    const h = new History();
    h.intent('c1', 'a', obs('a', 70));
    h.claim('c1', 'rejected');
    h.delete('Observation', h.create(obs('a', 70)));
    expect(violations(check(h.inputs()))).toEqual({ ...NO_VIOLATIONS, lost: 1 });
  });
});

describe('duplicated', () => {
  it('two live resources carry one business key', () => {
    const h = new History();
    h.intent('c1', 'a', obs('a', 70));
    h.claim('c1', 'verified');
    const first = h.create(obs('a', 70));
    const second = h.create(obs('a', 70));
    const r = check(h.inputs());
    expect(violations(r)).toEqual({ ...NO_VIOLATIONS, duplicated: 1 });
    expect(r.details.duplicated[0]?.note).toContain(`2 live (Observation/${first}, Observation/${second}); 2 create(s)`);
  });

  it('created twice, then one deleted: one live and correct, but still a duplicate clinical write', () => {
    const h = new History();
    h.intent('c1', 'a', obs('a', 70));
    h.claim('c1', 'verified');
    h.create(obs('a', 70));
    h.delete('Observation', h.create(obs('a', 70)));
    const r = check(h.inputs());
    expect(violations(r)).toEqual({ ...NO_VIOLATIONS, duplicated: 1 });
    expect(r.details.duplicated[0]?.note).toContain('1 live');
    expect(r.recovered).toBe(0);
  });

  it('a second resource that got the key stamped on by an update (no second create) still counts', () => {
    const h = new History();
    h.intent('c1', 'a', obs('a', 70));
    h.claim('c1', 'verified');
    h.create(obs('a', 70));
    const other = h.create({ resourceType: 'Observation', status: 'final' });
    h.update(other, obs('a', 70));
    h.delete('Observation', other);
    expect(violations(check(h.inputs()))).toEqual({ ...NO_VIOLATIONS, duplicated: 1 });
  });
});

describe('unexpected', () => {
  it('live resources and deleted creates with a business key no intent has; other identifier systems are ignored', () => {
    const h = new History();
    h.intent('c1', 'a', obs('a', 70));
    h.claim('c1', 'verified');
    h.create(obs('a', 70));
    h.create(obs('zzz', 1));
    h.delete('Observation', h.create(obs('ghost', 1)));
    h.create({ resourceType: 'Patient', identifier: [{ system: 'urn:mrn', value: 'MRN-1' }] });
    const r = check(h.inputs());
    expect(violations(r)).toEqual({ ...NO_VIOLATIONS, unexpected: 2 });
    expect(r.details.unexpected.map((x) => x.businessKey)).toEqual([bk('ghost'), bk('zzz')]);
  });

  it('a key whose every intent expected a rejection, written anyway', () => {
    const h = new History();
    h.intent('c1', 'bad', obs('bad', -1), { expect: 'reject' });
    h.claim('c1', 'rejected', 'EHR 422');
    h.create(obs('bad', -1));
    const r = check(h.inputs());
    expect(violations(r)).toEqual({ ...NO_VIOLATIONS, unexpected: 1 });
    expect(r.details.unexpected[0]).toMatchObject({ businessKey: bk('bad'), commandIds: ['c1'] });
  });
});

describe('corrupt', () => {
  it('exactly one live resource whose content matches no intent', () => {
    const h = new History();
    h.intent('c1', 'a', obs('a', 70));
    h.claim('c1', 'verified');
    h.create(obs('a', 71));
    const r = check(h.inputs());
    expect(violations(r)).toEqual({ ...NO_VIOLATIONS, corrupt: 1 });
    expect(r.details.corrupt[0]?.note).toContain('matches no intent');
    expect(r.recovered).toBe(0);
  });

  it('the content of an intent that was expected to be rejected', () => {
    const h = new History();
    h.intent('c1', 'a', obs('a', 70));
    h.intent('c2', 'a', obs('a', -5), { seq: 2, action: 'update', expect: 'reject' });
    h.claim('c1', 'verified').claim('c2', 'rejected', 'EHR 422');
    h.update(h.create(obs('a', 70)), obs('a', -5));
    const r = check(h.inputs());
    expect(violations(r)).toEqual({ ...NO_VIOLATIONS, corrupt: 1 });
    expect(r.details.corrupt[0]?.note).toContain("seq 2 ('c2'), which was not expected to take effect");
  });

  it('ignores id, meta and narrative, but not a dropped element', () => {
    const h = new History();
    const content = obs('a', 70, { note: [{ text: 'n' }] });
    h.intent('c1', 'a', content);
    h.claim('c1', 'verified');
    const { note: _dropped, ...withoutNote } = content;
    h.create({ ...withoutNote, resourceType: 'Observation' });
    expect(violations(check(h.inputs()))).toEqual({ ...NO_VIOLATIONS, corrupt: 1 });
  });
});

describe('stale', () => {
  it('an older update applied last', () => {
    const h = new History();
    h.intent('c1', 'a', obs('a', 70));
    h.intent('c2', 'a', obs('a', 72), { seq: 2, action: 'update' });
    h.claim('c1', 'verified').claim('c2', 'verified');
    const id = h.create(obs('a', 70));
    h.update(id, obs('a', 72));
    h.update(id, obs('a', 70)); // a redelivered old write wins the race
    const r = check(h.inputs());
    expect(violations(r)).toEqual({ ...NO_VIOLATIONS, stale: 1 });
    expect(r.details.stale[0]).toMatchObject({ businessKey: bk('a'), commandIds: ['c1', 'c2'] });
    expect(isViolation(r)).toBe(true);
    expect(isViolation(r, { allowStale: true })).toBe(false);
  });

  it('an acknowledged update that never landed', () => {
    const h = new History();
    h.intent('c1', 'a', obs('a', 70));
    h.intent('c2', 'a', obs('a', 72), { seq: 2, action: 'update' });
    h.claim('c1', 'verified').claim('c2', 'verified');
    h.create(obs('a', 70));
    expect(violations(check(h.inputs()))).toEqual({ ...NO_VIOLATIONS, stale: 1 });
  });

  it('is not raised when the newer update was quarantined with a reason (the older content is the right one)', () => {
    const h = new History();
    h.intent('c1', 'a', obs('a', 70));
    h.intent('c2', 'a', obs('a', 72, { extra: 'v2-field' }), { seq: 2, action: 'update' });
    h.claim('c1', 'verified').claim('c2', 'needs_review', 'EHR 422: element not supported (schema v2)');
    h.create(obs('a', 70));
    const r = check(h.inputs());
    expect(violations(r)).toEqual(NO_VIOLATIONS);
    expect(r.quarantined).toBe(1);
  });
});

describe('recovered and ambiguous', () => {
  it('an unknown outcome that landed exactly once and correct is recovered, not a violation', () => {
    const h = new History();
    h.intent('c1', 'a', obs('a', 70));
    h.intent('c2', 'b', obs('b', 60));
    h.claim('c1', 'unknown');
    h.create(obs('a', 70));
    h.create(obs('b', 60)); // c2 has no claim at all: unresolved, yet present
    const r = check(h.inputs());
    expect(violations(r)).toEqual(NO_VIOLATIONS);
    expect(r).toMatchObject({ acknowledged: 0, ambiguous: 2, recovered: 2 });
  });

  it('without claims every command is ambiguous; only commands with a visible effect are recovered', () => {
    const h = new History();
    h.intent('c1', 'a', obs('a', 70));
    h.intent('c2', 'a', obs('a', 71), { seq: 2, action: 'update' });
    h.intent('c3', 'a', obs('a', 72), { seq: 3, action: 'update' });
    const id = h.create(obs('a', 70));
    h.update(id, obs('a', 71));
    h.update(id, obs('a', 72));
    const r = check(withoutClaims(h));
    expect(violations(r)).toEqual(NO_VIOLATIONS);
    // c1 created the object, c3's content is live; c2's effect was overwritten and cannot be seen.
    expect(r).toMatchObject({ ambiguous: 3, recovered: 2, acknowledged: 0 });
  });

  it('an ambiguous command on a duplicated key is not recovered', () => {
    const h = new History();
    h.intent('c1', 'a', obs('a', 70));
    h.claim('c1', 'in_flight');
    h.create(obs('a', 70));
    h.create(obs('a', 70));
    const r = check(h.inputs());
    expect(r).toMatchObject({ ambiguous: 1, recovered: 0, duplicated: 1 });
  });
});

describe('dropped versus quarantined', () => {
  it('counts unexplained endings as dropped and reasoned ones as quarantined', () => {
    const h = new History();
    h.intent('k1', 'k1', obs('k1', 1));
    h.claim('k1', 'rejected'); // no reason
    h.intent('k2', 'k2', obs('k2', 2));
    h.claim('k2', 'rejected', 'EHR 422: Observation.extension not supported');
    h.intent('k3', 'k3', obs('k3', 3));
    h.claim('k3', 'needs_review', 'outcome unknown; EHR search inconclusive');
    h.intent('k4', 'k4', obs('k4', 4));
    h.claim('k4', 'needs_review', '   '); // a blank reason is no reason
    h.intent('k5', 'k5', obs('k5', 5)); // no claim although claims were collected
    h.intent('k6', 'k6', obs('k6', 6));
    h.claim('k6', 'unknown');
    h.intent('k7', 'k7', obs('k7', 7));
    h.claim('k7', 'cancelled');
    h.intent('k8', 'k8', obs('k8', 8), { expect: 'reject' });
    h.claim('k8', 'rejected'); // expected to be rejected: not dropped, whatever the reason

    const r = check(h.inputs());
    expect(violations(r)).toEqual({ ...NO_VIOLATIONS, dropped: 5 });
    expect(r.details.dropped.map((d) => d.commandIds[0])).toEqual(['k1', 'k4', 'k5', 'k6', 'k7']);
    expect(r.details.dropped[0]?.note).toContain("'rejected' without a reason");
    expect(r).toMatchObject({ quarantined: 2, ambiguous: 2, lost: 0 });
  });

  it('the claim history may repeat a command: the last line wins', () => {
    const h = new History();
    h.intent('c1', 'a', obs('a', 70));
    h.claim('c1', 'rejected').claim('c1', 'needs_review', 'EHR 422');
    expect(violations(check(h.inputs()))).toEqual(NO_VIOLATIONS);
  });

  it('a quarantined in-doubt write that did land is fine', () => {
    const h = new History();
    h.intent('c1', 'a', obs('a', 70));
    h.claim('c1', 'needs_review', 'timeout after send; verify manually');
    h.create(obs('a', 70));
    const r = check(h.inputs());
    expect(violations(r)).toEqual(NO_VIOLATIONS);
    expect(r).toMatchObject({ quarantined: 1, recovered: 0 });
  });

  it('superseded is accounted for only when a later intent exists', () => {
    const h = new History();
    h.intent('c1', 'a', obs('a', 70));
    h.intent('c2', 'a', obs('a', 71), { seq: 2, action: 'update' });
    h.intent('c3', 'a', obs('a', 72), { seq: 3, action: 'update' });
    h.claim('c1', 'verified').claim('c2', 'superseded').claim('c3', 'verified');
    h.update(h.create(obs('a', 70)), obs('a', 72));
    h.intent('d1', 'd', obs('d', 1));
    h.claim('d1', 'superseded'); // nothing to be superseded by
    const r = check(h.inputs());
    expect(violations(r)).toEqual({ ...NO_VIOLATIONS, dropped: 1 });
    expect(r.details.dropped[0]?.commandIds).toEqual(['d1']);
  });
});

describe('PHI canaries', () => {
  const CANARY_NAME = 'Zyxwvut Canarysson';
  const CANARY_SSN = '999-12-3456';
  const CANARY_UNICODE = 'Zoë "Q" Canary';

  it('counts (canary, log) pairs, case-insensitively and in JSON-escaped form, and never prints a canary', () => {
    const h = new History();
    h.intent('c1', 'a', obs('a', 70), { canaries: [CANARY_NAME, CANARY_SSN, CANARY_UNICODE] });
    h.claim('c1', 'verified');
    h.create(obs('a', 70));
    const logs = [
      { name: 'engine.log', text: `{"msg":"patient ${CANARY_NAME.toUpperCase()} admitted","again":"${CANARY_NAME}"}\n` },
      { name: 'clean.log', text: '{"msg":"command verified","commandId":"c1"}\n' },
      { name: 'worker.log', text: `${JSON.stringify({ ssn: CANARY_SSN })}\n{"name":"Zo\\u00eb \\"Q\\" Canary"}\n` },
    ];
    const r = check(h.inputs({ logs }));
    expect(violations(r)).toEqual({ ...NO_VIOLATIONS, canaryHits: 3 });
    expect(r.details.canaryHits).toEqual([
      { file: 'engine.log', canaries: 1, occurrences: 2 },
      { file: 'worker.log', canaries: 2, occurrences: 2 },
    ]);
    const printed = JSON.stringify(r).toLowerCase();
    for (const c of [CANARY_NAME, CANARY_SSN, CANARY_UNICODE]) expect(printed).not.toContain(c.toLowerCase());
  });

  it('redacts a canary that happens to be part of a business key in the details', () => {
    const h = new History();
    h.intent('c1', 'MRN-CANARY-77', obs('MRN-CANARY-77', 70), { canaries: ['mrn-canary-77'] });
    h.claim('c1', 'verified');
    const r = check(h.inputs());
    expect(r.lost).toBe(1);
    expect(r.details.lost[0]?.businessKey).toBe(`${SYSTEM}|[canary]`);
    expect(JSON.stringify(r).toLowerCase()).not.toContain('mrn-canary-77');
  });
});

describe('input problems', () => {
  it('rejects a ledger that contradicts itself', () => {
    const h = new History();
    h.intent('c1', 'a', obs('a', 70));
    h.intent('c1', 'b', obs('b', 70));
    expect(() => check(h.inputs())).toThrow(/command id 'c1' appears twice/);

    const g = new History();
    g.intent('c1', 'a', obs('a', 70));
    g.intent('c2', 'a', obs('a', 71), { action: 'update' });
    expect(() => check(g.inputs())).toThrow(/same seq 1/);
  });

  it('names the record of a malformed input', () => {
    const h = new History();
    h.intent('c1', 'a', obs('a', 70));
    const { contentHash: _c, ...broken } = h.ledger[0] ?? {};
    expect(() => check({ ...h.inputs(), ledger: [broken as never] })).toThrow(CheckerInputError);
    expect(() => check({ ...h.inputs(), ledger: [broken as never] })).toThrow("ledger[0]: 'contentHash' must be a non-empty string");
    expect(() => check({ ...h.inputs(), finalRead: [{ resourceType: 'Observation' }] })).toThrow("finalRead[0]: 'id' must be");
  });

  it('accepts a resource read twice, but not two different copies of one resource', () => {
    const h = new History();
    h.intent('c1', 'a', obs('a', 70));
    h.claim('c1', 'verified');
    h.create(obs('a', 70));
    const [only] = h.finalRead();
    expect(check({ ...h.inputs(), finalRead: [only!, only!] }).duplicated).toBe(0);
    expect(() => check({ ...h.inputs(), finalRead: [only!, { ...only!, status: 'amended' }] })).toThrow(/Observation\/r1 appears twice/);
  });
});

describe('warnings about the inputs', () => {
  it('notes a final read that misses a live resource, claims for unknown commands, and ehrId mismatches', () => {
    const h = new History();
    h.intent('c1', 'a', obs('a', 70));
    h.intent('c2', 'b', obs('b', 70));
    h.claim('c1', 'verified', undefined, 'r99').claim('c2', 'verified').claim('nobody', 'verified');
    h.create(obs('a', 70));
    h.create(obs('b', 70));
    const r = check({ ...h.inputs(), finalRead: h.finalRead().filter((x) => x.id === 'r1') });
    expect(r.lost).toBe(1); // the final read is the truth about the end state...
    expect(r.details.warnings).toEqual([
      // ...but the checker says why it may be wrong.
      '1 claims for commands that are not in the ledger (e.g. nobody)',
      '1 resources live per the write log but missing from the final read (e.g. Observation/r2)',
      '1 acknowledged claims whose ehrId is not the resource carrying the key (e.g. c1)',
    ]);
  });
});
