/** The engine as a service: configuration, startup, the embedded demo. The only entrance of this folder. See docs/operations.md. */
export { startService, DEMO_TENANT_ID, DEMO_TENANT_SCOPES, type RunningService, type ServiceSeams } from './service.js';
export {
  loadServiceConfig,
  serviceConfigSchema,
  assertProductionConfig,
  assertProductionTenants,
  ENV_OVERRIDES,
  type ServiceConfig,
  type ServiceConfigInput,
  type LoadConfigOptions,
} from './config.js';
export { loadOrCreateDemoClient, DEMO_CLIENT_ID, DEMO_CLIENT_SCOPE, type DemoClientFile } from './demo-client.js';
export { runDoctor, type DoctorReport, type DoctorCheck, type WorkflowVerdict } from './doctor.js';
