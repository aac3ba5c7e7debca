// A separate engine process for broker.multiprocess.test.ts: its own TokenBroker on the shared PostgreSQL store.
// Runs rounds of concurrent getAccessToken calls on command and reports the distinct tokens it saw.
import { createStore, Keyring, parseMasterKey, TokenBroker } from '../../../dist/index.js';

let broker;
let store;
process.on('message', async (msg) => {
  try {
    if (msg.type === 'init') {
      store = await createStore({ kind: 'postgres', connectionString: msg.connectionString, poolSize: 4 });
      broker = new TokenBroker({
        store,
        keyring: new Keyring(parseMasterKey(msg.masterKey)),
        refreshWindowMinSeconds: 0,
        refreshWindowFraction: 0.2,
        expirySafetyMs: 500,
      });
      process.send({ type: 'ready' });
    } else if (msg.type === 'round') {
      const tokens = await Promise.all(Array.from({ length: msg.callers }, () => broker.getAccessToken(msg.tenantId, 'system')));
      process.send({ type: 'done', tokens: [...new Set(tokens)] });
    } else if (msg.type === 'exit') {
      await store.close();
      process.exit(0);
    }
  } catch (err) {
    process.send({ type: 'error', code: err?.code ?? 'UNKNOWN', message: String(err?.message ?? err) });
  }
});
