/**
 * Serves the operator console (packages/console, built by Vite into its `dist/`) at `/`, from the API's origin, so
 * the page calls the API without CORS. The files are public (they hold no data); everything the console shows
 * comes from the key-protected API. The console routes by the URL fragment (`#/commands/…`), so no fallback route
 * is needed: only `/`, the files at the top of `dist/` and `/assets/*` are served, and unknown paths stay the API's
 * OperationOutcome 404.
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import fastifyStatic from '@fastify/static';
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { RouteAccess } from './access.js';

const PUBLIC: RouteAccess = { public: true };
const ONE_HOUR_MS = 3_600_000;
const ONE_YEAR_MS = 365 * 24 * ONE_HOUR_MS;

/**
 * What the console's page may do: scripts, styles and images from this origin only, API calls to this origin only,
 * no framing. (Vite's build has no inline script; the charts are SVG elements, not inline styles.)
 */
export const CONSOLE_CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

/** Paths the console is served at (the access test allows them as public). */
export const isConsoleRoute = (url: string): boolean => url === '/' || url === '/assets/*' || /^\/[^/]+\.(?:svg|ico|png|txt|webmanifest)$/.test(url);

/**
 * The built console of the `@tether/console` workspace package, when it was built (`npm run build`): its `dist/`
 * directory, or undefined. Resolved through the package, so it works from the engine's sources (tests) and from
 * its compiled `dist/` (the CLI) alike.
 */
export function findConsoleDist(): string | undefined {
  try {
    const dir = join(dirname(createRequire(import.meta.url).resolve('@tether/console/package.json')), 'dist');
    return existsSync(join(dir, 'index.html')) ? dir : undefined;
  } catch {
    return undefined;
  }
}

/**
 * A plugin for {@link buildApi}'s `plugins`: serves the console's files from `distDir` (which must hold
 * `index.html`). Hashed assets are cached for a year; `index.html` is revalidated on every load.
 */
export function consolePlugin(distDir: string): (app: FastifyInstance) => Promise<void> {
  if (!existsSync(join(distDir, 'index.html'))) throw new Error(`consolePlugin: ${distDir} holds no index.html (build the console first)`);
  const topFiles = readdirSync(distDir).filter((name) => name !== 'index.html' && isConsoleRoute(`/${name}`) && statSync(join(distDir, name)).isFile());

  return async (app) => {
    // Encapsulated: reply.sendFile stays inside, next to the copy @fastify/swagger-ui registers for /docs.
    await app.register(async (scope) => {
      await scope.register(fastifyStatic, { root: distDir, serve: false, dotfiles: 'deny', index: false });
      scope.addHook('onSend', async (_request, reply, payload) => {
        void reply
          .header('content-security-policy', CONSOLE_CSP)
          .header('x-content-type-options', 'nosniff')
          .header('referrer-policy', 'no-referrer')
          .header('x-frame-options', 'DENY');
        return payload;
      });
      const page = (reply: FastifyReply) => reply.header('cache-control', 'no-cache').sendFile('index.html', { cacheControl: false });
      const schema = { hide: true };
      scope.get('/', { config: { access: PUBLIC }, schema }, (_request, reply) => page(reply));
      scope.get<{ Params: { '*': string } }>('/assets/*', { config: { access: PUBLIC }, schema }, (request, reply) =>
        reply.sendFile(`assets/${request.params['*']}`, { maxAge: ONE_YEAR_MS, immutable: true }),
      );
      for (const name of topFiles) {
        scope.get(`/${name}`, { config: { access: PUBLIC }, schema }, (_request, reply) => reply.sendFile(name, { maxAge: ONE_HOUR_MS }));
      }
    });
  };
}
