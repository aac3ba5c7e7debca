/**
 * Read-only aggregates over the commands tables for metrics and the console (queue depth and age, verified per
 * minute, attempt outcomes by error category). Dialect-neutral SQL through a {@link SqlRunner}; the queries use the
 * `commands_tenant_state` index for the per-state counts. The time-windowed ones scan recent rows only through
 * their `WHERE ... >= ?` bound, which is fine for the embedded store and dashboards refreshing every few seconds.
 */
import type { SqlRunner } from './sql-runner.js';
import type { CommandState, CommandStatsRepo, QueueStat, AttemptCategoryStat, VerifiedPerMinute } from './types.js';

export function commandStatsRepo(db: SqlRunner): CommandStatsRepo {
  return {
    async queue(): Promise<QueueStat[]> {
      const rows = await db.all<{ tenant_id: string; state: string; n: number | string; oldest: number | string | null }>(
        'queue stats',
        'SELECT tenant_id, state, COUNT(*) AS n, MIN(created_at) AS oldest FROM commands GROUP BY tenant_id, state ORDER BY tenant_id, state',
      );
      return rows.map((r) => ({ tenantId: r.tenant_id, state: r.state as CommandState, count: Number(r.n), oldestCreatedAt: r.oldest === null ? null : Number(r.oldest) }));
    },
    async verifiedPerMinute(since: number): Promise<VerifiedPerMinute[]> {
      const rows = await db.all<{ tenant_id: string; minute: number | string; n: number | string }>(
        'verified per minute',
        "SELECT tenant_id, (updated_at / 60000) AS minute, COUNT(*) AS n FROM commands WHERE state = 'verified' AND updated_at >= ? GROUP BY tenant_id, (updated_at / 60000) ORDER BY minute",
        [since],
      );
      return rows.map((r) => ({ tenantId: r.tenant_id, minuteStart: Math.floor(Number(r.minute)) * 60_000, count: Number(r.n) }));
    },
    async attemptCategories(since: number): Promise<AttemptCategoryStat[]> {
      const rows = await db.all<{ tenant_id: string; outcome: string; error_category: string | null; n: number | string }>(
        'attempt categories',
        'SELECT c.tenant_id, a.outcome, a.error_category, COUNT(*) AS n FROM command_attempts a JOIN commands c ON c.id = a.command_id WHERE a.started_at >= ? GROUP BY c.tenant_id, a.outcome, a.error_category ORDER BY c.tenant_id',
        [since],
      );
      return rows.map((r) => ({ tenantId: r.tenant_id, outcome: r.outcome, errorCategory: r.error_category, count: Number(r.n) }));
    },
  };
}
