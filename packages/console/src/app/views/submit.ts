/** Submit a command (POST /v1/commands), then follow it on its own screen until it settles. */
import { can } from '../api.js';
import { h, mount } from '../dom.js';
import { errorBox, pageHeader, tenantOptions, type View } from '../ui.js';

const SAMPLE = {
  resourceType: 'Observation',
  status: 'final',
  code: { coding: [{ system: 'http://loinc.org', code: '8867-4', display: 'Heart rate' }] },
  subject: { reference: 'Patient/example' },
  effectiveDateTime: '2026-01-01T09:30:00Z',
  valueQuantity: { value: 72, unit: 'beats/minute', system: 'http://unitsofmeasure.org', code: '/min' },
};

const randomSuffix = (): string => Array.from(crypto.getRandomValues(new Uint8Array(4)), (b) => b.toString(16).padStart(2, '0')).join('');

export const submitView: View = async (root, ctx) => {
  if (!can.submit(ctx.me.role)) {
    mount(root, pageHeader('Submit a command'), h('p', { class: 'alert alert-warn' }, `The ${ctx.me.role} role may not submit commands.`));
    return;
  }
  const field = (id: string, label: string, control: HTMLElement, hint?: string): HTMLElement =>
    h('div', { class: 'field' }, h('label', { for: id }, label), control, hint ? h('p', { class: 'hint', id: `${id}-hint` }, hint) : null);

  const tenant = h('select', { id: 's-tenant', name: 'tenantId', required: true }, await tenantOptions(ctx, ctx.query.get('tenant') ?? '', null));
  const context = h('input', { id: 's-context', name: 'context', required: true, value: 'system', 'aria-describedby': 's-context-hint' });
  const action = h('select', { id: 's-action', name: 'action' }, ['create', 'update', 'upsert', 'delete'].map((a) => h('option', { value: a }, a)));
  const resourceType = h('input', { id: 's-type', name: 'resourceType', required: true, value: 'Observation' });
  const businessKey = h('input', { id: 's-key', name: 'businessKey', required: true, maxlength: 256, value: `console:${randomSuffix()}`, 'aria-describedby': 's-key-hint', spellcheck: 'false' });
  const priority = h('select', { id: 's-priority', name: 'priority' }, h('option', { value: 'interactive' }, 'interactive'), h('option', { value: 'batch' }, 'batch'));
  const resource = h('textarea', { id: 's-resource', name: 'resource', rows: 14, required: true, spellcheck: 'false', class: 'mono', 'aria-describedby': 's-resource-hint' });
  resource.value = JSON.stringify(SAMPLE, null, 2);
  const idem = h('input', { id: 's-idem', name: 'idempotencyKey', maxlength: 255, 'aria-describedby': 's-idem-hint', spellcheck: 'false' });
  const out = h('div', { class: 'form-status' });
  const button = h('button', { type: 'submit', class: 'primary' }, 'Submit command');

  const form = h('form', { class: 'card form-grid', 'aria-label': 'New command' },
    field('s-tenant', 'Tenant', tenant),
    field('s-context', 'Context', context, 'system, provider:<id> or patient:<id>'),
    field('s-action', 'Action', action),
    field('s-type', 'Resource type', resourceType),
    field('s-key', 'Business key', businessKey, 'The clinical object’s stable identity, e.g. lab-feed:ORU-123:OBX-1 (no | , $ \\).'),
    field('s-priority', 'Priority', priority),
    h('div', { class: 'field wide' }, h('label', { for: 's-resource' }, 'Resource (FHIR R4 JSON)'), resource,
      h('p', { class: 'hint', id: 's-resource-hint' }, 'Its resourceType must equal the resource type above.')),
    field('s-idem', 'Idempotency-Key (optional)', idem, 'Same key and payload return the original command; another payload is refused (422).'),
    h('div', { class: 'actions wide' }, button),
    h('div', { class: 'wide' }, out),
  );

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    let parsed: unknown;
    try {
      parsed = JSON.parse(resource.value);
    } catch (err) {
      mount(out, errorBox(new Error(`The resource is not valid JSON: ${(err as Error).message}`)));
      resource.focus();
      return;
    }
    button.disabled = true;
    mount(out, h('p', { class: 'hint' }, 'Submitting…'));
    void ctx.api
      .submit(
        {
          tenantId: tenant.value,
          context: context.value.trim(),
          action: action.value,
          resourceType: resourceType.value.trim(),
          resource: parsed,
          businessKey: businessKey.value.trim(),
          priority: priority.value as 'interactive' | 'batch',
        },
        idem.value.trim() || undefined,
      )
      .then(
        (accepted) => {
          ctx.flash(accepted.created
            ? `Saved: command ${accepted.id} is ${accepted.state} (durable, not yet in the EHR). This page follows it.`
            : `Idempotent replay: the key was used before; this is the original command ${accepted.id}.`);
          ctx.navigate(`#/commands/${encodeURIComponent(accepted.id)}`);
        },
        (err: unknown) => {
          button.disabled = false;
          mount(out, errorBox(err, 'Not accepted.'));
        },
      );
  });

  mount(root, pageHeader('Submit a command'), h('p', { class: 'hint' }, 'The API answers once the command is durable (queued, or already in flight when a worker was free); then a worker delivers it and reads it back.'), form);
};
