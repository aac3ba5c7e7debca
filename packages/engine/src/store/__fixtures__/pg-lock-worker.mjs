// A separate engine process for the cross-process withLock tests (postgres-store.test.ts). It uses the store
// exactly as the engine does, through the folder's entrance, against the database in TETHER_LOCK_TEST_URL.
//
//   increment <n>  n times: inside withLock('tenant-x', 'system'), read the counter row, sleep, write it + 1.
//                  Without mutual exclusion across processes, updates get lost and the final count is short.
//   hold           take the lock, print "locked", and never let go (the parent SIGKILLs this process).
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { createStore } from '../index.js';

const [mode, count = '50'] = process.argv.slice(2);
const url = process.env.TETHER_LOCK_TEST_URL;
if (!url) throw new Error('TETHER_LOCK_TEST_URL is not set');

const store = createStore({ kind: 'postgres', connectionString: url, poolSize: 2, lockPoolSize: 1 });
// The counter lives outside the store's schema and is read and written on a connection of its own.
const counter = new pg.Client({ connectionString: url });
await counter.connect();

if (mode === 'increment') {
  for (let i = 0; i < Number(count); i++) {
    await store.tokens.withLock('tenant-x', 'system', async () => {
      const { rows } = await counter.query('SELECT n FROM lock_counter WHERE id = 1');
      await sleep(Math.random() * 2);
      await counter.query('UPDATE lock_counter SET n = $1 WHERE id = 1', [rows[0].n + 1]);
    });
  }
} else if (mode === 'hold') {
  await store.tokens.withLock('tenant-x', 'system', async () => {
    process.stdout.write('locked\n');
    setInterval(() => {}, 60_000);
    await new Promise(() => {});
  });
} else {
  throw new Error(`unknown mode ${mode}`);
}

await counter.end();
await store.close();
