/**
 * The exception queue: commands that need a person (needs_review, rejected), each with its full context and the
 * EHR's current state; operators retry, resolve or cancel with a reason (audited).
 */
import { can, type CommandState, type EhrState, type ExceptionDetail } from '../api.js';
import { h, mount } from '../dom.js';
import { badge, errorBox, facts, freshness, pageHeader, poll, resourceBlock, tenantOptions, timeline, type Ctx, type View } from '../ui.js';
import { commandFacts, commandTable, stateLine } from './commands.js';

const REFRESH_MS = 5_000;
const DEFAULT_LIMIT = 200;

type Action = 'retry' | 'resolve' | 'cancel';

/** Where each action may start (the API refuses the others with COMMAND_NOT_RETRYABLE). */
const ACTION_FROM: Record<Action, readonly CommandState[]> = {
  retry: ['needs_review', 'rejected'],
  resolve: ['needs_review'],
  cancel: ['needs_review', 'rejected', 'queued', 'retry_wait'],
};

const ACTION_TEXT: Record<Action, { label: string; help: string; done: string; tone: string }> = {
  retry: { label: 'Retry', help: 'Back to queued with a fresh budget; the next attempt searches the EHR first, so it cannot duplicate.', done: 'Retried', tone: 'primary' },
  resolve: { label: 'Resolve', help: 'The EHR has it (checked by you): mark verified.', done: 'Resolved', tone: '' },
  cancel: { label: 'Cancel', help: 'Drop the intent: nothing more is sent.', done: 'Cancelled', tone: 'danger' },
};

export const exceptionsView: View = async (root, ctx) => {
  const tenant = ctx.query.get('tenant') ?? '';
  const tenantSelect = h('select', { id: 'x-tenant', name: 'tenant' }, await tenantOptions(ctx, tenant, 'All tenants'));
  const filters = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter exceptions' },
    h('div', { class: 'field' }, h('label', { for: 'x-tenant' }, 'Tenant'), tenantSelect),
    h('button', { type: 'submit' }, 'Show'),
  );
  filters.addEventListener('submit', (event) => {
    event.preventDefault();
    ctx.navigate(`#/exceptions${tenantSelect.value ? `?tenant=${encodeURIComponent(tenantSelect.value)}` : ''}`);
  });
  const status = freshness();
  const error = h('div');
  const list = h('div', { class: 'table-wrap' });
  mount(root,
    pageHeader('Exception queue', status.el),
    h('p', { class: 'hint' }, 'Commands a person must decide on: needs_review (budget spent, unclear outcome, duplicate or mismatch in the EHR) and rejected (the EHR refused it).'),
    filters, error, list,
  );
  poll(ctx.signal, REFRESH_MS, async () => {
    const { exceptions } = await ctx.api.exceptions({ ...(tenant ? { tenant } : {}), limit: DEFAULT_LIMIT }, ctx.signal);
    mount(error);
    mount(list, exceptions.length === 0
      ? h('p', { class: 'alert alert-ok', 'data-empty': '' }, 'The exception queue is empty.')
      : commandTable(exceptions, '#/exceptions/', 'Exception queue', DEFAULT_LIMIT));
    status.set(true);
  }, (err) => {
    status.set(false);
    mount(error, errorBox(err));
  });
};

export const exceptionDetailView: View = (root, ctx, [id = '']) => {
  const status = freshness();
  const error = h('div');
  const body = h('div', null, h('p', { class: 'hint' }, 'Loading the command and the EHR’s current state…'));
  mount(root, pageHeader('Exception', status.el), error, body);
  let lastVersion = '';
  const action: ActionState = { busy: false, error: null };
  poll(ctx.signal, REFRESH_MS, async () => {
    if (action.busy) return;
    const detail = await ctx.api.exception(id, ctx.signal);
    mount(error);
    status.set(true);
    const version = JSON.stringify([detail.command.state, detail.command.updatedAt, detail.attempts.length, detail.events.length, detail.ehrState]);
    if (version === lastVersion) return;
    lastVersion = version;
    renderDetail(body, ctx, detail, action);
  }, (err) => {
    status.set(false);
    mount(error, errorBox(err));
  });
};

/** Whether an action is under way (refreshes wait), and the API's last refusal (kept across refreshes). */
interface ActionState {
  busy: boolean;
  error: HTMLElement | null;
}

