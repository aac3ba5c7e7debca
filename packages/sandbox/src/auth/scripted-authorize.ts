/**
 * Drives the sandbox's authorization endpoint the way a browser would, so tests and scripts can run the
 * authorization code flow without one: follow the redirects (`/authorize` → `/interaction/:uid` →
 * `/authorize/:uid` → the client's `redirect_uri`), carrying the cookies oidc-provider sets along the way,
 * and stop at the redirect to the client.
 *
 * Only meant for the sandbox, whose interactions approve themselves; a real EHR shows a login page instead.
 */

/** Redirects followed at most. The sandbox needs three. Default 10. */
export const DEFAULT_MAX_AUTHORIZE_REDIRECTS = 10;

/** Options of {@link scriptedAuthorize}. */
export interface ScriptedAuthorizeOptions {
  /** Replaceable fetch (tests, proxies). Default: the global `fetch`. */
  readonly fetch?: typeof fetch;
  /** Default {@link DEFAULT_MAX_AUTHORIZE_REDIRECTS}. */
  readonly maxRedirects?: number;
}

/** Where the flow ended. */
export type ScriptedAuthorizeResult =
  | {
      /** The authorization server redirected to the client's `redirect_uri`. */
      readonly outcome: 'redirect';
      readonly url: URL;
      readonly code: string | undefined;
      readonly state: string | undefined;
      /** OAuth error of the authorization response (`invalid_scope`, `access_denied`...). */
      readonly error: string | undefined;
      readonly errorDescription: string | undefined;
    }
  | {
      /** The server answered without redirecting (an error page), or the redirect limit was reached. */
      readonly outcome: 'stopped';
      readonly status: number;
      readonly body: string;
    };

/** Minimal cookie jar: names are unique across oidc-provider's paths, so paths are ignored. */
class CookieJar {
  readonly #cookies = new Map<string, string>();

  store(response: Response): void {
    for (const header of response.headers.getSetCookie()) {
      const [pair = '', ...attributes] = header.split(';');
      const eq = pair.indexOf('=');
      if (eq <= 0) continue;
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      const expires = attributes.map((a) => a.trim()).find((a) => a.toLowerCase().startsWith('expires='));
      const expired = expires !== undefined && Date.parse(expires.slice('expires='.length)) <= Date.now();
      if (value === '' || expired) this.#cookies.delete(name);
      else this.#cookies.set(name, value);
    }
  }

  header(): string {
    return [...this.#cookies].map(([name, value]) => `${name}=${value}`).join('; ');
  }
}

/**
 * Runs an authorization request to completion without a browser.
 *
 * @param authorizeUrl - the full authorization request URL (with `client_id`, `redirect_uri`, `scope`, PKCE...).
 * @returns the redirect to the client (with `code` or `error`), or where the flow stopped.
 */
export async function scriptedAuthorize(authorizeUrl: string | URL, options: ScriptedAuthorizeOptions = {}): Promise<ScriptedAuthorizeResult> {
  const doFetch = options.fetch ?? fetch;
  const maxRedirects = options.maxRedirects ?? DEFAULT_MAX_AUTHORIZE_REDIRECTS;
  let url = new URL(authorizeUrl);
  const redirectUri = url.searchParams.get('redirect_uri');
  // Without redirect_uri (allowed for clients with a single registered one), the first redirect that leaves the
  // authorization server's path (the directory of /authorize) is the one to the client.
  const serverPrefix = new URL('.', url).href;
  const reachedClient = (target: URL): boolean =>
    redirectUri !== null ? target.href.startsWith(redirectUri) : !target.href.startsWith(serverPrefix);
  const jar = new CookieJar();

  for (let hop = 0; ; hop++) {
    const cookie = jar.header();
    const response = await doFetch(url, { redirect: 'manual', headers: cookie === '' ? {} : { cookie } });
    jar.store(response);
    const location = response.headers.get('location');
    if (response.status < 300 || response.status >= 400 || location === null) {
      return { outcome: 'stopped', status: response.status, body: await response.text() };
    }
    await response.body?.cancel();
    url = new URL(location, url);
    if (reachedClient(url)) {
      const param = (name: string): string | undefined => url.searchParams.get(name) ?? undefined;
      return {
        outcome: 'redirect',
        url,
        code: param('code'),
        state: param('state'),
        error: param('error'),
        errorDescription: param('error_description'),
      };
    }
    if (hop + 1 >= maxRedirects) return { outcome: 'stopped', status: response.status, body: `stopped after ${maxRedirects} redirects` };
  }
}
