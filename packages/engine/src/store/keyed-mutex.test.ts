import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { KeyedMutex } from './keyed-mutex.js';

describe('KeyedMutex', () => {
  it('admits callers of one key one at a time, in arrival order', async () => {
    const mutex = new KeyedMutex();
    const order: number[] = [];
    await Promise.all(
      [0, 1, 2, 3].map(async (i) => {
        const release = await mutex.acquire('k', 1_000);
        order.push(i);
        await sleep(2);
        release();
      }),
    );
    expect(order).toEqual([0, 1, 2, 3]);
    expect(mutex.size).toBe(0);
  });

  it('lets different keys run together', async () => {
    const mutex = new KeyedMutex();
    const a = await mutex.acquire('a', 1_000);
    const b = await mutex.acquire('b', 100);
    a();
    b();
  });

  it('times out a waiter with STORE_UNAVAILABLE without breaking the queue behind it', async () => {
    const mutex = new KeyedMutex();
    const holder = await mutex.acquire('k', 1_000);
    const impatient = mutex.acquire('k', 20);
    const patient = mutex.acquire('k', 1_000);
    await expect(impatient).rejects.toMatchObject({ code: 'STORE_UNAVAILABLE', details: { timeoutMs: 20 } });
    let patientGotIt = false;
    void patient.then(() => (patientGotIt = true));
    await sleep(10);
    expect(patientGotIt).toBe(false);
    holder();
    const release = await patient;
    release();
    release(); // idempotent
    await sleep(0);
    expect(mutex.size).toBe(0);
  });
});
