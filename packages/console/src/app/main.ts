/**
 * The Tether console: sign-in, then hash-routed screens over the engine's API (same origin). The API key lives in
 * this tab's sessionStorage only; closing the tab or signing out forgets it.
 */
import './styles.css';
import { Api, ApiError, can, type Me } from './api.js';
import { h, mount } from './dom.js';
import { errorBox, type Ctx, type View } from './ui.js';
import { overviewView } from './views/overview.js';
import { commandDetailView, commandsView } from './views/commands.js';
import { submitView } from './views/submit.js';
import { exceptionDetailView, exceptionsView } from './views/exceptions.js';
import { sandboxView } from './views/sandbox.js';
import { tenantView } from './views/tenant.js';

const KEY_STORAGE = 'tether.console.apiKey';

const routes: readonly (readonly [RegExp, View])[] = [
  [/^\/(?:overview)?$/, overviewView],
  [/^\/commands$/, commandsView],
  [/^\/commands\/new$/, submitView],
  [/^\/commands\/([^/]+)$/, commandDetailView],
  [/^\/exceptions$/, exceptionsView],
  [/^\/exceptions\/([^/]+)$/, exceptionDetailView],
  [/^\/tenants\/([^/]+)$/, tenantView],
  [/^\/sandbox$/, sandboxView],
];

const app = document.getElementById('app') as HTMLElement;
let session: { api: Api; me: Me; sandbox: boolean } | undefined;
let current: AbortController | undefined;
let pendingFlash: string | undefined;
let layout: { main: HTMLElement; flash: HTMLElement; nav: HTMLElement } | undefined;

function parseHash(): { path: string; query: URLSearchParams } {
  const raw = location.hash.replace(/^#/, '') || '/overview';
  const [path = '/', search = ''] = raw.split('?', 2);
  return { path, query: new URLSearchParams(search) };
}

function signOut(message?: string): void {
  sessionStorage.removeItem(KEY_STORAGE);
  session = undefined;
  layout = undefined;
  current?.abort();
  renderSignIn(message ? new ApiError(401, 'API_UNAUTHENTICATED', message) : undefined);
}

function onUnauthenticated(error: ApiError): void {
  if (session) signOut(`Signed out: the API no longer accepts this key (${error.message}).`);
}

function renderSignIn(error?: unknown): void {
  document.title = 'Sign in · Tether console';
  const input = h('input', { id: 'api-key', name: 'api-key', type: 'password', required: true, autocomplete: 'off', spellcheck: 'false', 'aria-describedby': 'api-key-hint' });
  const status = h('div', { class: 'signin-status' }, error ? errorBox(error) : null);
  const button = h('button', { type: 'submit', class: 'primary' }, 'Sign in');
  const form = h('form', { class: 'card signin', 'aria-labelledby': 'signin-title' },
    h('h1', { id: 'signin-title' }, 'Tether console'),
    h('p', null, 'Sign in with an API key. The console shows and does what the key’s role allows.'),
    h('label', { for: 'api-key' }, 'API key'),
    input,
    h('p', { id: 'api-key-hint', class: 'hint' }, 'Kept in this browser tab only (sessionStorage), never in a cookie or on disk. ',
      h('code', null, 'tether start'), ' prints where the first admin key was written.'),
    button,
    status,
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const key = input.value.trim();
    button.disabled = true;
    mount(status, h('p', { class: 'hint' }, 'Checking the key…'));
    void signIn(key).then(
      () => undefined,
      (err: unknown) => {
        button.disabled = false;
        mount(status, errorBox(err, 'Sign-in failed.'));
        input.focus();
        input.select();
      },
    );
  });
  mount(app, h('main', { id: 'main', class: 'signin-page' }, form));
  input.focus();
}

async function signIn(key: string): Promise<void> {
  const api = new Api(key, onUnauthenticated);
  const me = await api.me();
  sessionStorage.setItem(KEY_STORAGE, key);
  // The Sandbox screen only where an embedded sandbox EHR runs (development) and the role may see it.
  const sandbox = can.operate(me.role) && (await api.sandbox().then(() => true, () => false));
  session = { api, me, sandbox };
  renderLayout();
  route();
}

