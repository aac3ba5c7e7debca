/** Commands: a filtered list (tenant, state, limit) and one command with its timeline (polled while it moves). */
import { can, COMMAND_STATES, EXCEPTION_STATES, type CommandDetail, type CommandState, type CommandView } from '../api.js';
import { fmtTime, h, mount } from '../dom.js';
import {
  errorBox, facts, freshness, keyValue, link, pageHeader, poll, resourceBlock, SETTLED, STATE_MEANING, stateBadge, tenantOptions, timeline, type Ctx, type View,
} from '../ui.js';

const LIST_REFRESH_MS = 5_000;
const MOVING_REFRESH_MS = 1_000;
const SETTLED_REFRESH_MS = 10_000;
const DEFAULT_LIMIT = 200;

export const commandsView: View = async (root, ctx) => {
  const tenant = ctx.query.get('tenant') ?? '';
  const state = ctx.query.get('state') ?? '';
  const limit = Number(ctx.query.get('limit') ?? DEFAULT_LIMIT) || DEFAULT_LIMIT;

  const tenantSelect = h('select', { id: 'f-tenant', name: 'tenant' }, await tenantOptions(ctx, tenant, 'All tenants'));
  const stateSelect = h('select', { id: 'f-state', name: 'state' },
    h('option', { value: '', selected: state === '' }, 'Any state'),
    h('option', { value: 'queued,retry_wait,in_flight,unknown,acknowledged,conflict', selected: state.includes(',') && state.startsWith('queued') }, 'Open (on its way)'),
    COMMAND_STATES.map((s) => h('option', { value: s, selected: state === s }, s)),
  );
  const limitInput = h('input', { id: 'f-limit', name: 'limit', type: 'number', min: 1, max: 1000, value: limit });
  const filters = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter commands' },
    h('div', { class: 'field' }, h('label', { for: 'f-tenant' }, 'Tenant'), tenantSelect),
    h('div', { class: 'field' }, h('label', { for: 'f-state' }, 'State'), stateSelect),
    h('div', { class: 'field' }, h('label', { for: 'f-limit' }, 'Limit'), limitInput),
    h('button', { type: 'submit' }, 'Search'),
  );
  filters.addEventListener('submit', (event) => {
    event.preventDefault();
    const q = new URLSearchParams();
    if (tenantSelect.value) q.set('tenant', tenantSelect.value);
    if (stateSelect.value) q.set('state', stateSelect.value);
    if (limitInput.value && Number(limitInput.value) !== DEFAULT_LIMIT) q.set('limit', limitInput.value);
    const s = q.toString();
    ctx.navigate(`#/commands${s ? `?${s}` : ''}`);
  });

  const idInput = h('input', { id: 'f-id', name: 'id', required: true, spellcheck: 'false', placeholder: '00000000-0000-…', pattern: '[A-Za-z0-9\\-]{1,128}' });
  const openById = h('form', { class: 'filters', 'aria-label': 'Open a command by id' },
    h('div', { class: 'field wide-field' }, h('label', { for: 'f-id' }, 'Command id'), idInput),
    h('button', { type: 'submit' }, 'Open'),
  );
  openById.addEventListener('submit', (event) => {
    event.preventDefault();
    ctx.navigate(`#/commands/${encodeURIComponent(idInput.value.trim())}`);
  });

  const status = freshness();
  const error = h('div');
  // `data-showing`: the filter the list shows, set once its answer is on screen (tests wait for it; a screen
  // reached by changing the filter starts empty until its first fetch answers).
  const list = h('div', { class: 'table-wrap' });
  mount(root,
    pageHeader('Commands', status.el, can.submit(ctx.me.role) ? link('#/commands/new', 'Submit a command') : null),
    h('div', { class: 'filter-row' }, filters, openById),
    error, list,
  );
  poll(ctx.signal, LIST_REFRESH_MS, async () => {
    const { commands } = await ctx.api.commands({ ...(tenant ? { tenant } : {}), ...(state ? { state } : {}), limit }, ctx.signal);
    mount(error);
    mount(list, commandTable(commands, '#/commands/', `Commands${tenant ? ` of ${tenant}` : ''}`, limit));
    list.setAttribute('data-showing', new URLSearchParams({ tenant, state }).toString());
    status.set(true);
  }, (err) => {
    status.set(false);
    mount(error, errorBox(err));
  });
};

/** Newest first (the API answers oldest first, up to `limit`). */
export function commandTable(commands: readonly CommandView[], hrefPrefix: string, caption: string, limit: number): HTMLElement {
  if (commands.length === 0) return h('p', { class: 'hint', 'data-empty': '' }, 'No commands match.');
  const rows = [...commands].reverse();
  return h('div', null,
    h('table', { class: 'data', 'data-table': 'commands' },
      h('caption', { class: 'visually-hidden' }, caption),
      h('thead', null, h('tr', null,
        h('th', { scope: 'col' }, 'Created'),
        h('th', { scope: 'col' }, 'Command'),
        h('th', { scope: 'col' }, 'Tenant'),
        h('th', { scope: 'col' }, 'Action'),
        h('th', { scope: 'col' }, 'Business key'),
        h('th', { scope: 'col' }, 'State'),
        h('th', { scope: 'col' }, 'Reason'),
        h('th', { scope: 'col', class: 'num' }, 'Attempts'),
      )),
      h('tbody', null, rows.map((c) => h('tr', { 'data-command': c.id },
        h('td', { class: 'nowrap' }, fmtTime(c.createdAt)),
        h('td', null, link(`${hrefPrefix}${encodeURIComponent(c.id)}`, h('code', null, c.id.slice(0, 8)), h('span', { class: 'visually-hidden' }, ` ${c.id}`))),
        h('td', null, c.tenantId),
        h('td', null, `${c.action} ${c.resourceType}`),
        h('td', { class: 'key' }, keyValue(c.businessKey)),
        h('td', null, stateBadge(c.state)),
        h('td', null, c.stateReason ? h('code', null, c.stateReason) : ''),
        h('td', { class: 'num' }, c.attemptSeq),
      ))),
    ),
    commands.length >= limit ? h('p', { class: 'hint' }, `Showing the oldest ${limit} that match (the API lists oldest first); narrow the filter to see newer ones.`) : null,
  );
}

