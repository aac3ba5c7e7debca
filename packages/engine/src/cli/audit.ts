/**
 * `tether audit verify`: reads the audit log straight from the store and checks its hash chain, its head and any
 * anchors given. Exit 0 when intact, 1 when tampered with (each problem printed as a seq and a kind, never a
 * record's contents), 2 when it could not verify (usage, configuration, store unreachable or busy).
 *
 * With `--url` (or when the SQLite store is held by a running `tether start`, which keeps it exclusively) it asks
 * the service instead: `GET /v1/audit/verify`, with the key from `--key`, `TETHER_API_KEY` or
 * `<data dir>/admin-api-key`. Same verdicts and exit codes.
 *
 * `tether audit export`: the records as FHIR R4 AuditEvent, NDJSON on stdout.
 *
 * The store is chosen by flags, then the environment (`TETHER_STORE`, `TETHER_POSTGRES_URL`,
 * `TETHER_SQLITE_PATH`, `TETHER_DATA_DIR`), then the default: SQLite at `<data dir>/tether.db`, data dir
 * `./.tether` — the same file `tether start` uses.
 */
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { InvalidArgumentError, Option, type Command } from 'commander';
import { isTetherError, TetherError, type AuditHead, type AuditProblem } from '@tether/core';
import { AuditLog } from '../audit/index.js';
import { createStore, type Store } from '../store/index.js';
import { callApi } from './remote.js';

const EXIT = { Intact: 0, Tampered: 1, CannotVerify: 2 } as const;

interface StoreFlags {
  readonly store?: 'sqlite' | 'postgres';
  readonly dataDir?: string;
  readonly sqlitePath?: string;
  readonly postgresUrl?: string;
}

interface VerifyOptions extends StoreFlags {
  readonly anchor: AuditHead[];
  readonly json?: boolean;
  readonly url?: string;
  readonly key?: string;
}

/** What a verification found (the fields of AuditVerification this command prints). */
interface Verdict {
  readonly ok: boolean;
  readonly checked: number;
  readonly last?: AuditHead | undefined;
  readonly problemCount: number;
  readonly problems: readonly AuditProblem[];
}

/** Reads the chain from the store itself. */
async function verifyFromStore(o: VerifyOptions): Promise<Verdict> {
  const store = openStore(o, process.env);
  try {
    await store.migrate();
    return await new AuditLog({ store }).verify({ anchors: o.anchor });
  } finally {
    await store.close();
  }
}

/** Asks the running service (`GET /v1/audit/verify`). */
async function verifyThroughApi(o: VerifyOptions): Promise<Verdict> {
  const query = o.anchor.map((a) => `anchor=${a.seq}:${a.hash}`).join('&');
  return callApi<Verdict>({ ...(o.url ? { url: o.url } : {}), ...(o.key ? { key: o.key } : {}) }, 'GET', `/v1/audit/verify${query ? `?${query}` : ''}`);
}

/** The SQLite file is held exclusively by another process (a running `tether start`). */
const storeBusy = (err: unknown): boolean => isTetherError(err) && err.code === 'STORE_UNAVAILABLE' && /SQLITE_BUSY|SQLITE_LOCKED/.test(err.message);

interface ExportOptions extends StoreFlags {
  readonly after: number;
  readonly limit?: number;
  readonly tenant?: string;
}

function parseAnchor(value: string, previous: AuditHead[] = []): AuditHead[] {
  const m = /^(\d{1,15}):([0-9a-f]{64})$/.exec(value.trim());
  if (!m) throw new InvalidArgumentError('--anchor must be SEQ:HASH (a seq and a 64-digit hex hash, as printed by a verify).');
  return [...previous, { seq: Number(m[1]), hash: m[2] as string }];
}

/** Which store to open, from flags, then environment, then defaults. Throws CONFIG_INVALID on a contradiction. */
function openStore(o: StoreFlags, env: NodeJS.ProcessEnv): Store {
  if (o.dataDir !== undefined && o.sqlitePath !== undefined) throw new TetherError('CONFIG_INVALID', 'give at most one of --data-dir and --sqlite-path.');
  const postgresUrl = o.postgresUrl ?? env['TETHER_POSTGRES_URL'];
  const sqlitePath = o.sqlitePath ?? (o.dataDir === undefined ? env['TETHER_SQLITE_PATH'] : undefined);
  const envKind = env['TETHER_STORE'] === 'sqlite' || env['TETHER_STORE'] === 'postgres' ? env['TETHER_STORE'] : undefined;
  const kind = o.store ?? (o.postgresUrl !== undefined ? 'postgres' : o.sqlitePath !== undefined || o.dataDir !== undefined ? 'sqlite' : (envKind ?? (postgresUrl ? 'postgres' : 'sqlite')));
  if (kind === 'postgres') {
    if (o.sqlitePath !== undefined || o.dataDir !== undefined) throw new TetherError('CONFIG_INVALID', '--sqlite-path and --data-dir are for the SQLite store.');
    if (!postgresUrl) throw new TetherError('CONFIG_INVALID', 'the PostgreSQL store needs --postgres-url (or TETHER_POSTGRES_URL).');
    return createStore({ kind: 'postgres', connectionString: postgresUrl, poolSize: 1, lockPoolSize: 1 });
  }
  if (o.postgresUrl !== undefined) throw new TetherError('CONFIG_INVALID', '--postgres-url is for the PostgreSQL store.');
  const path = resolve(sqlitePath ?? join(o.dataDir ?? env['TETHER_DATA_DIR'] ?? '.tether', 'tether.db'));
  // Never create an empty database while looking for an existing one (a mistyped path would "verify" fine).
  if (!existsSync(path)) throw new TetherError('CONFIG_INVALID', `no SQLite database at ${path}`);
  return createStore({ kind: 'sqlite', path });
}

