/**
 * Builds the console into dist/ (index.html and hashed assets), which the engine serves at `/`. No CDN, no
 * external fonts: everything the page loads comes from the engine's origin.
 */
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';

export default defineConfig({
  root: fileURLToPath(new URL('.', import.meta.url)),
  // Relative asset URLs: the page works wherever the engine mounts it.
  base: './',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    // The engine's Content-Security-Policy allows no inline script; modern browsers need no preload polyfill.
    modulePreload: { polyfill: false },
    assetsInlineLimit: 0,
  },
  // `npm run dev -w @tether/console`: the API of an engine on :8080 behind Vite's dev server.
  server: { proxy: { '/v1': 'http://127.0.0.1:8080', '/healthz': 'http://127.0.0.1:8080' } },
});
