/** The HTTP API (fastify). The only entrance of this folder. See docs/api.md. */
export { buildApi, commandView, type ApiDeps, type ApiHelpers } from './app.js';
export { API_ROLES, ADMIN, ANY_ROLE, OPERATE, SUBMIT, Caller, authenticate, assertRole, createApiKey, hashApiKey, type RouteAccess } from './access.js';
export { consolePlugin, findConsoleDist, isConsoleRoute, CONSOLE_CSP } from './console.js';
