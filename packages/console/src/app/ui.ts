/** Shared pieces of the screens: badges, masked values, facts, the timeline, errors, polling. */
import { ApiError, isMaskedKey, isMaskedResource, type Api, type Attempt, type CommandEvent, type CommandState, type Me } from './api.js';
import { fmtClock, fmtDuration, fmtTime, h, mount, type Child } from './dom.js';

/** What every screen gets. */
export interface Ctx {
  readonly api: Api;
  readonly me: Me;
  /** Aborted when the user leaves the screen: stops polling and pending requests. */
  readonly signal: AbortSignal;
  readonly query: URLSearchParams;
  navigate(hash: string): void;
  /** A message shown at the top of the next screen (after navigate). */
  flash(message: string): void;
  /** A message shown now, above the current screen (announced to screen readers). */
  notify(message: string): void;
}

export type View = (root: HTMLElement, ctx: Ctx, params: readonly string[]) => void | Promise<void>;

export type Tone = 'ok' | 'info' | 'warn' | 'bad' | 'muted';

const STATE_TONE: Record<CommandState, Tone> = {
  queued: 'info',
  in_flight: 'info',
  acknowledged: 'info',
  verified: 'ok',
  unknown: 'warn',
  retry_wait: 'warn',
  conflict: 'warn',
  rejected: 'bad',
  needs_review: 'bad',
  superseded: 'muted',
  cancelled: 'muted',
};

/** What a state means to a person (docs/writeback.md "What saved means"). */
export const STATE_MEANING: Record<CommandState, string> = {
  queued: 'Saved: durable, not yet in the EHR',
  in_flight: 'Sending',
  acknowledged: 'Sending: the EHR answered, reading it back',
  unknown: 'Sending: the answer was lost, looking for it in the EHR',
  conflict: 'Sending: version conflict, re-reading',
  retry_wait: 'Sending: waiting to retry',
  verified: 'In the EHR, read back and equal',
  needs_review: 'Needs attention: a human decides',
  rejected: 'Needs attention: the EHR refused it, nothing was written',
  superseded: 'Not sent: a newer version was applied',
  cancelled: 'Not sent: cancelled by an operator',
};

/** Settled: nothing moves any more without a person. */
export const SETTLED: readonly CommandState[] = ['verified', 'rejected', 'needs_review', 'superseded', 'cancelled'];

export function badge(text: string, tone: Tone, attrs: Record<string, string> = {}): HTMLElement {
  return h('span', { class: `badge tone-${tone}`, ...attrs }, text);
}

export function stateBadge(state: CommandState): HTMLElement {
  return badge(state, STATE_TONE[state] ?? 'muted', { 'data-state': state, title: STATE_MEANING[state] ?? state });
}

export function outcomeTone(outcome: string): Tone {
  switch (outcome) {
    case 'applied':
    case 'found':
      return 'ok';
    case 'not_sent':
    case 'rate_limited':
    case 'unknown':
    case 'abandoned':
      return 'warn';
    case 'superseded':
      return 'muted';
    default:
      return 'bad';
  }
}

export function tenantStateBadge(state: string): HTMLElement {
  return badge(state, state === 'active' ? 'ok' : state === 'auth_paused' ? 'bad' : 'muted', { 'data-tenant-state': state });
}

export function breakerBadge(state: string): HTMLElement {
  return badge(`breaker ${state}`, state === 'closed' ? 'ok' : state === 'open' ? 'bad' : 'warn', { 'data-breaker': state });
}

const MASKED_TITLE = 'Masked: this role does not see PHI. The token only tells equal keys apart.';

/** A business or idempotency key; masked keys say so. */
export function keyValue(value: string | null): Child {
  if (value === null) return '—';
  if (isMaskedKey(value)) return h('span', { class: 'masked', title: MASKED_TITLE }, badge('masked', 'muted'), ' ', h('code', null, value));
  return h('code', null, value);
}

/** The resource (PHI) for operators and admins; a clear notice for the others. */
export function resourceBlock(resource: Record<string, unknown>, me: Me): HTMLElement {
  if (isMaskedResource(resource)) {
    return h('div', { class: 'masked-panel', 'data-masked': 'resource' },
      badge('masked', 'muted'),
      ` The ${String(resource['resourceType'] ?? 'resource')} is hidden: the ${me.role} role does not see PHI. Operators and admins see it.`);
  }
  return h('pre', { class: 'json', tabindex: 0, 'aria-label': 'Resource JSON' }, JSON.stringify(resource, null, 2));
}

/** A definition list of facts. */
export function facts(rows: readonly (readonly [string, Child] | null)[]): HTMLElement {
  return h('dl', { class: 'facts' }, rows.filter((r): r is readonly [string, Child] => r !== null).map(([k, v]) => [h('dt', null, k), h('dd', null, v)]));
}

type Entry = { at: number; kind: 'attempt'; attempt: Attempt } | { at: number; kind: 'event'; event: CommandEvent };

/** Attempts and events of a command, in time order. */
export function timeline(attempts: readonly Attempt[], events: readonly CommandEvent[]): HTMLElement {
  const entries: Entry[] = [
    ...attempts.map((a): Entry => ({ at: a.startedAt, kind: 'attempt', attempt: a })),
    ...events.map((e): Entry => ({ at: e.at, kind: 'event', event: e })),
  ].sort((a, b) => a.at - b.at || (a.kind === 'event' ? (a.event.seq) : 0) - (b.kind === 'event' ? b.event.seq : 0));
  if (entries.length === 0) return h('p', { class: 'hint' }, 'Nothing yet.');
  return h('ol', { class: 'timeline', 'aria-label': 'Timeline' }, entries.map((e) => (e.kind === 'attempt' ? attemptItem(e.attempt) : eventItem(e.event))));
}

