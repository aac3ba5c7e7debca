/**
 * The audit log (migration 4) on either store through a {@link SqlRunner}: append-only, hash-chained records
 * (`@tether/core` audit-chain) plus the cursor of the command_events tailer. See docs/audit.md.
 *
 * Every append is one transaction that first takes the head row (PostgreSQL: `SELECT ... FOR UPDATE`, so appends
 * from any number of processes queue on it; SQLite: the IMMEDIATE transaction's write lock), chains the new
 * records onto it, inserts them and moves the head. The chain therefore never forks, and the head always names the
 * last record, which is how `verify` notices that the newest records were deleted.
 */
import { z } from 'zod';
import { assertAuditJson, chainAuditEntries, stableStringify, TetherError, type AuditEntry, type AuditHead, type AuditRecord } from '@tether/core';
import { eventFromRow, type EventRow } from './command-rows.js';
import type { SqlRunner, SqlStep, SqlTx } from './sql-runner.js';
import type { AuditCommandEvent, AuditFilter, AuditRepo, CommandAction } from './types.js';

/** Largest `details` (its canonical JSON, in characters): an audit record states facts, it is not a payload store. */
export const MAX_AUDIT_DETAILS_CHARS = 16_384;
/** Default and largest number of command events one {@link AuditRepo.copyCommandEvents} call copies. */
export const DEFAULT_AUDIT_COPY_LIMIT = 200;
export const MAX_AUDIT_COPY_LIMIT = 1_000;
/** Default and largest page of {@link AuditRepo.list}. */
export const DEFAULT_AUDIT_LIST_LIMIT = 100;
export const MAX_AUDIT_LIST_LIMIT = 1_000;
/** Rows per INSERT statement. */
const INSERT_CHUNK = 100;

interface AuditRow {
  seq: number | string;
  at: number | string;
  actor: string;
  action: string;
  tenant_id: string | null;
  subject_type: string | null;
  subject_id: string | null;
  outcome: string;
  details: string;
  prev_hash: string;
  hash: string;
}

interface HeadRow {
  last_seq: number | string;
  last_hash: string;
  events_seq: number | string;
  /** PostgreSQL only: the xid8 of the cursor, as text. */
  events_tx?: string;
}

/** A command event row (command-rows.ts) with the facts of its command the audit record carries. */
interface EventFactsRow extends EventRow {
  tx?: string;
  tenant_id: string;
  resource_type: string;
  command_action: string;
  context: string;
  requested_by: string;
  vendor: string | null;
  ehr_id: string | null;
  ehr_version: string | null;
}

const word = /^[a-z][a-z0-9_]*$/;
const entrySchema = z
  .object({
    at: z.number().int().min(0),
    actor: z.string().min(1).max(255),
    action: z
      .string()
      .max(100)
      .regex(/^[a-z][a-z0-9_]*(?:[.:-][a-z0-9_]+)*$/),
    tenantId: z.string().min(1).max(255).nullable(),
    subjectType: z.string().max(50).regex(word).nullable(),
    subjectId: z.string().min(1).max(255).nullable(),
    outcome: z.string().max(50).regex(word),
    details: z.record(z.string(), z.unknown()),
  })
  .strict();

/** Checks an entry (CONFIG_INVALID naming the field, never the value) and returns a plain copy of it. */
export function validateAuditEntry(input: AuditEntry): AuditEntry {
  const parsed = entrySchema.safeParse(input);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new TetherError('CONFIG_INVALID', `Invalid audit entry: ${issue ? `${issue.path.join('.') || 'entry'}: ${issue.message}` : 'invalid'}.`);
  }
  try {
    assertAuditJson(parsed.data.details);
  } catch (err) {
    throw new TetherError('CONFIG_INVALID', `Invalid audit entry: ${(err as Error).message}`);
  }
  if (stableStringify(parsed.data.details).length > MAX_AUDIT_DETAILS_CHARS) {
    throw new TetherError('CONFIG_INVALID', `Invalid audit entry: details is longer than ${MAX_AUDIT_DETAILS_CHARS} characters.`);
  }
  return parsed.data as AuditEntry;
}

