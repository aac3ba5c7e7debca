/**
 * CLI commands that talk to a running Tether service over its HTTP API (`submit`, `status`, `exceptions`,
 * `tenants`), and `migrate`, which opens the store directly. The API URL comes from `--url`, `TETHER_URL` or
 * `http://127.0.0.1:8080`; the key from `--key`, `TETHER_API_KEY`, or the bootstrap admin key file in the data
 * directory.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Option, type Command } from 'commander';
import { SingleBar, Presets } from 'cli-progress';
import { request } from 'undici';
import { TetherError } from '@tether/core';
import { loadServiceConfig } from '../service/index.js';
import { createStore } from '../store/index.js';

interface RemoteOptions {
  readonly url?: string;
  readonly key?: string;
}

const DEFAULT_URL = 'http://127.0.0.1:8080';

/** Thrown for an API answer that is not 2xx; the CLI prints the OperationOutcome's code and text. */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string | undefined;
  constructor(status: number, code: string | undefined, message: string) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function dataDir(): string {
  return resolve(process.env['TETHER_DATA_DIR'] ?? '.tether');
}

function apiKey(o: RemoteOptions): string {
  const key = o.key ?? process.env['TETHER_API_KEY'];
  if (key) return key.trim();
  const file = join(dataDir(), 'admin-api-key');
  if (existsSync(file)) return readFileSync(file, 'utf8').trim();
  throw new TetherError('CONFIG_INVALID', `no API key: pass --key, set TETHER_API_KEY, or run where ${file} exists`);
}

/** The parts of API answers the CLI reads (full shapes in docs/api.md). */
interface SubmitAnswer {
  readonly id: string;
  readonly state: string;
  readonly created: boolean;
}
interface CommandAnswer {
  readonly command: { readonly state: string };
}
interface DoctorAnswer {
  readonly tenant: string;
  readonly ok: boolean;
  readonly checks: readonly { name: string; ok: boolean; detail: string }[];
  readonly workflows: readonly { resourceType: string; action: string; status: string; reasons: readonly string[] }[];
}

/** Calls the API; resolves with the parsed JSON answer (typed by the caller), throws ApiError on 4xx/5xx. */
export async function callApi<T = unknown>(o: RemoteOptions, method: 'GET' | 'POST' | 'PATCH' | 'DELETE', path: string, body?: unknown, headers: Record<string, string> = {}): Promise<T> {
  const base = (o.url ?? process.env['TETHER_URL'] ?? DEFAULT_URL).replace(/\/+$/, '');
  let res;
  try {
    res = await request(`${base}${path}`, {
      method,
      headers: { authorization: `Bearer ${apiKey(o)}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      headersTimeout: 120_000,
      bodyTimeout: 120_000,
    });
  } catch (err) {
    throw new Error(`cannot reach the Tether API at ${base} (${(err as { code?: string }).code ?? 'network error'}); is \`tether start\` running?`);
  }
  const text = await res.body.text();
  let parsed: unknown = undefined;
  try {
    parsed = text === '' ? undefined : JSON.parse(text);
  } catch {
    parsed = text;
  }
  if (res.statusCode >= 400) {
    const issue = (parsed as { issue?: { diagnostics?: string; details?: { coding?: { code?: string }[] } }[] } | undefined)?.issue?.[0];
    const code = issue?.details?.coding?.[0]?.code;
    throw new ApiError(res.statusCode, code, `${code ?? `HTTP ${res.statusCode}`}: ${issue?.diagnostics ?? 'request failed'}`);
  }
  return parsed as T;
}

const print = (value: unknown): void => void process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);

/** Reads commands from a JSON file (one object or an array) or NDJSON (one per line). */
export function readCommands(file: string): Record<string, unknown>[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    throw new TetherError('CONFIG_INVALID', `cannot read ${file}`);
  }
  const trimmed = text.trim();
  try {
    const value = JSON.parse(trimmed) as unknown;
    return (Array.isArray(value) ? value : [value]) as Record<string, unknown>[];
  } catch {
    // Not one JSON document: NDJSON.
  }
  try {
    return trimmed.split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as Record<string, unknown>);
  } catch {
    throw new TetherError('CONFIG_INVALID', `${file} is neither JSON nor NDJSON (one command per line)`);
  }
}

const FINAL = new Set(['verified', 'rejected', 'needs_review', 'superseded', 'cancelled']);

