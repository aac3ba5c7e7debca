/**
 * The embedded sandbox EHR (development only): its fault profile and fault statistics; admins switch faults on and
 * off (the walkthrough's "make the EHR misbehave"). The API answers 404 when no embedded sandbox runs.
 */
import { ApiError, can } from '../api.js';
import { h, mount } from '../dom.js';
import { errorBox, facts, freshness, pageHeader, poll, type View } from '../ui.js';

const REFRESH_MS = 5_000;

/** The profiles of examples/faults/ (README walkthrough), and none. */
const PRESETS: readonly { label: string; profile: unknown }[] = [
  { label: 'No faults', profile: { faults: [] } },
  { label: 'Every create fails with 503', profile: { faults: [{ id: 'creates-fail', kind: 'error-before', status: 503, match: { interactions: ['create'] } }] } },
  { label: 'Observations with a note are refused (422)', profile: { faults: [{ id: 'reject-notes', kind: 'schema-drift', elements: ['Observation.note'] }] } },
];

export const sandboxView: View = (root, ctx) => {
  const status = freshness();
  const error = h('div');
  const current = h('div', null, h('p', { class: 'hint' }, 'Loading…'));
  let last = '';
  const load = async (): Promise<void> => {
    const info = await ctx.api.sandbox(ctx.signal);
    mount(error);
    status.set(true);
    const version = JSON.stringify(info);
    if (version === last) return;
    last = version;
    const faults = (info.faults as { faults?: unknown[] } | null)?.faults ?? [];
    mount(current,
      facts([
        ['FHIR base URL', h('code', null, info.fhirBaseUrl ?? '—')],
        ['Active faults', h('strong', { 'data-field': 'fault-count' }, faults.length === 0 ? 'none' : String(faults.length))],
      ]),
      h('h2', null, 'Fault profile'),
      h('pre', { class: 'json', tabindex: 0, 'aria-label': 'Fault profile JSON', 'data-field': 'fault-profile' }, JSON.stringify(info.faults, null, 2)),
      h('h2', null, 'Faults injected so far'),
      h('pre', { class: 'json', tabindex: 0, 'aria-label': 'Fault statistics JSON' }, JSON.stringify(info.stats, null, 2)),
    );
  };
  const onError = (err: unknown): void => {
    status.set(false);
    mount(error, err instanceof ApiError && err.code === 'API_NOT_FOUND'
      ? h('p', { class: 'alert alert-warn' }, 'No embedded sandbox EHR runs in this engine (production mode, or started with --no-sandbox).')
      : errorBox(err));
  };
  const editor = can.admin(ctx.me.role)
    ? faultEditor(async (profile) => {
      await ctx.api.setSandboxFaults(profile);
      await load().catch(onError);
    })
    : h('p', { class: 'hint' }, 'Only admins change the fault profile.');
  mount(root,
    pageHeader('Sandbox EHR', status.el),
    h('p', { class: 'hint' }, 'The embedded sandbox EHR of development mode (tenant demo) and its fault injection (docs/faults.md).'),
    error, current, editor,
  );
  poll(ctx.signal, REFRESH_MS, load, onError);
};

function faultEditor(apply: (profile: unknown) => Promise<unknown>): HTMLElement {
  const text = h('textarea', { id: 'fault-json', rows: 8, class: 'mono', spellcheck: 'false', 'aria-describedby': 'fault-json-hint' });
  text.value = JSON.stringify(PRESETS[0]?.profile, null, 2);
  const out = h('div', { class: 'form-status' });
  const form = h('form', { class: 'card', 'aria-labelledby': 'fault-title' },
    h('h2', { id: 'fault-title' }, 'Change the fault profile'),
    h('div', { class: 'actions' }, PRESETS.map((p) => h('button', { type: 'button', onclick: () => {
      text.value = JSON.stringify(p.profile, null, 2);
    } }, p.label))),
    h('label', { for: 'fault-json' }, 'Fault profile (JSON)'),
    text,
    h('p', { class: 'hint', id: 'fault-json-hint' }, 'Replaces the whole profile; {"faults": []} switches faults off.'),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Apply profile')),
    out,
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    let profile: unknown;
    try {
      profile = JSON.parse(text.value);
    } catch (err) {
      mount(out, errorBox(new Error(`Not valid JSON: ${(err as Error).message}`)));
      return;
    }
    void apply(profile).then(
      () => mount(out, h('p', { class: 'alert alert-ok', role: 'status' }, 'Applied.')),
      (err: unknown) => mount(out, errorBox(err, 'Refused.')),
    );
  });
  return form;
}
