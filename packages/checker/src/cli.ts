import { readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { check, isViolation } from './check.js';
import { CheckerInputError, isCheckerInputError } from './errors.js';
import { readNdjson, readText } from './ndjson.js';
import type { CheckReport, LedgerEntry, LogText } from './types.js';
import { splitBusinessKey, toClaim, toLedgerEntry, toReceipt, toResource, toWriteLogEntry } from './validate.js';

/** Exit codes of `tether-check`. */
export const EXIT = Object.freeze({
  /** No violation. */
  ok: 0,
  /** At least one violation (see {@link isViolation}). */
  violation: 1,
  /** Bad input or usage: the audit could not be run, so nothing is claimed either way. */
  badInput: 2,
});

export const USAGE = `Usage: tether-check --ledger FILE --write-log FILE --final FILE [options]

Audits one Tether run after the fact: compares the intent ledger with the EHR's write log and final state,
and scans logs for planted PHI canaries. Prints the report as JSON on stdout, a one-line summary on stderr.

Required:
  --ledger FILE                 intent ledger (NDJSON, written by the load generator before submitting)
  --write-log FILE              EHR write log (NDJSON, the sandbox's GET /_admin/write-log)
  --final FILE                  final read of the EHR (NDJSON, one current resource per line)

Options:
  --claims FILE                 engine claims (NDJSON: commandId, state, reason?, ehrId?); the last line per
                                command wins. Without it, every command counts as ambiguous.
  --receipts FILE               commands the engine acknowledged receiving (NDJSON: commandId, e.g. the
                                HTTP 202s); a receipted command the claims do not know is lost, not dropped
  --logs PATH...                log files or directories (scanned recursively) to search for PHI canaries;
                                repeatable, and extra arguments after the options are log paths too
  --faults FILE                 fault stats JSON (the sandbox's /_admin/faults/stats), copied into "faults"
  --seed S                      the run's seed (default: the "seed" of --faults)
  --business-key-system URI     identifier system of business keys (default: the one system the ledger uses)
  --json OUT                    also write the report to OUT
  --allow-stale                 report stale keys without failing on them
  -h, --help                    show this help

Exit codes: 0 no violation, 1 violation (lost, duplicated, unexpected, corrupt, dropped, canary hits, or
stale without --allow-stale), 2 bad input (unreadable file, malformed line: the message names file:line).
`;

/** Where {@link main} writes; tests pass their own. */
export interface CliIo {
  readonly stdout: { write(text: string): unknown };
  readonly stderr: { write(text: string): unknown };
}

/**
 * Runs `tether-check` with the given arguments (without `node` and the script) and returns the exit code instead
 * of exiting, so that tests can drive it in process. Never throws: every failure becomes exit code 2 with a
 * message on stderr, because an audit that crashed must not look like one that found a violation (1).
 */
export async function main(argv: readonly string[], io: CliIo = { stdout: process.stdout, stderr: process.stderr }): Promise<number> {
  let values;
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args: [...argv],
      allowPositionals: true,
      strict: true,
      options: {
        ledger: { type: 'string' },
        'write-log': { type: 'string' },
        final: { type: 'string' },
        claims: { type: 'string' },
        receipts: { type: 'string' },
        logs: { type: 'string', multiple: true },
        faults: { type: 'string' },
        seed: { type: 'string' },
        'business-key-system': { type: 'string' },
        json: { type: 'string' },
        'allow-stale': { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (err) {
    io.stderr.write(`tether-check: ${err instanceof Error ? err.message : String(err)}\n\n${USAGE}`);
    return EXIT.badInput;
  }
  if (values.help) {
    io.stdout.write(USAGE);
    return EXIT.ok;
  }
  const missing = (['ledger', 'write-log', 'final'] as const).filter((k) => values[k] === undefined);
  if (missing.length > 0) {
    io.stderr.write(`tether-check: missing ${missing.map((m) => `--${m}`).join(', ')}\n\n${USAGE}`);
    return EXIT.badInput;
  }

  try {
    const [ledger, writeLog, finalRead, claims, receipts, faults, logs] = await Promise.all([
      readNdjson(values.ledger as string, toLedgerEntry),
      readNdjson(values['write-log'] as string, toWriteLogEntry),
      readNdjson(values.final as string, toResource),
      values.claims === undefined ? undefined : readNdjson(values.claims, toClaim),
      values.receipts === undefined ? undefined : readNdjson(values.receipts, toReceipt),
      values.faults === undefined ? undefined : readJson(values.faults),
      readLogs([...(values.logs ?? []), ...positionals]),
    ]);
    const businessKeySystem = values['business-key-system'] ?? inferBusinessKeySystem(ledger, values.ledger as string);
    const report = check({
      ledger,
      writeLog,
      finalRead,
      logs,
      businessKeySystem,
      ...(claims ? { claims } : {}),
      ...(receipts ? { receipts } : {}),
      ...(faults !== undefined ? { faults } : {}),
      ...(values.seed !== undefined ? { seed: parseSeed(values.seed) } : {}),
    });
    const json = `${JSON.stringify(report, null, 2)}\n`;
    if (values.json !== undefined) {
      try {
        await writeFile(values.json, json);
      } catch (err) {
        throw new CheckerInputError(`${values.json}: cannot write the report`, { file: values.json, cause: err });
      }
    }
    io.stdout.write(json);
    const violation = isViolation(report, { allowStale: values['allow-stale'] === true });
    io.stderr.write(`${summary(report)} → ${violation ? 'VIOLATION' : 'OK'}\n`);
    return violation ? EXIT.violation : EXIT.ok;
  } catch (err) {
    if (isCheckerInputError(err)) {
      io.stderr.write(`tether-check: bad input: ${err.message}\n`);
    } else {
      // A bug in the checker; still exit 2, and print only the message (never a payload).
      io.stderr.write(`tether-check: internal error: ${err instanceof Error ? err.message : String(err)}\n`);
    }
    return EXIT.badInput;
  }
}

/** `2000 commands, 12 ambiguous, 12 recovered: 0 lost, 0 duplicated, ...` (reliability.md's running total). */
export function summary(r: CheckReport): string {
  return (
    `tether-check: seed ${r.seed ?? '-'}: ${r.commands} commands, ${r.acknowledged} acknowledged, ${r.ambiguous} ambiguous, ` +
    `${r.recovered} recovered, ${r.quarantined} quarantined: ${r.lost} lost, ${r.duplicated} duplicated, ` +
    `${r.unexpected} unexpected, ${r.corrupt} corrupt, ${r.stale} stale, ${r.dropped} dropped, ${r.canaryHits} canary hits`
  );
}

async function readJson(path: string): Promise<unknown> {
  const text = await readText(path);
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new CheckerInputError(`${path}: not valid JSON`, { file: path, cause: err });
  }
}

/** Reads each log path; a directory contributes every regular file below it, in a stable order. */
async function readLogs(paths: readonly string[]): Promise<LogText[]> {
  const files: string[] = [];
  for (const path of paths) {
    let info;
    try {
      info = await stat(path);
    } catch (err) {
      throw new CheckerInputError(`${path}: cannot read the log`, { file: path, cause: err });
    }
    if (!info.isDirectory()) {
      files.push(path);
      continue;
    }
    const entries = await readdir(path, { recursive: true, withFileTypes: true });
    files.push(
      ...entries
        .filter((e) => e.isFile())
        .map((e) => join(e.parentPath, e.name))
        .sort(),
    );
  }
  return Promise.all(files.map(async (name) => ({ name, text: await readText(name) })));
}

/** The identifier system the ledger's business keys share; ambiguous or empty ledgers need the flag. */
function inferBusinessKeySystem(ledger: readonly LedgerEntry[], file: string): string {
  const systems = new Set(ledger.map((e) => splitBusinessKey(e.businessKey)?.system ?? ''));
  if (systems.size === 1) return [...systems][0] as string;
  throw new CheckerInputError(
    `${file}: ${systems.size === 0 ? 'the ledger is empty' : `the ledger uses ${systems.size} identifier systems`}; pass --business-key-system`,
    { file },
  );
}

/** Integer seeds stay numbers (as in the sandbox's stats); anything else is kept as text. */
function parseSeed(text: string): number | string {
  return /^-?\d+$/.test(text) && Number.isSafeInteger(Number(text)) ? Number(text) : text;
}
