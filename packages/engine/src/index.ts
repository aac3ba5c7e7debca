export { buildCli, main, ExitCode, DEFAULT_DATA_DIR } from './cli/main.js';
export { loadOrCreateDemoClient, DEMO_CLIENT_ID, DEMO_CLIENT_SCOPE } from './cli/demo-client.js';
export * from './auth/index.js';
export * from './store/index.js';
export type { TokenProvider } from './client/token-provider.js';
