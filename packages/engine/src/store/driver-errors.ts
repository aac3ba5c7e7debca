/**
 * Translation of driver errors into TetherErrors.
 *
 * Two rules: a failure to reach or use the database in time is `STORE_UNAVAILABLE` (transient: retry later), any
 * other unexpected driver error is `INTERNAL`; and nothing a row held may leak through a message or a `cause`.
 * PostgreSQL puts row values in `detail` ("Key (id)=(...) already exists", "Failing row contains (...)") and
 * sometimes in the message (`invalid input syntax for type bigint: "..."`), so its errors are replaced by a
 * sanitised copy that keeps only SQLSTATE and schema identifiers. SQLite messages name constraints and columns,
 * never values, and are kept.
 */
import { TetherError, type ErrorCode } from '@tether/core';

/** SQLSTATE → our code, for the constraint violations a caller can cause (unique, foreign key, check). */
export type ConstraintCodes = Partial<Record<'unique' | 'foreignKey' | 'check', ErrorCode>>;

const SQLSTATE = /^[0-9A-Z]{5}$/;

/**
 * SQLSTATE classes and codes meaning "the database is unreachable, overloaded, shutting down, or the statement
 * ran out of time": 08 connection exception, 53 insufficient resources, 57 operator intervention (includes
 * 57014 statement timeout and 57P01 admin shutdown), 58 system error, 40 transaction rollback (serialization
 * failure, deadlock), 55P03 lock timeout, 3D000 unknown database, 28 invalid authorization.
 */
function isUnavailableSqlState(code: string): boolean {
  return ['08', '53', '57', '58', '40', '28'].includes(code.slice(0, 2)) || code === '55P03' || code === '3D000';
}

/** A copy of a pg `DatabaseError` with identifiers only: no message text, detail, hint or where. */
function sanitizedPgError(err: Record<string, unknown>): Error {
  const pick = (key: string) => (typeof err[key] === 'string' ? (err[key] as string) : undefined);
  const facts = {
    code: pick('code'),
    severity: pick('severity'),
    constraint: pick('constraint'),
    table: pick('table'),
    column: pick('column'),
    routine: pick('routine'),
    position: pick('position'),
  };
  const named = [facts.table && `table ${facts.table}`, facts.constraint && `constraint ${facts.constraint}`].filter(Boolean).join(', ');
  const copy = new Error(`PostgreSQL error ${facts.code ?? 'unknown'}${named ? ` (${named})` : ''}`);
  copy.name = 'PostgresError';
  for (const [key, value] of Object.entries(facts)) if (value !== undefined) Object.assign(copy, { [key]: value });
  return copy;
}

/** A copy of a network or client error: message and system error code only (a URL parse error carries the input). */
function sanitizedClientError(err: unknown): Error {
  if (!(err instanceof Error)) return new Error('Non-error thrown by the PostgreSQL driver');
  const code = (err as { code?: unknown }).code;
  const copy = new Error(code === 'ERR_INVALID_URL' ? 'Invalid connection string' : err.message);
  copy.name = err.name;
  if (typeof code === 'string') Object.assign(copy, { code });
  return copy;
}

/**
 * Maps an error thrown by `pg` to a TetherError.
 *
 * @param err - What the driver threw.
 * @param action - What was being done, for the message (e.g. `create tenant`); never data.
 * @param constraints - Codes for constraint violations the caller expects (e.g. unique → TENANT_EXISTS).
 */
export function fromPgError(err: unknown, action: string, constraints: ConstraintCodes = {}): TetherError {
  if (err instanceof TetherError) return err;
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && SQLSTATE.test(code)) {
    const cause = sanitizedPgError(err as Record<string, unknown>);
    const constraint =
      code === '23505' ? constraints.unique : code === '23503' ? constraints.foreignKey : code === '23514' ? constraints.check : undefined;
    if (constraint) return new TetherError(constraint, undefined, { cause });
    if (isUnavailableSqlState(code)) {
      return new TetherError('STORE_UNAVAILABLE', `PostgreSQL store unavailable during ${action} (SQLSTATE ${code}).`, { cause });
    }
    return new TetherError('INTERNAL', `PostgreSQL store failed during ${action} (SQLSTATE ${code}).`, { cause });
  }
  // No SQLSTATE: the driver could not talk to the server at all (refused, reset, DNS, TLS, pool wait timeout,
  // "Connection terminated").
  return new TetherError('STORE_UNAVAILABLE', `PostgreSQL store unreachable during ${action}.`, { cause: sanitizedClientError(err) });
}

/** Primary result codes of SQLite meaning "busy, locked, out of space, or the file cannot be used right now". */
const SQLITE_UNAVAILABLE = ['SQLITE_BUSY', 'SQLITE_LOCKED', 'SQLITE_IOERR', 'SQLITE_CANTOPEN', 'SQLITE_FULL', 'SQLITE_READONLY', 'SQLITE_PROTOCOL', 'SQLITE_NOMEM', 'SQLITE_PERM'];

/**
 * Maps an error thrown by better-sqlite3 to a TetherError (same contract as {@link fromPgError}). Extended
 * result codes such as `SQLITE_BUSY_SNAPSHOT` or `SQLITE_CONSTRAINT_PRIMARYKEY` are matched on their prefix.
 */
export function fromSqliteError(err: unknown, action: string, constraints: ConstraintCodes = {}): TetherError {
  if (err instanceof TetherError) return err;
  const code = String((err as { code?: unknown } | null)?.code ?? '');
  const constraint =
    code === 'SQLITE_CONSTRAINT_PRIMARYKEY' || code === 'SQLITE_CONSTRAINT_UNIQUE'
      ? constraints.unique
      : code === 'SQLITE_CONSTRAINT_FOREIGNKEY'
        ? constraints.foreignKey
        : code === 'SQLITE_CONSTRAINT_CHECK'
          ? constraints.check
          : undefined;
  if (constraint) return new TetherError(constraint, undefined, { cause: err });
  if (SQLITE_UNAVAILABLE.some((prefix) => code === prefix || code.startsWith(`${prefix}_`))) {
    return new TetherError('STORE_UNAVAILABLE', `SQLite store unavailable during ${action} (${code}).`, { cause: err });
  }
  return new TetherError('INTERNAL', `SQLite store failed during ${action}${code ? ` (${code})` : ''}.`, { cause: err });
}
