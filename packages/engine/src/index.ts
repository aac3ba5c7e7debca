export { buildCli, main, ExitCode, DEFAULT_DATA_DIR } from './cli/main.js';
export { signClientAssertion, requestBackendToken } from './cli/token.js';
export { loadOrCreateDemoClient, DEMO_CLIENT_ID, DEMO_CLIENT_SCOPE } from './cli/demo-client.js';