function renderLayout(): void {
  if (!session) return;
  const { me, sandbox } = session;
  const main = h('main', { id: 'main', tabindex: -1 });
  const flash = h('div', { id: 'flash', role: 'status', 'aria-live': 'polite' });
  const nav = h('nav', { 'aria-label': 'Main' },
    h('a', { href: '#/overview', 'data-nav': '/overview' }, 'Overview'),
    h('a', { href: '#/commands', 'data-nav': '/commands' }, 'Commands'),
    can.submit(me.role) ? h('a', { href: '#/commands/new', 'data-nav': '/commands/new' }, 'Submit') : null,
    h('a', { href: '#/exceptions', 'data-nav': '/exceptions' }, 'Exceptions'),
    sandbox ? h('a', { href: '#/sandbox', 'data-nav': '/sandbox' }, 'Sandbox') : null,
  );
  const skip = h('a', { class: 'skip-link', href: '#main', onclick: (event: Event) => {
    event.preventDefault();
    main.focus();
  } }, 'Skip to content');
  const scope = me.tenants === null ? 'all tenants' : `tenants: ${me.tenants.join(', ')}`;
  mount(app,
    skip,
    h('header', { class: 'topbar' },
      h('a', { class: 'brand', href: '#/overview' }, 'Tether'),
      nav,
      h('div', { class: 'who' },
        h('span', { class: 'who-name' }, me.name),
        h('span', { class: `badge role role-${me.role}`, 'data-role': me.role }, me.role),
        h('span', { class: 'who-scope' }, scope),
        can.seePhi(me.role) ? h('span', { class: 'badge tone-warn', title: 'This role sees resources and business keys (PHI).' }, 'sees PHI') : h('span', { class: 'badge tone-muted', title: 'Resources and business keys are masked for this role.' }, 'PHI masked'),
        h('button', { type: 'button', class: 'ghost', onclick: () => signOut() }, 'Sign out'),
      ),
    ),
    flash,
    main,
  );
  layout = { main, flash, nav };
}

function route(): void {
  if (!session || !layout) return;
  const { path, query } = parseHash();
  current?.abort();
  const controller = new AbortController();
  current = controller;
  const { main, flash, nav } = layout;
  for (const a of nav.querySelectorAll('a')) {
    const target = a.getAttribute('data-nav') ?? '';
    const active = path === target || (target === '/commands' && /^\/commands\/(?!new$)/.test(path)) || (target === '/exceptions' && path.startsWith('/exceptions/'));
    if (active) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  mount(flash, pendingFlash ? h('p', { class: 'alert alert-ok' }, pendingFlash) : null);
  pendingFlash = undefined;
  main.replaceChildren();
  const api = session.api;
  const me = session.me;
  const ctx: Ctx = {
    api,
    me,
    signal: controller.signal,
    query,
    navigate: (hash) => {
      location.hash = hash;
    },
    flash: (message) => {
      pendingFlash = message;
    },
    notify: (message) => {
      if (!controller.signal.aborted) mount(flash, h('p', { class: 'alert alert-ok' }, message));
    },
  };
  const match = routes.map(([re, view]) => [re.exec(path), view] as const).find(([m]) => m !== null);
  const focusTitle = (): void => {
    const title = main.querySelector('h1');
    if (title) {
      document.title = `${title.textContent ?? ''} · Tether console`;
      if (!controller.signal.aborted) title.focus({ preventScroll: true });
    }
  };
  if (!match) {
    mount(main, h('h1', { tabindex: -1 }, 'Not found'), h('p', null, 'No screen at this address. ', h('a', { href: '#/overview' }, 'Go to the overview.')));
    focusTitle();
    return;
  }
  const [m, view] = match;
  const params = (m?.slice(1) ?? []).map((p) => decodeURIComponent(p ?? ''));
  Promise.resolve(view(main, ctx, params)).then(focusTitle, (err: unknown) => {
    if (controller.signal.aborted) return;
    mount(main, h('h1', { tabindex: -1 }, 'Something went wrong'), errorBox(err));
    focusTitle();
  });
}

window.addEventListener('hashchange', route);

async function boot(): Promise<void> {
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (!key) {
    renderSignIn();
    return;
  }
  try {
    await signIn(key);
  } catch (err) {
    sessionStorage.removeItem(KEY_STORAGE);
    renderSignIn(err);
  }
}

void boot();
