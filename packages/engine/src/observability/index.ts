/** Logs, metrics and traces (DESIGN §10). The only entrance of this folder. See docs/operations.md. */
export { createLogger, IdentifierTokenizer, REDACTED_FIELDS, type Logger, type LoggerSettings } from './logger.js';
export { ServiceMetrics } from './metrics.js';
