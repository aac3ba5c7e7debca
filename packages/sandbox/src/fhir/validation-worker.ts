/**
 * Worker thread entry: structural validation of FHIR resources off the main thread. Validation with
 * `@medplum/core` is the most expensive step of a write (~200 µs for a small Observation); running it here lets
 * the sandbox use a second core while the main thread keeps every store operation synchronous (and therefore
 * atomic).
 *
 * Protocol: receives `{ id, json }` (the raw request text of one resource), answers `{ id, ok: true }` or
 * `{ id, ok: false, code, message, expression }`.
 */
import { parentPort } from 'node:worker_threads';
import { isTetherError } from '@tether/core';
import { ensureDefinitions } from './definitions.js';
import { validateStructure } from './rest.js';
import type { Resource } from './store.js';

ensureDefinitions();
const port = parentPort;
if (!port) throw new Error('validation-worker must run in a worker thread');

port.on('message', (msg: { id: number; json: string }) => {
  try {
    validateStructure(JSON.parse(msg.json) as Resource);
    port.postMessage({ id: msg.id, ok: true });
  } catch (err) {
    if (isTetherError(err)) {
      port.postMessage({ id: msg.id, ok: false, code: err.code, message: err.message, expression: err.details['expression'] });
    } else {
      port.postMessage({ id: msg.id, ok: false, code: 'INTERNAL', message: 'validation failed unexpectedly' });
    }
  }
});
port.postMessage({ ready: true });
