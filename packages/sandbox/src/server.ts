import { randomUUID } from 'node:crypto';
import { readFileSync, writeFileSync, renameSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { z } from 'zod';
import { operationOutcome, operationOutcomeFromError, TetherError, type ErrorCode } from '@tether/core';
import type { RefreshTokenMode, SandboxAuthServer, SandboxClientConfig } from './auth/types.js';
import { buildCapabilityStatement } from './fhir/capability.js';
import { ensureDefinitions } from './fhir/definitions.js';
import { FhirRest, resolveRoute, type RestResponse, type Route } from './fhir/rest.js';
import { MemoryStore, type Resource, type VersionRecord } from './fhir/store.js';
import { ValidationPool } from './fhir/validation-pool.js';
import { createFaultInjector } from './faults/injector.js';
import type { SeededFaultInjector } from './faults/injector.js';
import type { FaultPlan } from './faults/types.js';
import { Interaction, WRITE_INTERACTIONS } from './interactions.js';
import { parseSandboxProfile, type SandboxProfile } from './profile.js';
import { checkScope } from './scope-check.js';

/** FHIR base path on the sandbox server. */
export const FHIR_BASE_PATH = '/fhir/R4';
/** Path prefix of the OAuth 2 authorization server (its issuer). */
export const OAUTH_BASE_PATH = '/oauth';
/** Default access token lifetime (seconds). */
export const DEFAULT_TOKEN_TTL_SECONDS = 300;

/** One structured log line of the sandbox. Never contains resource content, tokens or identifiers. */
export interface SandboxLogLine {
  readonly msg: string;
  readonly [key: string]: unknown;
}

const optionsSchema = z
  .object({
    /** Interface to listen on. Loopback by default: the sandbox is a development and test tool. */
    host: z.string().default('127.0.0.1'),
    /** TCP port; 0 picks a free one. */
    port: z.number().int().min(0).max(65535).default(0),
    /** Seed of the fault injector's random sequence. */
    seed: z.number().int().min(0).max(0xffffffff).default(1),
    /** Fault profile (see docs/faults.md). */
    faults: z.unknown().optional(),
    /** Server behaviour switches (see SandboxProfile). */
    profile: z.unknown().optional(),
    /** Enforce bearer tokens on FHIR requests. */
    auth: z.boolean().default(true),
    /** OAuth clients (the `--clients` file). */
    clients: z.array(z.custom<SandboxClientConfig>((v) => typeof v === 'object' && v !== null)).default([]),
    /** Access token lifetime in seconds. */
    tokenTtlSeconds: z.number().int().positive().default(DEFAULT_TOKEN_TTL_SECONDS),
    /** Refresh token behaviour of the authorization code flows. */
    refreshTokenMode: z.enum(['rotate', 'keep', 'single-use']).default('rotate'),
    /**
     * Worker threads for structural validation of single creates and updates (0 = validate on the main thread).
     * One thread lets the sandbox use a second core; batches and transactions always validate on the main thread.
     */
    validationThreads: z.number().int().min(0).max(8).default(0),
    /** JSON file the store is loaded from at start and saved to at stop (and on POST /_admin/snapshot). */
    snapshotFile: z.string().optional(),
  })
  .strict();

export type SandboxOptions = z.input<typeof optionsSchema> & {
  /** Epoch-ms clock; tests replace it. */
  readonly clock?: () => number;
  /** Log sink; default: none. */
  readonly log?: (line: SandboxLogLine) => void;
};

export interface Sandbox {
  /** `http://127.0.0.1:<port>` */
  readonly url: string;
  /** `http://127.0.0.1:<port>/fhir/R4` */
  readonly fhirBaseUrl: string;
  /** The token endpoint (undefined when auth is off). */
  readonly tokenEndpoint: string | undefined;
  readonly port: number;
  readonly store: MemoryStore;
  readonly faults: SeededFaultInjector;
  readonly auth: SandboxAuthServer | undefined;
  readonly profile: SandboxProfile;
  /** Saves a snapshot now (when `snapshotFile` is set). */
  snapshot(): void;
  /** Stops accepting connections, closes open ones, saves the snapshot. */
  close(): Promise<void>;
}

/**
 * Starts the sandbox EHR: the FHIR R4 server, the OAuth 2 authorization server and the admin endpoints on one
 * HTTP server. Resolves once it listens.
 */
export async function startSandbox(input: SandboxOptions = {}): Promise<Sandbox> {
  const { clock = Date.now, log = () => {}, ...plain } = input;
  const parsed = optionsSchema.safeParse(plain);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new TetherError('CONFIG_INVALID', `Invalid sandbox option '${issue?.path.join('.') ?? ''}': ${issue?.message ?? ''}`);
  }
  const opts = Object.freeze(parsed.data);
  const profile = parseSandboxProfile(opts.profile);
  ensureDefinitions();

  const store = new MemoryStore();
  if (opts.snapshotFile) loadSnapshot(store, opts.snapshotFile);
  const faults = createFaultInjector({ profile: opts.faults ?? { faults: [] }, seed: opts.seed, clock, startedAt: clock() });
  const validation = opts.validationThreads > 0 ? await ValidationPool.start(opts.validationThreads) : undefined;

  let baseUrl = '';
  const rest = new FhirRest({
    store,
    profile,
    baseUrl: () => baseUrl,
    visibilityLagMs: (type, now) => faults.visibilityLagMs(type, now),
    onLagHit: (type) => {
      const info = faults.visibilityLag(type, clock());
      if (info) faults.record(info.faultId);
    },
    rejectedElements: (type, now) => faults.rejectedElements(type, now),
    onDriftHit: (element) => {
      const type = element.split('.')[0] ?? '';
      const info = faults.rejectedElementFaults(type, clock()).find((e) => e.element === element);
      if (info) faults.record(info.faultId);
    },
  });

  let auth: SandboxAuthServer | undefined;
  let tokenRequests = 0;
  const server: Server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      log({ msg: 'sandbox.internal_error', error: err instanceof Error ? err.name : 'unknown' });
      if (!res.headersSent && !res.destroyed) sendJson(res, 500, operationOutcome('INTERNAL'));
    });
  });
  server.keepAliveTimeout = 65_000;

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://sandbox.invalid');
    const path = url.pathname;
    if (path === OAUTH_BASE_PATH || path.startsWith(`${OAUTH_BASE_PATH}/`)) {
      if (!auth) return sendError(res, 'FHIR_NOT_FOUND', 'Authorization is off in this sandbox.');
      // Counted for tests and operators: "exactly one token request per expiry" is checked against this.
      if (path === `${OAUTH_BASE_PATH}/token` && req.method === 'POST') tokenRequests++;
      auth.handle(req, res);
      return;
    }
    if (path.startsWith('/_admin/')) return handleAdmin(req, res, path, url.searchParams);
    if (path === FHIR_BASE_PATH || path.startsWith(`${FHIR_BASE_PATH}/`)) {
      return handleFhir(req, res, path.slice(FHIR_BASE_PATH.length).replace(/^\//, ''), url.searchParams);
    }
    return sendError(res, 'FHIR_NOT_FOUND', 'No such endpoint.');
  }

  async function handleFhir(req: IncomingMessage, res: ServerResponse, subpath: string, query: URLSearchParams): Promise<void> {
    const started = clock();
    const requestId = headerValue(req, 'x-request-id') ?? randomUUID();
    res.setHeader('X-Request-Id', requestId);
    const method = (req.method ?? 'GET').toUpperCase();

    if (subpath === '.well-known/smart-configuration' && method === 'GET') {
      if (!auth) return sendError(res, 'FHIR_NOT_FOUND', 'Authorization is off in this sandbox.');
      return sendJson(res, 200, auth.smartConfiguration(), 'application/json');
    }
    const accept = headerValue(req, 'accept');
    const format = query.get('_format');
    if ((accept && !acceptsJson(accept)) || (format && !/json/.test(format))) {
      return sendError(res, 'FHIR_NOT_ACCEPTABLE', 'Only application/fhir+json is served.');
    }
    let route: Route;
    try {
      route = resolveRoute(method, subpath);
    } catch (err) {
      return sendThrown(res, err);
    }
    if (route.interaction === Interaction.Capabilities) {
      return sendJson(res, 200, buildCapabilityStatement({ baseUrl, profile, auth: auth !== undefined, smart: auth?.smartConfiguration() }));
    }

    const plan: FaultPlan = faults.plan({ method, resourceType: route.resourceType, interaction: route.interaction, now: clock() });
    // One log line per FHIR request, whatever path it took (answered, failed, reset or dropped by a fault).
    res.once('close', () => {
      log({
        msg: 'sandbox.request',
        method,
        interaction: route.interaction,
        resourceType: route.resourceType,
        status: res.writableFinished ? res.statusCode : 0,
        requestId,
        ms: clock() - started,
        ...(plan.fired.length > 0 ? { faults: plan.fired } : {}),
      });
    });
    if (plan.delayMs > 0) await sleep(plan.delayMs);
    if (plan.before) {
      return applyBeforeFault(req, res, plan);
    }

    const token = bearerToken(req);
    if (opts.auth && !auth) {
      return sendError(res, 'SERVICE_UNAVAILABLE', 'The sandbox is starting; try again.');
    }
    if (auth) {
      if (plan.revokeToken && token) await auth.revokeAccessToken(token);
      const verified = token ? await auth.verifyAccessToken(token) : null;
      if (!verified) {
        res.setHeader('WWW-Authenticate', `Bearer realm="tether-sandbox", error="invalid_token"`);
        return sendError(res, token ? 'AUTH_TOKEN_INVALID' : 'AUTH_TOKEN_MISSING');
      }
      let bodyRoutes: Route[] = [route];
      let body: unknown;
      if (route.interaction === Interaction.Transaction) {
        const read = await readBody(req, res);
        if (!read.ok) return;
        body = read.body;
        bodyRoutes = FhirRest.entryRoutes(body);
      }
      for (const r of bodyRoutes) {
        const denied = checkScope(verified.scope, r);
        if (denied) {
          res.setHeader('WWW-Authenticate', `Bearer realm="tether-sandbox", error="insufficient_scope", scope="${denied}"`);
          return sendError(res, 'AUTH_INSUFFICIENT_SCOPE', `The token has no scope that covers this interaction; needed: ${denied}.`);
        }
      }
      return execute(req, res, route, query, requestId, plan, body);
    }
    return execute(req, res, route, query, requestId, plan, undefined);
  }

  async function execute(
    req: IncomingMessage,
    res: ServerResponse,
    route: Route,
    query: URLSearchParams,
    requestId: string,
    plan: FaultPlan,
    preread: unknown,
  ): Promise<void> {
    let body = preread;
    const needsBody = route.interaction === Interaction.Create || route.interaction === Interaction.Update || route.interaction === Interaction.Transaction;
    let prevalidated = false;
    if (route.postSearch) {
      // POST [type]/_search: form-encoded parameters, merged with any in the URL.
      const form = await readForm(req, res);
      if (!form) return;
      for (const [k, v] of form) query.append(k, v);
    }
    if (needsBody && body === undefined) {
      const read = await readBody(req, res);
      if (!read.ok) return;
      body = read.body;
      const single = route.interaction === Interaction.Create || route.interaction === Interaction.Update;
      const resourceType = (body as { resourceType?: unknown } | null)?.resourceType;
      if (validation && single && resourceType === route.resourceType) {
        try {
          // A create ignores the client's id, so validate without it (as the in-thread path does).
          await validation.validate(route.interaction === Interaction.Create ? stripId(read.text, body) : read.text);
          prevalidated = true;
        } catch (err) {
          return sendThrown(res, err);
        }
      }
    }
    let effective = route;
    if (route.interaction === Interaction.Transaction) {
      const type = (body as { type?: unknown } | undefined)?.type;
      effective = { ...route, interaction: type === 'batch' ? Interaction.Batch : Interaction.Transaction };
    }
    let answer: RestResponse;
    try {
      answer = rest.execute(
        {
          method: (req.method ?? 'GET').toUpperCase(),
          path: '',
          query,
          headers: {
            ifMatch: headerValue(req, 'if-match'),
            ifNoneExist: headerValue(req, 'if-none-exist'),
            prefer: headerValue(req, 'prefer'),
          },
          body,
          requestId,
          now: clock(),
          prevalidated,
        },
        effective,
      );
    } catch (err) {
      return sendThrown(res, err);
    }
    if (plan.after && (answer.wrote || WRITE_INTERACTIONS.has(effective.interaction))) {
      if (plan.after.kind === 'drop') {
        res.socket?.destroy();
        return;
      }
      return sendError(res, 'FAULT_INJECTED_ERROR', 'Injected error after the request was applied.', plan.after.status);
    }
    for (const [k, v] of Object.entries(answer.headers ?? {})) res.setHeader(k, v);
    if (answer.body === undefined) {
      res.writeHead(answer.status);
      res.end();
      return;
    }
    sendJson(res, answer.status, answer.body, undefined, answer.json);
  }

  function applyBeforeFault(req: IncomingMessage, res: ServerResponse, plan: FaultPlan): void {
    const before = plan.before;
    if (!before) return;
    switch (before.kind) {
      case 'reset':
        req.socket.resetAndDestroy?.();
        if (!req.socket.destroyed) req.socket.destroy();
        return;
      case 'status':
        return sendError(res, 'FAULT_INJECTED_ERROR', 'Injected error before processing; nothing was applied.', before.status);
      case 'rate-limit':
        res.setHeader('Retry-After', String(before.retryAfterSeconds));
        return sendError(res, 'FAULT_RATE_LIMITED', 'Injected rate limit; nothing was applied.');
      case 'unauthorized':
        res.setHeader('WWW-Authenticate', `Bearer realm="tether-sandbox", error="invalid_token"`);
        return sendError(res, 'AUTH_TOKEN_INVALID', 'Injected early 401.');
    }
  }

  async function handleAdmin(req: IncomingMessage, res: ServerResponse, path: string, query: URLSearchParams): Promise<void> {
    const method = (req.method ?? 'GET').toUpperCase();
    try {
      if (path === '/_admin/write-log' && method === 'GET') {
        const since = Number(query.get('since') ?? 0) || 0;
        res.writeHead(200, { 'Content-Type': 'application/x-ndjson' });
        const lines = store.writeLog(since).map((e) => JSON.stringify(e));
        res.end(lines.length > 0 ? `${lines.join('\n')}\n` : '');
        return;
      }
      if (path === '/_admin/faults' && method === 'GET') return sendJson(res, 200, faults.profile(), 'application/json');
      if (path === '/_admin/faults' && method === 'POST') {
        const read = await readBody(req, res);
        if (!read.ok) return;
        faults.setProfile(read.body);
        log({ msg: 'sandbox.faults_changed' });
        return sendJson(res, 200, faults.profile(), 'application/json');
      }
      if (path === '/_admin/faults/stats' && method === 'GET') return sendJson(res, 200, faults.stats(), 'application/json');
      if (path === '/_admin/snapshot' && method === 'POST') {
        if (!opts.snapshotFile) throw new TetherError('CONFIG_INVALID', 'The sandbox was started without a snapshot file.');
        saveSnapshot(store, opts.snapshotFile);
        return sendJson(res, 200, { saved: true, resources: store.size }, 'application/json');
      }
      if (path === '/_admin/auth/stats' && method === 'GET') return sendJson(res, 200, { tokenRequests }, 'application/json');
      if (path === '/_admin/health' && method === 'GET') {
        return sendJson(res, 200, { status: 'ok', resources: store.size, profile: profile.name }, 'application/json');
      }
      return sendError(res, 'FHIR_NOT_FOUND', 'No such admin endpoint.');
    } catch (err) {
      return sendThrown(res, err);
    }
  }

  /**
   * Reads a request body of an accepted media type within the profile's size limit. On any problem it answers
   * the request itself (415, 413) and returns undefined.
   */
  async function readText(req: IncomingMessage, res: ServerResponse, accepted: RegExp, hint: string): Promise<string | undefined> {
    if (!accepted.test(headerValue(req, 'content-type') ?? '')) {
      sendError(res, 'FHIR_UNSUPPORTED_MEDIA_TYPE', hint);
      return undefined;
    }
    const limit = profile.maxBodyBytes;
    const tooLarge = (): undefined => {
      res.setHeader('Connection', 'close');
      sendError(res, 'FHIR_BODY_TOO_LARGE', `The body exceeds ${limit} bytes.`);
      return undefined;
    };
    if (Number(headerValue(req, 'content-length') ?? NaN) > limit) return tooLarge();
    const chunks: Buffer[] = [];
    let size = 0;
    try {
      for await (const chunk of req) {
        size += (chunk as Buffer).length;
        if (size > limit) return tooLarge();
        chunks.push(chunk as Buffer);
      }
    } catch {
      // The client went away while sending: nothing to answer.
      return undefined;
    }
    return Buffer.concat(chunks).toString('utf8');
  }

  async function readBody(req: IncomingMessage, res: ServerResponse): Promise<{ ok: true; body: unknown; text: string } | { ok: false }> {
    const text = await readText(req, res, /^application\/(fhir\+)?json\b/i, 'Send the body as application/fhir+json.');
    if (text === undefined) return { ok: false };
    try {
      return { ok: true, body: JSON.parse(text), text };
    } catch {
      sendError(res, 'FHIR_INVALID_JSON');
      return { ok: false };
    }
  }

  /** `POST [type]/_search`: form-encoded parameters. */
  async function readForm(req: IncomingMessage, res: ServerResponse): Promise<URLSearchParams | undefined> {
    const text = await readText(req, res, /^application\/x-www-form-urlencoded\b/i, 'POST _search needs an application/x-www-form-urlencoded body.');
    return text === undefined ? undefined : new URLSearchParams(text);
  }

  let port: number;
  let origin: string;
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(opts.port, opts.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    port = (server.address() as AddressInfo).port;
    const host = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
    origin = `http://${host}:${port}`;
    baseUrl = `${origin}${FHIR_BASE_PATH}`;
    if (opts.auth) {
      // Loaded on demand: oidc-provider (and Koa) are only needed when authorization is on. The issuer needs the
      // port, so this happens after listen; until it is ready FHIR requests get 503 (never an unauthenticated pass).
      const { createAuthorizationServer } = await import('./auth/authorization-server.js');
      auth = await createAuthorizationServer({
        issuer: `${origin}${OAUTH_BASE_PATH}`,
        clients: opts.clients,
        accessTokenTtlSeconds: opts.tokenTtlSeconds,
        refreshTokenMode: opts.refreshTokenMode as RefreshTokenMode,
        fhirBaseUrl: baseUrl,
      });
    }
  } catch (err) {
    server.closeAllConnections();
    server.close();
    await validation?.close();
    throw err;
  }
  log({ msg: 'sandbox.listening', url: origin, fhirBaseUrl: baseUrl, auth: opts.auth, profile: profile.name, seed: opts.seed });

  let closed = false;
  return {
    url: origin,
    fhirBaseUrl: baseUrl,
    tokenEndpoint: auth?.tokenEndpoint,
    port,
    store,
    faults,
    auth,
    profile,
    snapshot: () => {
      if (opts.snapshotFile) saveSnapshot(store, opts.snapshotFile);
    },
    async close() {
      if (closed) return;
      closed = true;
      const done = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await done;
      await auth?.close();
      await validation?.close();
      if (opts.snapshotFile) saveSnapshot(store, opts.snapshotFile);
      log({ msg: 'sandbox.closed' });
    },
  };
}