function recordFromRow(row: AuditRow): AuditRecord {
  return {
    seq: Number(row.seq),
    at: Number(row.at),
    actor: row.actor,
    action: row.action,
    tenantId: row.tenant_id,
    subjectType: row.subject_type,
    subjectId: row.subject_id,
    outcome: row.outcome,
    details: JSON.parse(row.details) as AuditRecord['details'],
    prevHash: row.prev_hash,
    hash: row.hash,
  };
}

function eventFromFacts(row: EventFactsRow): AuditCommandEvent {
  return {
    ...eventFromRow(row),
    tenantId: row.tenant_id,
    resourceType: row.resource_type,
    commandAction: row.command_action as CommandAction,
    context: row.context,
    requestedBy: row.requested_by,
    vendor: row.vendor,
    ehrId: row.ehr_id,
    ehrVersion: row.ehr_version,
  };
}

const EVENT_FACTS = `
  e.seq, e.command_id, e.at, e.kind, e.actor, e.from_state, e.to_state, e.reason,
  c.tenant_id, c.resource_type, c.action AS command_action, c.context, c.requested_by, c.ehr_id, c.ehr_version,
  t.vendor
FROM command_events AS e
JOIN commands AS c ON c.id = e.command_id
LEFT JOIN tenants AS t ON t.id = c.tenant_id`;

/**
 * Events after the cursor. SQLite: one writer at a time, so seqs become visible in order and the seq is the cursor.
 * PostgreSQL: seqs are taken at insert but become visible at commit, in any order; only events of transactions
 * older than every running one (`pg_snapshot_xmin`) are final, and they are read in (tx, seq) order.
 */
const TAIL_SQLITE = `SELECT ${EVENT_FACTS}
WHERE e.seq > ?
ORDER BY e.seq
LIMIT ?`;

const TAIL_POSTGRES = `SELECT e.tx::text AS tx, ${EVENT_FACTS}
WHERE (e.tx, e.seq) > (?::xid8, ?) AND e.tx < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY e.tx, e.seq
LIMIT ?`;

const INSERT_COLUMNS = '(seq, at, actor, action, tenant_id, subject_type, subject_id, outcome, details, prev_hash, hash)';

function limitOf(value: number | undefined, fallback: number, max: number, name: string): number {
  const n = value ?? fallback;
  if (!Number.isInteger(n) || n < 1 || n > max) throw new TetherError('CONFIG_INVALID', `${name} must be an integer from 1 to ${max}.`);
  return n;
}