export function registerRemoteCommands(program: Command): void {
  const remote = (cmd: Command): Command =>
    cmd.addOption(new Option('--url <url>', `Tether API base URL (default TETHER_URL or ${DEFAULT_URL})`)).addOption(new Option('--key <key>', 'API key (default TETHER_API_KEY or <data dir>/admin-api-key)'));

  remote(
    program
      .command('submit <file>')
      .description('Submit commands from a JSON file (one command or an array) or NDJSON (one per line). A command may carry "idempotencyKey", sent as the Idempotency-Key header.')
      .option('--wait', 'wait until every command is final (verified, rejected, needs_review, superseded, cancelled)')
      .addOption(new Option('--timeout <seconds>', 'with --wait: give up after this long').default(300).argParser(Number))
      .option('--json', 'print the result as JSON only (no progress bar)'),
  ).action(async (file: string, o: RemoteOptions & { wait?: boolean; timeout: number; json?: boolean }) => {
    const commands = readCommands(file);
    const bar = !o.json && process.stderr.isTTY ? new SingleBar({ format: 'submit [{bar}] {value}/{total} {phase}', stream: process.stderr }, Presets.shades_classic) : undefined;
    bar?.start(commands.length, 0, { phase: 'accepted' });
    const results: { line: number; id?: string; state?: string; replayed?: boolean; error?: string }[] = [];
    for (const [i, raw] of commands.entries()) {
      const { idempotencyKey, ...command } = raw as { idempotencyKey?: unknown } & Record<string, unknown>;
      try {
        const res = await callApi<SubmitAnswer>(o, 'POST', '/v1/commands', command, typeof idempotencyKey === 'string' ? { 'idempotency-key': idempotencyKey } : {});
        results.push({ line: i + 1, id: res.id, state: res.state, replayed: !res.created });
      } catch (err) {
        if (!(err instanceof ApiError)) throw err;
        results.push({ line: i + 1, error: err.message });
      }
      bar?.increment();
    }
    bar?.stop();
    if (o.wait) {
      const pending = results.filter((r) => r.id !== undefined);
      const waitBar = !o.json && process.stderr.isTTY ? new SingleBar({ format: 'final  [{bar}] {value}/{total}', stream: process.stderr }, Presets.shades_classic) : undefined;
      waitBar?.start(pending.length, 0);
      const end = Date.now() + o.timeout * 1000;
      const open = new Set(pending);
      while (open.size > 0 && Date.now() < end) {
        for (const r of [...open]) {
          const res = await callApi<CommandAnswer>(o, 'GET', `/v1/commands/${r.id ?? ''}`);
          r.state = res.command.state;
          if (FINAL.has(r.state as string)) {
            open.delete(r);
            waitBar?.increment();
          }
        }
        if (open.size > 0) await new Promise((done) => setTimeout(done, 250));
      }
      waitBar?.stop();
    }
    const summary = {
      submitted: results.filter((r) => r.id !== undefined && !r.replayed).length,
      replayed: results.filter((r) => r.replayed).length,
      failed: results.filter((r) => r.error !== undefined).length,
      states: results.reduce<Record<string, number>>((acc, r) => (r.state ? { ...acc, [r.state]: (acc[r.state] ?? 0) + 1 } : acc), {}),
      results,
    };
    print(summary);
    const notVerified = o.wait && results.some((r) => r.id !== undefined && r.state !== 'verified');
    if (summary.failed > 0 || notVerified) process.exitCode = 1;
  });

  remote(program.command('status <commandId>').description("A command's state and timeline (attempts and events).")).action(async (id: string, o: RemoteOptions) => {
    print(await callApi(o, 'GET', `/v1/commands/${encodeURIComponent(id)}`));
  });

  const exceptions = program.command('exceptions').description('The exception queue: list, retry, resolve, cancel.');
  remote(exceptions.command('list').description('Commands waiting for a human (needs_review).').option('--tenant <id>', 'only this tenant')).action(async (o: RemoteOptions & { tenant?: string }) => {
    print(await callApi(o, 'GET', `/v1/exceptions${o.tenant ? `?tenant=${encodeURIComponent(o.tenant)}` : ''}`));
  });
  remote(exceptions.command('show <commandId>').description('One exception with its full context and the EHR state.')).action(async (id: string, o: RemoteOptions) => {
    print(await callApi(o, 'GET', `/v1/exceptions/${encodeURIComponent(id)}`));
  });
  for (const action of ['retry', 'resolve', 'cancel'] as const) {
    remote(
      exceptions
        .command(`${action} <commandId>`)
        .description({ retry: 'Back to queued with a fresh budget (the next attempt reconciles first).', resolve: 'The EHR has it: mark verified.', cancel: 'Drop the intent.' }[action])
        .requiredOption('--reason <text>', 'why (kept in the audit trail)'),
    ).action(async (id: string, o: RemoteOptions & { reason: string }) => {
      print(await callApi(o, 'POST', `/v1/exceptions/${encodeURIComponent(id)}/${action}`, { reason: o.reason }));
    });
  }

  const tenants = program.command('tenants').description('Tenants: list, add, doctor.');
  remote(tenants.command('list').description('Registered tenants (no secrets).')).action(async (o: RemoteOptions) => {
    print(await callApi(o, 'GET', '/v1/tenants'));
  });
  remote(tenants.command('add <file>').description('Register a tenant from a JSON file (see docs/api.md; secrets are encrypted and write-only).')).action(async (file: string, o: RemoteOptions) => {
    const [tenant] = readCommands(file);
    print(await callApi(o, 'POST', '/v1/tenants', tenant));
  });
  remote(tenants.command('doctor <tenantId>').description('Check discovery, token, granted scopes and the CapabilityStatement; print what will and will not work.').option('--json', 'print the report as JSON')).action(
    async (id: string, o: RemoteOptions & { json?: boolean }) => {
      const report = await callApi<DoctorAnswer>(o, 'POST', `/v1/tenants/${encodeURIComponent(id)}/doctor`, {});
      if (o.json) print(report);
      else {
        const lines = [`Tenant ${report.tenant}: ${report.ok ? 'OK' : 'PROBLEMS FOUND'}`];
        for (const c of report.checks) lines.push(`  ${c.ok ? 'ok  ' : 'FAIL'} ${c.name.padEnd(12)} ${c.detail}`);
        lines.push('  What will work:');
        for (const w of report.workflows) lines.push(`    ${w.status.padEnd(8)} ${`${w.action} ${w.resourceType}`.padEnd(32)} ${w.reasons.join('; ')}`);
        process.stdout.write(`${lines.join('\n')}\n`);
      }
      if (!report.ok) process.exitCode = 1;
    },
  );

  const keys = program.command('keys').description('API keys (admin): list, create, revoke. Keys are stored hashed; a new key is shown once.');
  remote(keys.command('list').description('API keys: id, name, role, tenant scope, last use (never the key or its hash).')).action(async (o: RemoteOptions) => {
    print(await callApi(o, 'GET', '/v1/api-keys'));
  });
  remote(
    keys
      .command('create <name>')
      .description('Create a key, e.g. for your application: tether keys create my-app --role submitter --tenant clinic-1')
      .addOption(new Option('--role <role>', 'what the key may do').choices(['submitter', 'operator', 'viewer', 'admin']).makeOptionMandatory())
      .option('--tenant <id...>', 'limit the key to these tenants (default: all tenants)'),
  ).action(async (name: string, o: RemoteOptions & { role: string; tenant?: string[] }) => {
    const created = await callApi<{ id: string; key: string }>(o, 'POST', '/v1/api-keys', { name, role: o.role, tenants: o.tenant ?? null });
    print(created);
    process.stderr.write(`Store this key now (in a secret manager): it is shown only this once. Revoke it with \`tether keys revoke ${created.id}\`.\n`);
  });
  remote(keys.command('revoke <id>').description('Revoke a key: it stops working at once.')).action(async (id: string, o: RemoteOptions) => {
    await callApi(o, 'DELETE', `/v1/api-keys/${encodeURIComponent(id)}`);
    process.stdout.write(`Key ${id} revoked.\n`);
  });

  program
    .command('migrate')
    .description('Apply pending store migrations (the service also does this at start) and list what is applied.')
    .option('--config <file>', 'configuration file (default TETHER_CONFIG or ./tether.config.json)')
    .action(async (o: { config?: string }) => {
      const config = loadServiceConfig(o.config ? { file: o.config } : {});
      const store = createStore(
        config.store.kind === 'sqlite' ? { kind: 'sqlite', path: config.store.path ?? join(config.dataDir, 'tether.db') } : { kind: 'postgres', connectionString: config.store.url },
      );
      try {
        await store.migrate();
        process.stdout.write(`Store (${store.kind}) is migrated to the latest schema.\n`);
      } finally {
        await store.close();
      }
    });
}
