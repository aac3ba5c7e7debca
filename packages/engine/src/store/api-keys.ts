/**
 * API keys of the HTTP API (migration 3), on either store through a {@link SqlRunner}. Only the SHA-256 of a
 * key's secret is stored; the secret itself is shown once, when the key is created (by the API layer).
 */
import { z } from 'zod';
import { TetherError } from '@tether/core';
import type { SqlRunner } from './sql-runner.js';
import type { ApiKeyRecord, ApiKeyRepo, NewApiKey } from './types.js';

interface ApiKeyRow {
  id: string;
  name: string;
  prefix: string;
  key_hash: string;
  role: string;
  tenants: string | null;
  created_at: number | string;
  created_by: string;
  revoked_at: number | string | null;
  last_used_at: number | string | null;
}

const ROLES = ['submitter', 'operator', 'viewer', 'admin'] as const;

const newApiKeySchema = z
  .object({
    id: z.string().min(1).max(64),
    name: z.string().min(1).max(200),
    prefix: z.string().min(1).max(32),
    keyHash: z.string().regex(/^[0-9a-f]{64}$/),
    role: z.enum(ROLES),
    tenants: z.array(z.string().min(1).max(255)).max(1_000).nullable(),
    createdBy: z.string().min(1).max(255),
  })
  .strict();

const num = (v: number | string | null): number | null => (v === null ? null : Number(v));

function fromRow(row: ApiKeyRow): ApiKeyRecord {
  return {
    id: row.id,
    name: row.name,
    prefix: row.prefix,
    keyHash: row.key_hash,
    role: row.role as ApiKeyRecord['role'],
    tenants: row.tenants === null ? null : (JSON.parse(row.tenants) as string[]),
    createdAt: Number(row.created_at),
    createdBy: row.created_by,
    revokedAt: num(row.revoked_at),
    lastUsedAt: num(row.last_used_at),
  };
}

export function apiKeyRepo(db: SqlRunner, clock: () => number): ApiKeyRepo {
  return {
    async create(input: NewApiKey): Promise<ApiKeyRecord> {
      const parsed = newApiKeySchema.safeParse(input);
      if (!parsed.success) {
        const issue = parsed.error.issues[0];
        throw new TetherError('CONFIG_INVALID', `Invalid API key: ${issue ? `${issue.path.join('.')}: ${issue.message}` : 'invalid'}.`);
      }
      const k = parsed.data;
      const rows = await db.all<ApiKeyRow>(
        'create api key',
        'INSERT INTO api_keys (id, name, prefix, key_hash, role, tenants, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING *',
        [k.id, k.name, k.prefix, k.keyHash, k.role, k.tenants === null ? null : JSON.stringify(k.tenants), clock(), k.createdBy],
      );
      return fromRow(rows[0] as ApiKeyRow);
    },
    async get(id) {
      const rows = await db.all<ApiKeyRow>('get api key', 'SELECT * FROM api_keys WHERE id = ?', [id]);
      return rows[0] ? fromRow(rows[0]) : undefined;
    },
    async findByHash(keyHash) {
      const rows = await db.all<ApiKeyRow>('find api key', 'SELECT * FROM api_keys WHERE key_hash = ?', [keyHash]);
      return rows[0] ? fromRow(rows[0]) : undefined;
    },
    async list() {
      return (await db.all<ApiKeyRow>('list api keys', 'SELECT * FROM api_keys ORDER BY created_at, id')).map(fromRow);
    },
    async revoke(id) {
      return (await db.run('revoke api key', 'UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL', [clock(), id])) === 1;
    },
    async touch(id, at) {
      await db.run('touch api key', 'UPDATE api_keys SET last_used_at = ? WHERE id = ?', [at, id]);
    },
  };
}
