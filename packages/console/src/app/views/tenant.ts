/** One tenant: auth state, granted vs requested scopes, breaker, rate limiting, queue; Resume for operators. */
import { can, type TenantHealth } from '../api.js';
import { fmtAge, fmtTime, h, mount } from '../dom.js';
import { badge, breakerBadge, errorBox, facts, freshness, link, outcomeTone, pageHeader, poll, tenantStateBadge, type Ctx, type View } from '../ui.js';

const REFRESH_MS = 5_000;

export const tenantView: View = (root, ctx, [id = '']) => {
  const status = freshness();
  const error = h('div');
  const body = h('div', null, h('p', { class: 'hint' }, 'Loading…'));
  mount(root, pageHeader(`Tenant ${id}`, status.el), error, body);
  let lastVersion = '';
  const onError = (err: unknown): void => {
    status.set(false);
    mount(error, errorBox(err));
  };
  const load = async (): Promise<void> => {
    const health = await ctx.api.tenantHealth(id, ctx.signal);
    mount(error);
    status.set(true);
    const version = JSON.stringify(health);
    if (version !== lastVersion) {
      lastVersion = version;
      render(body, ctx, health, () => void load().catch(onError));
    }
  };
  poll(ctx.signal, REFRESH_MS, load, onError);
};

const scopeList = (scopes: string | null): string[] => (scopes ?? '').split(/\s+/).filter(Boolean);

function render(body: HTMLElement, ctx: Ctx, t: TenantHealth, reload: () => void): void {
  const requested = scopeList(t.auth.requestedScopes);
  const granted = t.auth.grantedScopes === null ? null : scopeList(t.auth.grantedScopes);
  const missing = granted === null ? [] : requested.filter((s) => !granted.includes(s));
  const extra = granted === null ? [] : granted.filter((s) => !requested.includes(s));
  const byState = Object.entries(t.queue.byState).sort(([a], [b]) => a.localeCompare(b));
  mount(body,
    h('div', { class: 'two-col' },
      h('section', { 'aria-labelledby': 'auth-title' },
        h('h2', { id: 'auth-title' }, 'Authorisation'),
        facts([
          ['State', [tenantStateBadge(t.auth.state), t.auth.stateReason ? [' ', h('code', null, t.auth.stateReason)] : null]],
          ['Vendor', t.vendor],
          ['Access token expires', t.auth.accessTokenExpiresAt === null ? 'no token held' : fmtTime(t.auth.accessTokenExpiresAt)],
          ['Requested scopes', h('span', { class: 'scopes' }, requested.map((s) => h('code', null, s)))],
          ['Granted scopes', granted === null ? h('span', { class: 'hint' }, 'not known yet (no token issued)') : h('span', { class: 'scopes' }, granted.map((s) => h('code', null, s)))],
          missing.length > 0 ? ['Not granted', h('span', { class: 'scopes' }, missing.map((s) => badge(s, 'bad')))] : null,
          extra.length > 0 ? ['Granted beyond the request', h('span', { class: 'scopes' }, extra.map((s) => badge(s, 'warn')))] : null,
        ]),
        resumePanel(ctx, t, reload),
      ),
      h('section', { 'aria-labelledby': 'ehr-title' },
        h('h2', { id: 'ehr-title' }, 'EHR connection'),
        facts([
          ['Breaker', breakerBadge(t.breaker)],
          ['Rate limited (15 min)', h('span', { 'data-field': 'rate-limited' }, `${t.rateLimit.rateLimitedAttemptsLast15m} attempts answered 429`)],
        ]),
        h('h3', null, 'Attempts, last 15 minutes'),
        t.attemptsLast15m.length === 0
          ? h('p', { class: 'hint' }, 'None.')
          : h('ul', { class: 'plain' }, t.attemptsLast15m.map((a) => h('li', null, badge(a.outcome, outcomeTone(a.outcome)), a.errorCategory ? ` ${a.errorCategory}` : '', `: ${a.count}`))),
      ),
    ),
    h('section', { 'aria-labelledby': 'queue-title' },
      h('h2', { id: 'queue-title' }, 'Queue'),
      facts([
        ['Oldest open command', fmtAge(t.queue.oldestOpenAgeSeconds)],
        ['In the exception queue', t.queue.exceptions > 0 ? link(`#/exceptions?tenant=${encodeURIComponent(t.tenant)}`, String(t.queue.exceptions)) : '0'],
      ]),
      byState.length === 0 ? h('p', { class: 'hint' }, 'No commands yet.') : h('table', { class: 'data compact' },
        h('caption', { class: 'visually-hidden' }, 'Commands by state'),
        h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'State'), h('th', { scope: 'col', class: 'num' }, 'Commands'))),
        h('tbody', null, byState.map(([state, count]) => h('tr', null,
          h('td', null, link(`#/commands?tenant=${encodeURIComponent(t.tenant)}&state=${state}`, state)),
          h('td', { class: 'num' }, String(count))))),
      ),
    ),
  );
}

function resumePanel(ctx: Ctx, t: TenantHealth, reload: () => void): HTMLElement | null {
  if (t.auth.state !== 'auth_paused') return null;
  if (!can.operate(ctx.me.role)) return h('p', { class: 'alert alert-warn' }, 'Paused: deliveries wait until an operator resumes the tenant.');
  const out = h('div', { class: 'form-status' });
  const button = h('button', { type: 'button', class: 'primary', 'data-action': 'resume' }, 'Resume tenant');
  button.addEventListener('click', () => {
    button.disabled = true;
    void ctx.api.resumeTenant(t.tenant).then(
      (tenant) => {
        ctx.notify(`Resumed: the tenant is ${tenant.state}.`);
        reload();
      },
      (err: unknown) => {
        button.disabled = false;
        mount(out, errorBox(err, 'Resume failed.'));
      },
    );
  });
  return h('div', { class: 'alert alert-warn' },
    h('p', null, 'Paused: the EHR refused the credentials, so deliveries wait. Fix the credentials, then resume.'),
    button, out);
}
