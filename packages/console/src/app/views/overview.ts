/** Overview: tenants with health and queue, verified per minute (30 min), attempt outcomes (15 min). Polls. */
import { EXCEPTION_STATES, OPEN_STATES, type Stats } from '../api.js';
import { barChart, columnChart, type Bar } from '../charts.js';
import { fmtAge, h, mount } from '../dom.js';
import { breakerBadge, errorBox, freshness, link, outcomeTone, pageHeader, poll, tenantStateBadge, type View } from '../ui.js';

const REFRESH_MS = 5_000;
const MINUTE = 60_000;

export const overviewView: View = (root, ctx) => {
  const status = freshness();
  const error = h('div');
  const tenants = h('section', { 'aria-labelledby': 'tenants-title' }, h('h2', { id: 'tenants-title' }, 'Tenants'), h('p', { class: 'hint' }, 'Loading…'));
  const charts = h('div', { class: 'chart-grid' });
  mount(root, pageHeader('Overview', status.el), error, tenants, charts);

  poll(ctx.signal, REFRESH_MS, async () => {
    const stats = await ctx.api.stats(ctx.signal);
    mount(error);
    mount(tenants, h('h2', { id: 'tenants-title' }, 'Tenants'), tenantTable(stats));
    mount(charts, verifiedChart(stats), attemptsChart(stats), queueChart(stats));
    status.set(true);
  }, (err) => {
    status.set(false);
    mount(error, errorBox(err, 'Could not refresh.'));
  });
};

function tenantTable(stats: Stats): HTMLElement {
  if (stats.tenants.length === 0) return h('p', { class: 'hint' }, 'No tenants this key may see.');
  return h('div', { class: 'table-wrap' }, h('table', { class: 'data', 'data-table': 'tenants' },
    h('caption', { class: 'visually-hidden' }, 'Tenants with health and queue'),
    h('thead', null, h('tr', null,
      h('th', { scope: 'col' }, 'Tenant'),
      h('th', { scope: 'col' }, 'Vendor'),
      h('th', { scope: 'col' }, 'State'),
      h('th', { scope: 'col' }, 'Breaker'),
      h('th', { scope: 'col', class: 'num' }, 'Queue depth'),
      h('th', { scope: 'col', class: 'num' }, 'Oldest open'),
      h('th', { scope: 'col', class: 'num' }, 'Exceptions'),
      h('th', { scope: 'col', class: 'num' }, 'Verified (30 min)'),
    )),
    h('tbody', null, stats.tenants.map((t) => {
      const rows = stats.queue.filter((q) => q.tenantId === t.id);
      const open = rows.filter((q) => OPEN_STATES.includes(q.state));
      const depth = open.reduce((n, q) => n + q.count, 0);
      const oldest = open.map((q) => q.oldestCreatedAt).filter((v): v is number => v !== null);
      const age = oldest.length > 0 ? (stats.now - Math.min(...oldest)) / 1000 : null;
      const exceptions = rows.filter((q) => EXCEPTION_STATES.includes(q.state)).reduce((n, q) => n + q.count, 0);
      const verified = stats.verifiedPerMinute.filter((v) => v.tenantId === t.id).reduce((n, v) => n + v.count, 0);
      return h('tr', { 'data-tenant': t.id },
        h('th', { scope: 'row' }, link(`#/tenants/${encodeURIComponent(t.id)}`, t.id)),
        h('td', null, t.vendor),
        h('td', null, tenantStateBadge(t.state)),
        h('td', null, breakerBadge(t.breaker)),
        h('td', { class: 'num', 'data-col': 'depth' }, depth),
        h('td', { class: 'num' }, fmtAge(age)),
        h('td', { class: 'num' }, exceptions > 0 ? link(`#/exceptions?tenant=${encodeURIComponent(t.id)}`, String(exceptions)) : '0'),
        h('td', { class: 'num' }, verified),
      );
    })),
  ));
}

function verifiedChart(stats: Stats): HTMLElement {
  const lastMinute = Math.floor(stats.now / MINUTE) * MINUTE;
  const bars: Bar[] = [];
  for (let i = 29; i >= 0; i--) {
    const start = lastMinute - i * MINUTE;
    const count = stats.verifiedPerMinute.filter((v) => v.minuteStart === start).reduce((n, v) => n + v.count, 0);
    bars.push({ label: i === 0 ? 'now' : `-${i}m`, value: count, tone: 'tone-ok' });
  }
  return columnChart({ title: 'Verified per minute, last 30 minutes', unit: 'verified', bars, tickEvery: 5, empty: 'Nothing verified in the last 30 minutes' });
}

function attemptsChart(stats: Stats): HTMLElement {
  const byKey = new Map<string, Bar>();
  for (const a of stats.attempts) {
    const label = a.errorCategory ? `${a.outcome} · ${a.errorCategory}` : a.outcome;
    const prev = byKey.get(label);
    byKey.set(label, { label, value: (prev?.value ?? 0) + a.count, tone: `tone-${outcomeTone(a.outcome)}` });
  }
  return barChart({ title: 'Attempt outcomes and error categories, last 15 minutes', unit: 'attempts', bars: [...byKey.values()], empty: 'No attempts in the last 15 minutes' });
}

function queueChart(stats: Stats): HTMLElement {
  const byState = new Map<string, number>();
  for (const q of stats.queue) if (OPEN_STATES.includes(q.state) || EXCEPTION_STATES.includes(q.state)) byState.set(q.state, (byState.get(q.state) ?? 0) + q.count);
  const bars: Bar[] = [...byState].map(([state, value]) => ({
    label: state,
    value,
    tone: EXCEPTION_STATES.includes(state as never) ? 'tone-bad' : ['retry_wait', 'unknown', 'conflict'].includes(state) ? 'tone-warn' : 'tone-info',
  }));
  return barChart({ title: 'Open and exception commands by state, now', unit: 'commands', bars, empty: 'Nothing queued, nothing waiting for a person' });
}