function attemptItem(a: Attempt): HTMLElement {
  return h('li', { class: 'tl-attempt', 'data-attempt': a.n, 'data-outcome': a.outcome },
    h('div', { class: 'tl-head' },
      h('time', { datetime: new Date(a.startedAt).toISOString() }, fmtTime(a.startedAt)),
      h('strong', null, `Attempt ${a.n}`),
      badge(a.outcome, outcomeTone(a.outcome)),
      a.errorCategory ? badge(a.errorCategory, 'muted') : null,
    ),
    h('dl', { class: 'tl-facts' },
      h('dt', null, 'EHR status'), h('dd', null, a.ehrStatus === null ? '—' : String(a.ehrStatus)),
      h('dt', null, 'verification'), h('dd', null, a.verification ?? '—'),
      h('dt', null, 'error'), h('dd', null, a.errorCode ? h('code', null, a.errorCode) : '—'),
      h('dt', null, 'duration'), h('dd', null, fmtDuration(a.endedAt === null ? null : a.endedAt - a.startedAt)),
      h('dt', null, 'steps'), h('dd', null, a.steps ? h('code', null, a.steps) : '—'),
      h('dt', null, 'correlation id'), h('dd', null, a.correlationId ? h('code', null, a.correlationId) : '—'),
      h('dt', null, 'worker'), h('dd', null, a.worker ?? '—'),
    ),
  );
}

function eventItem(e: CommandEvent): HTMLElement {
  const operator = e.kind.startsWith('operator:');
  return h('li', { class: `tl-event${operator ? ' tl-operator' : ''}`, 'data-event': e.kind },
    h('div', { class: 'tl-head' },
      h('time', { datetime: new Date(e.at).toISOString() }, fmtTime(e.at)),
      h('strong', null, e.kind),
      e.fromState || e.toState ? h('span', { class: 'tl-move' }, e.fromState ?? '∅', ' → ', e.toState ?? '∅') : null,
      h('span', { class: 'tl-actor' }, e.actor),
    ),
    e.reason === null ? null : operator
      ? h('p', { class: 'tl-reason tl-note' }, e.reason === '(hidden)' ? [badge('masked', 'muted'), ' operator note hidden for this role'] : `“${e.reason}”`)
      // Worker reasons are codes (error codes, snake_case words), never free text.
      : h('p', { class: 'tl-reason' }, h('code', null, e.reason)),
  );
}

/** The API's error, as it said it: the OperationOutcome's diagnostics and its code. */
export function errorBox(err: unknown, prefix = ''): HTMLElement {
  const message = err instanceof ApiError ? err.message : err instanceof Error ? err.message : String(err);
  const code = err instanceof ApiError ? err.code : null;
  return h('div', { class: 'alert alert-error', role: 'alert' },
    prefix ? h('strong', null, `${prefix} `) : null,
    message,
    code ? [' ', h('code', { class: 'error-code' }, code)] : null,
  );
}

export function pageHeader(title: string, ...extra: Child[]): HTMLElement {
  return h('header', { class: 'page-header' }, h('h1', { tabindex: -1 }, title), ...extra);
}

/** "Updated 07:14:31" line that polling keeps current. */
export function freshness(): { el: HTMLElement; set(ok: boolean, detail?: string): void } {
  const el = h('p', { class: 'freshness', 'aria-live': 'off' }, 'Loading…');
  return {
    el,
    set(ok, detail) {
      mount(el, ok ? `Updated ${fmtClock(Date.now())}` : `Refresh failed ${fmtClock(Date.now())}${detail ? `: ${detail}` : ''}`);
      el.classList.toggle('stale', !ok);
    },
  };
}

/**
 * Runs `tick` now and then every `intervalMs` (or what `tick` returns) until the screen is left. Never two ticks
 * at once; a failing tick is reported and polling goes on, except after a 403 or 404 (asking again cannot help).
 */
export function poll(signal: AbortSignal, intervalMs: number, tick: () => Promise<number | void>, onError: (err: unknown) => void): void {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const run = async (): Promise<void> => {
    if (signal.aborted) return;
    let next = intervalMs;
    try {
      next = (await tick()) ?? intervalMs;
    } catch (err) {
      if (signal.aborted || (err as Error).name === 'AbortError') return;
      onError(err);
      if (err instanceof ApiError && (err.status === 403 || err.status === 404)) return;
    }
    if (!signal.aborted) timer = setTimeout(() => void run(), next);
  };
  signal.addEventListener('abort', () => clearTimeout(timer), { once: true });
  void run();
}

/** `<select>` of the tenants the key may see, with an "all tenants" option. */
export async function tenantOptions(ctx: Ctx, selected: string, allLabel: string | null): Promise<HTMLOptionElement[]> {
  const { tenants } = await ctx.api.tenants(ctx.signal);
  return [
    ...(allLabel === null ? [] : [h('option', { value: '', selected: selected === '' }, allLabel)]),
    ...tenants.map((t) => h('option', { value: t.id, selected: selected === t.id }, t.id)),
  ];
}

export function link(href: string, ...children: Child[]): HTMLAnchorElement {
  return h('a', { href }, ...children);
}
