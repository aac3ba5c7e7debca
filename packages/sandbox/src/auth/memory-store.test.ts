import { afterEach, describe, expect, it, vi } from 'vitest';
import { createMemoryStore } from './memory-store.js';

afterEach(() => {
  vi.useRealTimers();
});

describe('createMemoryStore', () => {
  it('isolates stores from each other (oidc-provider bundled adapter shares one module-level LRU)', async () => {
    const a = createMemoryStore().adapterFactory('AccessToken');
    const b = createMemoryStore().adapterFactory('AccessToken');
    await a.upsert('t1', { clientId: 'c' }, 60);
    expect(await a.find('t1')).toEqual({ clientId: 'c' });
    expect(await b.find('t1')).toBeUndefined();
  });

  it('forgets entries once their TTL has passed', async () => {
    vi.useFakeTimers({ now: 1_000_000 });
    const store = createMemoryStore();
    const adapter = store.adapterFactory('AccessToken');
    await adapter.upsert('t1', { clientId: 'c' }, 10);
    vi.setSystemTime(1_000_000 + 9_999);
    expect(await adapter.find('t1')).toBeDefined();
    vi.setSystemTime(1_000_000 + 10_000);
    expect(await adapter.find('t1')).toBeUndefined();
    expect(store.size()).toBe(0);
  });

  it('returns copies, so mutating a found payload does not change the stored one', async () => {
    const adapter = createMemoryStore().adapterFactory('Grant');
    await adapter.upsert('g1', { accountId: 'Patient/1', scope: 'a' }, 60);
    const found = await adapter.find('g1');
    if (found) found.scope = 'tampered';
    expect((await adapter.find('g1'))?.scope).toBe('a');
  });

  it('revokes every token of a grant across models', async () => {
    const store = createMemoryStore();
    const at = store.adapterFactory('AccessToken');
    const rt = store.adapterFactory('RefreshToken');
    await at.upsert('at1', { grantId: 'g1' }, 60);
    await rt.upsert('rt1', { grantId: 'g1' }, 60);
    await at.upsert('at2', { grantId: 'g2' }, 60);
    await rt.revokeByGrantId('g1');
    expect(await at.find('at1')).toBeUndefined();
    expect(await rt.find('rt1')).toBeUndefined();
    expect(await at.find('at2')).toBeDefined();
  });

  it('marks consumed entries, or deletes them for models configured so', async () => {
    const store = createMemoryStore({ deleteOnConsume: new Set(['RefreshToken']) });
    const code = store.adapterFactory('AuthorizationCode');
    const rt = store.adapterFactory('RefreshToken');
    await code.upsert('c1', { grantId: 'g' }, 60);
    await rt.upsert('r1', { grantId: 'g' }, 60);
    await code.consume('c1');
    await rt.consume('r1');
    expect(typeof (await code.find('c1'))?.consumed).toBe('number');
    expect(await rt.find('r1')).toBeUndefined();
  });

  it('finds sessions by uid', async () => {
    const sessions = createMemoryStore().adapterFactory('Session');
    await sessions.upsert('s1', { uid: 'u1', accountId: 'Practitioner/1' }, 60);
    expect((await sessions.findByUid('u1'))?.accountId).toBe('Practitioner/1');
    await sessions.destroy('s1');
    expect(await sessions.findByUid('u1')).toBeUndefined();
  });
});
