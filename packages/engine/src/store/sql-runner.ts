/**
 * A minimal, dialect-neutral way to run SQL, for repos that need no dialect-specific tricks (API keys, audit):
 * SQL is written once with `?` placeholders; the PostgreSQL runner numbers them (`$1`, `$2`, ...). Errors are
 * translated by the owning store exactly as for its own queries.
 */
export interface SqlRunner {
  readonly dialect: 'sqlite' | 'postgres';
  /** Rows of a SELECT (or of a statement with RETURNING). */
  all<R>(action: string, sql: string, params?: readonly unknown[]): Promise<R[]>;
  /** Runs a statement; returns the number of rows it changed. */
  run(action: string, sql: string, params?: readonly unknown[]): Promise<number>;
}

/** `?` → `$n`, outside quoted literals (our SQL never has a `?` in a literal, but be exact anyway). */
export function numberPlaceholders(sql: string): string {
  let n = 0;
  let quoted = false;
  let out = '';
  for (const ch of sql) {
    if (ch === "'") quoted = !quoted;
    out += ch === '?' && !quoted ? `$${++n}` : ch;
  }
  return out;
}