const describeProblem = (p: AuditProblem): string =>
  `  seq ${p.seq}: ${p.kind}${p.kind === 'deleted' && p.count !== undefined ? ` (${p.count} record${p.count === 1 ? '' : 's'} missing)` : ''}`;

/** The flags that choose the store, shared by the subcommands. */
function storeOptions(command: Command): Command {
  return command
    .addOption(new Option('--store <kind>', 'store kind (default: TETHER_STORE, else postgres when a URL is set, else sqlite)').choices(['sqlite', 'postgres']))
    .option('--data-dir <dir>', 'data directory holding tether.db (default: TETHER_DATA_DIR or ./.tether)')
    .option('--sqlite-path <file>', 'SQLite database file (default: <data dir>/tether.db, or TETHER_SQLITE_PATH)')
    .option('--postgres-url <url>', 'PostgreSQL connection string (default: TETHER_POSTGRES_URL)');
}

function intArg(name: string, min: number, max: number) {
  return (value: string): number => {
    const n = Number(value);
    if (!/^\d+$/.test(value) || n < min || n > max) throw new InvalidArgumentError(`${name} must be an integer from ${min} to ${max}.`);
    return n;
  };
}

/** Registers `tether audit` and its subcommands on the program. */
export function registerAuditCommands(program: Command): void {
  const audit = program.command('audit').description('The hash-chained audit log (see docs/audit.md).');
  storeOptions(audit.command('verify'))
    .description('Check the audit log for modified, deleted or reordered records. Exit 0 intact, 1 tampered, 2 could not verify.')
    .option('--anchor <seq:hash>', 'a head exported earlier that must still match (repeatable)', parseAnchor, [])
    .option('--json', 'print the result as JSON')
    .option('--url <url>', 'verify through the API of a running service (default when the SQLite store is held by one: TETHER_URL or http://127.0.0.1:8080)')
    .option('--key <key>', 'API key for --url (default TETHER_API_KEY or <data dir>/admin-api-key)')
    .action(async (o: VerifyOptions) => {
      let result: Verdict;
      try {
        if (o.url !== undefined) {
          result = await verifyThroughApi(o);
        } else {
          try {
            result = await verifyFromStore(o);
          } catch (err) {
            if (!storeBusy(err)) throw err;
            process.stderr.write('tether: the store is held by a running service; verifying through its API.\n');
            result = await verifyThroughApi(o);
          }
        }
      } catch (err) {
        // Not a verdict on the chain: the store or the API could not be read. Never exit 1 for this (1 means tampered).
        const code = isTetherError(err) ? err.code : ((err as { code?: string }).code ?? 'INTERNAL');
        process.stderr.write(`tether: could not verify the audit log (${code}): ${err instanceof Error ? err.message : String(err)}\n`);
        process.exitCode = EXIT.CannotVerify;
        return;
      }
      if (o.json) {
        process.stdout.write(`${JSON.stringify({ ok: result.ok, checked: result.checked, head: result.last ?? null, problemCount: result.problemCount, problems: result.problems }, null, 2)}\n`);
      } else if (result.ok) {
        const head = result.last ? `head ${result.last.seq}:${result.last.hash}` : 'empty';
        process.stdout.write(`Audit log intact: ${result.checked} record${result.checked === 1 ? '' : 's'} checked, ${head}.\n`);
      } else {
        const lines = [`Audit log TAMPERED: ${result.problemCount} problem${result.problemCount === 1 ? '' : 's'} in ${result.checked} records.`, ...result.problems.map(describeProblem)];
        if (result.problemCount > result.problems.length) lines.push(`  ... and ${result.problemCount - result.problems.length} more`);
        process.stdout.write(`${lines.join('\n')}\n`);
      }
      process.exitCode = result.ok ? EXIT.Intact : EXIT.Tampered;
    });

  storeOptions(audit.command('export'))
    .description('Print audit records as FHIR R4 AuditEvent resources, one JSON per line (NDJSON), in seq order.')
    .addOption(new Option('--after <seq>', 'only records after this seq').default(0).argParser(intArg('--after', 0, Number.MAX_SAFE_INTEGER)))
    .addOption(new Option('--limit <n>', 'at most this many records (default: all)').argParser(intArg('--limit', 1, Number.MAX_SAFE_INTEGER)))
    .option('--tenant <id>', "only this tenant's records")
    .action(async (o: ExportOptions) => {
      const store = openStore(o, process.env);
      try {
        await store.migrate();
        const log = new AuditLog({ store });
        let afterSeq = o.after;
        let left = o.limit ?? Number.POSITIVE_INFINITY;
        while (left > 0) {
          const page = await log.query({ afterSeq, limit: Math.min(1_000, left), ...(o.tenant === undefined ? {} : { tenantId: o.tenant }) });
          for (const record of page) process.stdout.write(`${JSON.stringify(log.toAuditEvent(record))}\n`);
          const last = page[page.length - 1];
          if (!last || page.length < Math.min(1_000, left)) break;
          afterSeq = last.seq;
          left -= page.length;
        }
      } finally {
        await store.close();
      }
    });
}
