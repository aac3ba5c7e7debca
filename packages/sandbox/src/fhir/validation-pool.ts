import { Worker } from 'node:worker_threads';
import { TetherError, type ErrorCode } from '@tether/core';

type Answer = { id: number; ok: true } | { id: number; ok: false; code: ErrorCode; message: string; expression?: string[] };

interface Pending {
  resolve: () => void;
  reject: (err: TetherError) => void;
}

/**
 * A small pool of validation worker threads (see validation-worker.ts). `validate(json)` resolves when the
 * resource is structurally valid and rejects with the same TetherError the in-thread validator throws.
 * A worker that dies fails its pending validations with INTERNAL and is replaced.
 */
export class ValidationPool {
  readonly #workers: Worker[] = [];
  readonly #pending = new Map<number, Pending>();
  readonly #owner = new Map<number, Worker>();
  #next = 0;
  #rr = 0;
  #closed = false;

  private constructor() {}

  /** Starts `threads` workers and waits until each has loaded the FHIR definitions. */
  static async start(threads: number): Promise<ValidationPool> {
    const pool = new ValidationPool();
    await Promise.all(Array.from({ length: threads }, () => pool.#spawn()));
    return pool;
  }

  #spawn(): Promise<void> {
    const worker = new Worker(new URL('./validation-worker.js', import.meta.url));
    this.#workers.push(worker);
    return new Promise<void>((ready, failed) => {
      worker.on('message', (msg: Answer | { ready: true }) => {
        if ('ready' in msg) return ready();
        const p = this.#pending.get(msg.id);
        if (!p) return;
        this.#pending.delete(msg.id);
        this.#owner.delete(msg.id);
        if (msg.ok) p.resolve();
        else p.reject(new TetherError(msg.code, msg.message, { details: { expression: msg.expression ?? [] } }));
      });
      worker.once('error', failed);
      worker.once('exit', () => {
        const i = this.#workers.indexOf(worker);
        if (i >= 0) this.#workers.splice(i, 1);
        for (const [id, owner] of this.#owner) {
          if (owner !== worker) continue;
          this.#pending.get(id)?.reject(new TetherError('INTERNAL', 'A validation worker stopped.'));
          this.#pending.delete(id);
          this.#owner.delete(id);
        }
        if (!this.#closed) this.#spawn().catch(() => {});
      });
    });
  }

  /** Validates one resource given as JSON text. */
  validate(json: string): Promise<void> {
    const worker = this.#workers[this.#rr++ % this.#workers.length];
    if (!worker) return Promise.reject(new TetherError('INTERNAL', 'No validation worker is running.'));
    const id = ++this.#next;
    return new Promise<void>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#owner.set(id, worker);
      worker.postMessage({ id, json });
    });
  }

  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all(this.#workers.map((w) => w.terminate()));
  }
}
