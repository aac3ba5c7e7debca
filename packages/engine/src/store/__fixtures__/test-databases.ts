/**
 * Throwaway databases for the store tests. PostgreSQL tests use the real server (never a mock): each call makes a
 * fresh `tether_test_<random>` database through the admin database, and `dropAll()` removes them with FORCE.
 *
 * The admin URL defaults to the local development server (trust auth); set TETHER_TEST_PG_URL to use another.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';

export const ADMIN_URL = process.env.TETHER_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

/** Creates, and later drops, PostgreSQL databases for one test file. */
export class PgTestDatabases {
  readonly #created: string[] = [];

  /** A new empty database; returns its connection string. */
  async create(): Promise<string> {
    const name = `tether_test_${randomBytes(6).toString('hex')}`;
    await this.#admin(`CREATE DATABASE ${name} TEMPLATE template0`);
    this.#created.push(name);
    const url = new URL(ADMIN_URL);
    url.pathname = `/${name}`;
    return url.toString();
  }

  async dropAll(): Promise<void> {
    for (const name of this.#created.splice(0)) await this.#admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  }

  async #admin(sql: string): Promise<void> {
    const client = new pg.Client({ connectionString: ADMIN_URL });
    await client.connect();
    try {
      await client.query(sql);
    } finally {
      await client.end();
    }
  }
}

/** A temporary directory for SQLite files, removed by `remove()`. */
export class SqliteTestFiles {
  readonly #dir = mkdtempSync(join(tmpdir(), 'tether-store-'));
  #n = 0;

  /** A path for a new database file (not created). */
  path(): string {
    return join(this.#dir, `store-${++this.#n}.db`);
  }

  remove(): void {
    rmSync(this.#dir, { recursive: true, force: true });
  }
}

/** Runs a query on a database directly, bypassing the store (to inspect or tamper with it in tests). */
export async function pgQuery<R extends pg.QueryResultRow = pg.QueryResultRow>(url: string, sql: string, params: unknown[] = []): Promise<R[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<R>(sql, params)).rows;
  } finally {
    await client.end();
  }
}
