/**
 * The deliberately broken `ack-before-commit` API (chaos sensitivity only) really is broken: a 202 can be
 * answered for a command that a crash then loses. The correct API, in the same situation, has it on disk.
 */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { createStore } from '../store/index.js';
import { canaryObservation, startTestService } from '../service/__fixtures__/service.js';

const body = (key: string) => ({ tenantId: 'demo', context: 'system', action: 'create', resourceType: 'Observation', resource: canaryObservation('CANARY-BROKEN'), businessKey: key });

async function acceptedThenStopped(broken: boolean): Promise<boolean> {
  const t = await startTestService({ worker: { enabled: false } }, broken ? { unsafeBroken: 'ack-before-commit' } : {});
  try {
    const res = await t.api('POST', '/v1/commands', { body: body('broken:1') });
    expect(res.status).toBe(202);
    // The process stops right after the acknowledgement (as a crash would).
    await t.close(true);
    const store = createStore({ kind: 'sqlite', path: join(t.dir, '.tether', 'tether.db') });
    try {
      return (await store.commands.get(res.body.id)) !== undefined;
    } finally {
      await store.close();
    }
  } finally {
    rmSync(t.dir, { recursive: true, force: true });
  }
}

describe('ack-before-commit (sensitivity variant)', () => {
  it('the correct API has every acknowledged command on disk', async () => {
    expect(await acceptedThenStopped(false)).toBe(true);
  });

  it('the broken API loses an acknowledged command when the process stops before its late insert', async () => {
    expect(await acceptedThenStopped(true)).toBe(false);
  });
});