export function auditRepo(db: SqlRunner): AuditRepo {
  const postgres = db.dialect === 'postgres';

  /** Reads and (PostgreSQL) locks the head row; a missing row means the log was tampered with. */
  function* lockHead(tx: SqlTx): Generator<SqlStep, HeadRow, unknown> {
    const [head] = yield* tx.all<HeadRow>(
      `SELECT last_seq, last_hash, events_seq${postgres ? ', events_tx::text AS events_tx' : ''} FROM audit_head WHERE id = 1${postgres ? ' FOR UPDATE' : ''}`,
    );
    if (!head) throw new TetherError('AUDIT_LOG_DAMAGED', 'The audit head row is missing; nothing was appended. Run `tether audit verify`.');
    return head;
  }

  function* insert(tx: SqlTx, records: readonly AuditRecord[]): Generator<SqlStep, void, unknown> {
    for (let i = 0; i < records.length; i += INSERT_CHUNK) {
      const chunk = records.slice(i, i + INSERT_CHUNK);
      const params = chunk.flatMap((r) => [r.seq, r.at, r.actor, r.action, r.tenantId, r.subjectType, r.subjectId, r.outcome, stableStringify(r.details), r.prevHash, r.hash]);
      yield* tx.run(`INSERT INTO audit_log ${INSERT_COLUMNS} VALUES ${chunk.map(() => '(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)').join(', ')}`, params);
    }
  }

  const headOf = (row: HeadRow): AuditHead => ({ seq: Number(row.last_seq), hash: row.last_hash });

  return {
    async append(entries) {
      const valid = entries.map(validateAuditEntry);
      if (valid.length === 0) return [];
      return db.transaction('append audit records', function* (tx) {
        const head = yield* lockHead(tx);
        const records = chainAuditEntries(headOf(head), valid);
        yield* insert(tx, records);
        const last = records[records.length - 1] as AuditRecord;
        yield* tx.run('UPDATE audit_head SET last_seq = ?, last_hash = ? WHERE id = 1', [last.seq, last.hash]);
        return records;
      });
    },

    async copyCommandEvents(toEntry, limit) {
      const n = limitOf(limit, DEFAULT_AUDIT_COPY_LIMIT, MAX_AUDIT_COPY_LIMIT, 'limit');
      return db.transaction('copy command events to the audit log', function* (tx) {
        const head = yield* lockHead(tx);
        const rows = postgres
          ? yield* tx.all<EventFactsRow>(TAIL_POSTGRES, [head.events_tx ?? '0', Number(head.events_seq), n])
          : yield* tx.all<EventFactsRow>(TAIL_SQLITE, [Number(head.events_seq), n]);
        if (rows.length === 0) return [];
        // A malformed entry here would stop the tailer on this event forever: toEntry must produce valid ones.
        const records = chainAuditEntries(headOf(head), rows.map((row) => validateAuditEntry(toEntry(eventFromFacts(row)))));
        yield* insert(tx, records);
        const last = records[records.length - 1] as AuditRecord;
        const cursor = rows[rows.length - 1] as EventFactsRow;
        if (postgres) {
          yield* tx.run('UPDATE audit_head SET last_seq = ?, last_hash = ?, events_tx = ?::xid8, events_seq = ? WHERE id = 1', [
            last.seq,
            last.hash,
            cursor.tx ?? '0',
            Number(cursor.seq),
          ]);
        } else {
          yield* tx.run('UPDATE audit_head SET last_seq = ?, last_hash = ?, events_seq = ? WHERE id = 1', [last.seq, last.hash, Number(cursor.seq)]);
        }
        return records;
      });
    },

    async list(filter: AuditFilter = {}) {
      const where: string[] = [];
      const params: unknown[] = [];
      const add = (clause: string, ...values: unknown[]) => {
        where.push(clause);
        params.push(...values);
      };
      if (filter.afterSeq !== undefined) add('seq > ?', filter.afterSeq);
      if (filter.tenantId !== undefined) add('tenant_id = ?', filter.tenantId);
      if (filter.actor !== undefined) add('actor = ?', filter.actor);
      if (filter.action !== undefined) {
        // A trailing dot asks for a family (`command.`); compared with substr, so no LIKE wildcard can sneak in.
        if (filter.action.endsWith('.')) add('substr(action, 1, ?) = ?', filter.action.length, filter.action);
        else add('action = ?', filter.action);
      }
      if (filter.subjectType !== undefined) add('subject_type = ?', filter.subjectType);
      if (filter.subjectId !== undefined) add('subject_id = ?', filter.subjectId);
      if (filter.from !== undefined) add('at >= ?', filter.from);
      if (filter.to !== undefined) add('at < ?', filter.to);
      for (const v of params) {
        if (typeof v === 'number' && !Number.isSafeInteger(v)) throw new TetherError('CONFIG_INVALID', 'Audit filter numbers must be integers.');
      }
      params.push(limitOf(filter.limit, DEFAULT_AUDIT_LIST_LIMIT, MAX_AUDIT_LIST_LIMIT, 'limit'));
      const sql = `SELECT * FROM audit_log${where.length > 0 ? ` WHERE ${where.join(' AND ')}` : ''} ORDER BY seq LIMIT ?`;
      return (await db.all<AuditRow>('list audit records', sql, params)).map(recordFromRow);
    },

    async head() {
      const [row] = await db.all<HeadRow>('read audit head', 'SELECT last_seq, last_hash, events_seq FROM audit_head WHERE id = 1');
      return row && headOf(row);
    },
  };
}
