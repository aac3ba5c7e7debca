import { readFile } from 'node:fs/promises';
import { CheckerInputError } from './errors.js';

/** Checks (and types) one parsed record; `where` is `file:line`. Throws {@link CheckerInputError}. */
export type RecordValidator<T> = (value: unknown, where: string) => T;

/**
 * Parses NDJSON text: one JSON value per line; blank lines (and a leading byte-order mark, and the `\r` of CRLF
 * line ends) are ignored.
 *
 * A malformed line is an error naming `file:line`, never skipped: a torn last line means the writer crashed, and an
 * audit that silently drops records can report zero violations for a run that had some.
 *
 * The error message never quotes the offending line: ledgers and final reads carry the planted PHI canaries, and
 * the checker's own output must not leak them.
 *
 * @param text - the file's contents
 * @param file - the name used in error messages
 * @param validate - turns each parsed value into a typed record (default: the value as is)
 */
export function parseNdjson(text: string, file: string): unknown[];
export function parseNdjson<T>(text: string, file: string, validate: RecordValidator<T>): T[];
export function parseNdjson(text: string, file: string, validate: RecordValidator<unknown> = (v) => v): unknown[] {
  const out: unknown[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    let line = lines[i] ?? '';
    if (i === 0 && line.charCodeAt(0) === 0xfeff) line = line.slice(1);
    if (line.trim() === '') continue;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (err) {
      throw new CheckerInputError(`${file}:${i + 1}: not valid JSON`, { file, line: i + 1, cause: err });
    }
    out.push(validate(value, `${file}:${i + 1}`));
  }
  return out;
}

/**
 * Reads a whole text file, turning any failure (missing, unreadable, a directory) into a
 * {@link CheckerInputError} that names the file.
 */
export async function readText(path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    throw new CheckerInputError(`${path}: cannot read the file${typeof code === 'string' ? ` (${code})` : ''}`, { file: path, cause: err });
  }
}

/**
 * Reads an NDJSON file (see {@link parseNdjson}). Errors are {@link CheckerInputError}s naming the file and, for a
 * bad record, the 1-based line.
 *
 * @example
 * ```ts
 * const ledger = await readNdjson('run/ledger.ndjson', toLedgerEntry);
 * ```
 */
export async function readNdjson(path: string): Promise<unknown[]>;
export async function readNdjson<T>(path: string, validate: RecordValidator<T>): Promise<T[]>;
export async function readNdjson(path: string, validate?: RecordValidator<unknown>): Promise<unknown[]> {
  const text = await readText(path);
  return validate ? parseNdjson(text, path, validate) : parseNdjson(text, path);
}