function stripId(text: string, body: unknown): string {
  const rec = body as Record<string, unknown>;
  if (!('id' in rec)) return text;
  const { id: _id, ...rest } = rec;
  return JSON.stringify(rest);
}

function headerValue(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function bearerToken(req: IncomingMessage): string | undefined {
  const h = headerValue(req, 'authorization');
  const m = h ? /^Bearer\s+(\S+)$/i.exec(h) : null;
  return m?.[1];
}

function acceptsJson(accept: string): boolean {
  return accept.split(',').some((part) => {
    const t = part.split(';')[0]?.trim().toLowerCase() ?? '';
    return t === '*/*' || t === 'application/*' || t === 'application/json' || t === 'application/fhir+json';
  });
}

function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  contentType = 'application/fhir+json; charset=utf-8',
  serialised?: string,
): void {
  const json = serialised ?? JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': contentType, 'Content-Length': Buffer.byteLength(json) });
  res.end(json);
}

function sendError(res: ServerResponse, code: ErrorCode, diagnostics?: string, status?: number): void {
  const err = new TetherError(code, diagnostics);
  sendJson(res, status ?? err.httpStatus, operationOutcome(code, diagnostics));
}

function sendThrown(res: ServerResponse, err: unknown): void {
  const { status, body } = operationOutcomeFromError(err);
  sendJson(res, status, body);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

interface SnapshotLine {
  resourceType: string;
  id: string;
  versionId: string;
  lastUpdated: number;
  method: VersionRecord['method'];
  resource: Resource | undefined;
}

function loadSnapshot(store: MemoryStore, file: string): void {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  const lines = text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as SnapshotLine);
  store.restore(lines);
}

/** Writes every version as NDJSON to a temporary file, then renames it over the old one (never half-written). */
function saveSnapshot(store: MemoryStore, file: string): void {
  const lines: string[] = [];
  for (const v of store.dump()) {
    const line: SnapshotLine = {
      resourceType: v.resourceType,
      id: v.id,
      versionId: v.versionId,
      lastUpdated: v.lastUpdated,
      method: v.method,
      resource: v.resource as Resource | undefined,
    };
    lines.push(JSON.stringify(line));
  }
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, lines.length > 0 ? `${lines.join('\n')}\n` : '');
  renameSync(tmp, file);
}
