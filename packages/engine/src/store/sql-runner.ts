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
  /**
   * Runs `program` in one transaction: all of its statements commit together or not at all. SQLite: an IMMEDIATE
   * transaction (the write lock is taken first, so the reads inside see what the writes will build on); PostgreSQL:
   * `BEGIN` ... `COMMIT` on one pooled connection, rolled back on any error.
   *
   * The program is a generator that yields its statements (`yield* tx.all(...)`) instead of awaiting them. That
   * is what makes it safe on SQLite, whose driver is synchronous and shares one connection with the whole process:
   * the program cannot await anything else, so the transaction runs to its end without yielding the event loop,
   * and no other caller's statement can land inside it. Keep programs to SQL plus pure computation.
   */
  transaction<T>(action: string, program: (tx: SqlTx) => SqlProgram<T>): Promise<T>;
}

/** One statement of a {@link SqlProgram}. */
export interface SqlStep {
  readonly kind: 'all' | 'run';
  readonly sql: string;
  readonly params: readonly unknown[];
}

/** A transaction body: yields statements, receives their results, returns `T`. */
export type SqlProgram<T> = Generator<SqlStep, T, unknown>;

/** What a program uses to issue statements: `const rows = yield* tx.all<Row>('SELECT ...', [x])`. */
export interface SqlTx {
  all<R>(sql: string, params?: readonly unknown[]): Generator<SqlStep, R[], unknown>;
  run(sql: string, params?: readonly unknown[]): Generator<SqlStep, number, unknown>;
}

export const sqlTx: SqlTx = {
  *all<R>(sql: string, params: readonly unknown[] = []) {
    return (yield { kind: 'all', sql, params }) as R[];
  },
  *run(sql: string, params: readonly unknown[] = []) {
    return (yield { kind: 'run', sql, params }) as number;
  },
};

/** Runs a program against a synchronous executor (SQLite); call it inside the driver's transaction. */
export function driveSync<T>(program: SqlProgram<T>, exec: (step: SqlStep) => unknown): T {
  let next = program.next();
  while (!next.done) next = program.next(exec(next.value));
  return next.value;
}

/** Runs a program against an asynchronous executor (PostgreSQL); call it inside BEGIN ... COMMIT. */
export async function driveAsync<T>(program: SqlProgram<T>, exec: (step: SqlStep) => Promise<unknown>): Promise<T> {
  let next = program.next();
  while (!next.done) next = program.next(await exec(next.value));
  return next.value;
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