export function commandFacts(c: CommandView): HTMLElement {
  return facts([
    ['Command id', h('code', { 'data-field': 'id' }, c.id)],
    ['Tenant', link(`#/tenants/${encodeURIComponent(c.tenantId)}`, c.tenantId)],
    ['Action', `${c.action} ${c.resourceType}`],
    ['Context', h('code', null, c.context)],
    ['Business key', keyValue(c.businessKey)],
    ['Idempotency key', keyValue(c.idempotencyKey)],
    ['Priority', c.priority],
    ['Generation', String(c.generation)],
    ['Requested by', h('code', null, c.requestedBy)],
    ['EHR id', c.ehrId ? h('code', null, `${c.resourceType}/${c.ehrId}${c.ehrVersion ? ` (version ${c.ehrVersion})` : ''}`) : '—'],
    ['Attempts', `${c.attemptSeq} in all, ${c.attempts} against the current budget`],
    ['Created', fmtTime(c.createdAt)],
    ['Updated', fmtTime(c.updatedAt)],
    c.state === 'retry_wait' ? ['Next attempt', fmtTime(c.nextAttemptAt)] : null,
    c.deadlineAt !== null ? ['Deadline', fmtTime(c.deadlineAt)] : null,
  ]);
}

export function stateLine(state: CommandState, reason: string | null): HTMLElement {
  return h('p', { class: 'state-line', 'aria-live': 'polite' },
    stateBadge(state), ' ', h('span', null, STATE_MEANING[state]), reason ? [' · reason ', h('code', { 'data-field': 'reason' }, reason)] : null);
}

export const commandDetailView: View = (root, ctx, [id = '']) => {
  const status = freshness();
  const error = h('div');
  const body = h('div', null, h('p', { class: 'hint' }, 'Loading…'));
  mount(root, pageHeader('Command', status.el), error, body);
  let lastVersion = '';
  poll(ctx.signal, MOVING_REFRESH_MS, async () => {
    const detail = await ctx.api.command(id, ctx.signal);
    mount(error);
    status.set(true);
    // Re-render only when something changed, so focus and open disclosures stay put.
    const version = JSON.stringify([detail.command.state, detail.command.updatedAt, detail.attempts.length, detail.events.length]);
    if (version !== lastVersion) {
      lastVersion = version;
      renderDetail(body, ctx, detail);
    }
    return SETTLED.includes(detail.command.state) ? SETTLED_REFRESH_MS : MOVING_REFRESH_MS;
  }, (err) => {
    status.set(false);
    mount(error, errorBox(err));
  });
};

function renderDetail(body: HTMLElement, ctx: Ctx, detail: CommandDetail): void {
  const c = detail.command;
  mount(body,
    stateLine(c.state, c.stateReason),
    EXCEPTION_STATES.includes(c.state) ? h('p', { class: 'alert alert-warn' }, 'This command is in the exception queue. ', link(`#/exceptions/${encodeURIComponent(c.id)}`, 'Open it there'), ' to see the EHR’s current state and decide.') : null,
    h('div', { class: 'two-col' },
      h('section', { 'aria-labelledby': 'facts-title' }, h('h2', { id: 'facts-title' }, 'Facts'), commandFacts(c), cancelForm(ctx, c)),
      h('section', { 'aria-labelledby': 'timeline-title' }, h('h2', { id: 'timeline-title' }, 'Timeline'), timeline(detail.attempts, detail.events)),
    ),
    h('section', { 'aria-labelledby': 'resource-title' }, h('h2', { id: 'resource-title' }, 'Resource'), resourceBlock(c.resource, ctx.me)),
  );
}

/** Operators may cancel a command that is still waiting (queued, retry_wait); exceptions are cancelled in the queue. */
function cancelForm(ctx: Ctx, c: CommandView): HTMLElement | null {
  if (!can.operate(ctx.me.role) || (c.state !== 'queued' && c.state !== 'retry_wait')) return null;
  const reason = h('input', { id: 'cancel-reason', type: 'text', required: true, maxlength: 2000 });
  const out = h('div');
  const form = h('form', { class: 'inline-action' },
    h('label', { for: 'cancel-reason' }, 'Reason to cancel'), reason, h('button', { type: 'submit', class: 'danger' }, 'Cancel command'), out);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    void ctx.api.cancelCommand(c.id, reason.value.trim()).then(
      (res) => mount(out, h('p', { class: 'alert alert-ok', role: 'status' }, `Cancelled: now ${res.command.state}.`)),
      (err: unknown) => mount(out, errorBox(err, 'Cancel failed.')),
    );
  });
  return form;
}