function renderDetail(body: HTMLElement, ctx: Ctx, detail: ExceptionDetail, action: ActionState): void {
  const c = detail.command;
  const last = detail.lastEhrResponse;
  // A refresh must not throw away a reason being typed.
  const typed = body.querySelector<HTMLTextAreaElement>('#action-reason')?.value ?? '';
  mount(body,
    stateLine(c.state, c.stateReason),
    actionsPanel(ctx, c.id, c.state, action),
    // An action refused because the state moved on: the panel changes with the state, the refusal stays in view.
    action.error ? h('div', { class: 'actions-refusal' }, action.error) : null,
    h('div', { class: 'two-col' },
      h('section', { 'aria-labelledby': 'ehr-title' },
        h('h2', { id: 'ehr-title' }, 'The EHR now'),
        ehrStateBlock(detail.ehrState, c.resourceType),
        h('h3', null, 'Last EHR response'),
        last === null
          ? h('p', { class: 'hint', 'data-field': 'last-response' }, 'No attempt got an answer from the EHR.')
          : facts([
            ['Attempt', String(last.n)],
            ['HTTP status', h('strong', { 'data-field': 'last-status' }, last.status === null ? 'no answer' : String(last.status))],
            ['Error', last.errorCode ? h('code', null, last.errorCode) : '—'],
            ['Category', last.errorCategory ?? '—'],
          ]),
        h('h2', { id: 'facts-title' }, 'Command'),
        commandFacts(c),
      ),
      h('section', { 'aria-labelledby': 'timeline-title' }, h('h2', { id: 'timeline-title' }, 'Timeline'), timeline(detail.attempts, detail.events)),
    ),
    h('section', { 'aria-labelledby': 'resource-title' }, h('h2', { id: 'resource-title' }, 'Original payload'), resourceBlock(c.resource, ctx.me)),
  );
  const reason = body.querySelector<HTMLTextAreaElement>('#action-reason');
  if (reason && typed) reason.value = typed;
}

function ehrStateBlock(state: EhrState, resourceType: string): HTMLElement {
  switch (state.status) {
    case 'absent':
      return h('p', { 'data-ehr-state': 'absent' }, badge('absent', 'info'), ' The EHR holds nothing with this business key.');
    case 'unavailable':
      return h('p', { 'data-ehr-state': 'unavailable' }, badge('unavailable', 'warn'), ' The EHR could not be searched: ', h('code', null, state.code));
    case 'found':
      return h('div', { 'data-ehr-state': 'found' },
        h('p', null, badge(state.copies.length > 1 ? `found ${state.copies.length} copies` : 'found', state.copies.length > 1 ? 'bad' : 'ok'),
          state.copies.length > 1 ? ' More than one object carries this business key: a duplicate to resolve in the EHR.' : ''),
        h('ul', { class: 'plain' }, state.copies.map((copy) => h('li', null,
          h('code', null, `${resourceType}/${copy.id}${copy.versionId ? ` (version ${copy.versionId})` : ''}`), ' ',
          copy.matchesCommand ? badge('matches the command', 'ok') : badge('differs from the command', 'warn')))),
      );
  }
}

function actionsPanel(ctx: Ctx, id: string, state: CommandState, action: ActionState): HTMLElement | null {
  if (!can.operate(ctx.me.role)) return null;
  const allowed = (Object.keys(ACTION_FROM) as Action[]).filter((a) => ACTION_FROM[a].includes(state));
  if (allowed.length === 0) return h('p', { class: 'hint' }, `No operator action applies in state ${state}.`);
  const reason = h('textarea', { id: 'action-reason', name: 'reason', rows: 2, required: true, maxlength: 2000, 'aria-describedby': 'action-reason-hint' });
  const out = h('div', { class: 'form-status' });
  const buttons = allowed.map((a) => h('button', { type: 'submit', value: a, class: ACTION_TEXT[a].tone, 'data-action': a, title: ACTION_TEXT[a].help }, ACTION_TEXT[a].label));
  const form = h('form', { class: 'card actions-panel', 'aria-labelledby': 'actions-title' },
    h('h2', { id: 'actions-title' }, 'Decide'),
    h('label', { for: 'action-reason' }, 'Reason (required, kept in the audit trail)'),
    reason,
    h('p', { class: 'hint', id: 'action-reason-hint' }, allowed.map((a) => [h('strong', null, ACTION_TEXT[a].label), `: ${ACTION_TEXT[a].help} `])),
    h('div', { class: 'actions' }, buttons),
    out,
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const submitter = (event as SubmitEvent).submitter;
    const chosen = (submitter instanceof HTMLButtonElement ? submitter.value : '') as Action;
    if (!allowed.includes(chosen)) return;
    const text = reason.value.trim();
    if (!text) {
      mount(out, errorBox(new Error('A reason is required.')));
      reason.focus();
      return;
    }
    action.busy = true;
    action.error = null;
    for (const b of buttons) b.disabled = true;
    mount(out, h('p', { class: 'hint' }, `${ACTION_TEXT[chosen].label}…`));
    void ctx.api.act(id, chosen, text).then(
      (res) => {
        action.busy = false;
        ctx.flash(`${ACTION_TEXT[chosen].done}: the command is now ${res.command.state}.${chosen === 'retry' ? ' This page follows it.' : ''}`);
        ctx.navigate(`#/commands/${encodeURIComponent(id)}`);
      },
      (err: unknown) => {
        action.busy = false;
        for (const b of buttons) b.disabled = false;
        action.error = errorBox(err, `${ACTION_TEXT[chosen].label} failed.`);
        mount(out, action.error);
      },
    );
  });
  return form;
}
