/**
 * The checker's only error: its input could not be trusted (an unreadable file, a malformed NDJSON line, a record
 * of the wrong shape, a ledger that contradicts itself). The CLI maps it to exit code 2, so that "the engine
 * violated a promise" (exit 1) is never confused with "the audit could not be run".
 *
 * The checker deliberately has its own error class instead of Tether's `TetherError`: it imports nothing from the
 * code it audits.
 */
export class CheckerInputError extends Error {
  /** Stable code, for callers that match on codes rather than classes. */
  readonly code = 'CHECKER_INPUT_INVALID';
  /** The file (or input name such as `ledger[3]`) the problem is in, if known. */
  readonly file: string | undefined;
  /** 1-based line number inside {@link CheckerInputError.file}, if known. */
  readonly line: number | undefined;

  constructor(message: string, where: { file?: string; line?: number; cause?: unknown } = {}) {
    super(message, where.cause === undefined ? undefined : { cause: where.cause });
    this.name = 'CheckerInputError';
    this.file = where.file;
    this.line = where.line;
  }
}

/** True for a {@link CheckerInputError}, also across two loaded copies of this package (matches on `code`). */
export function isCheckerInputError(e: unknown): e is CheckerInputError {
  return e instanceof Error && (e as { code?: unknown }).code === 'CHECKER_INPUT_INVALID';
}
