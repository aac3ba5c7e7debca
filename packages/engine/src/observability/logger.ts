/**
 * PHI-safe structured logs (pino). Two defences: log call sites pass ids, states and codes only (the events of
 * the client, broker and worker are built that way), and pino's `redact` removes the fields that could carry PHI
 * or secrets if a careless call site passed them anyway. Identifiers that operators need to correlate (business
 * keys, patient ids) are logged only as keyed-hash tokens ({@link IdentifierTokenizer}): stable per key, useless
 * without the key.
 */
import { createHmac } from 'node:crypto';
import pino, { type DestinationStream, type Logger, type LoggerOptions } from 'pino';

/** Field names removed from every log line, at any of the first levels of nesting. */
export const REDACTED_FIELDS = [
  'resource',
  'businessKey',
  'payload',
  'body',
  'identifier',
  'name',
  'birthDate',
  'address',
  'telecom',
  'note',
  'text',
  'authorization',
  'apiKey',
  'key',
  'secret',
  'clientSecret',
  'privateJwk',
  'accessToken',
  'refreshToken',
  'password',
] as const;

const REDACT_PATHS = REDACTED_FIELDS.flatMap((f) => [f, `*.${f}`, `*.*.${f}`]).concat(['req.headers.authorization', 'req.headers.cookie', 'req.headers["idempotency-key"]']);

export interface LoggerSettings {
  readonly level: string;
  /** Where lines go; default stdout. */
  readonly destination?: DestinationStream;
  /** Static fields on every line. */
  readonly base?: Record<string, unknown>;
}

export function createLogger(settings: LoggerSettings): Logger {
  const options: LoggerOptions = {
    level: settings.level,
    base: { service: 'tether', ...(settings.base ?? {}) },
    redact: { paths: REDACT_PATHS, remove: true },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
  };
  return settings.destination ? pino(options, settings.destination) : pino(options);
}

/** Turns identifiers into stable, non-reversible tokens for logs: `h:` + 16 hex of HMAC-SHA-256. */
export class IdentifierTokenizer {
  readonly #key: Buffer;
  constructor(key: Buffer) {
    if (key.length < 16) throw new Error('identifier token key too short');
    this.#key = key;
  }
  token(value: string): string {
    return `h:${createHmac('sha256', this.#key).update(value, 'utf8').digest('hex').slice(0, 16)}`;
  }
}

export type { Logger };
