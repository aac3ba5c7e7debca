/**
 * The HTTP API (fastify 5): tenants, commands, exceptions, API keys, stats, health, metrics, and the OpenAPI
 * document with its UI at /docs. Errors are FHIR OperationOutcome (`application/fhir+json`); request bodies are
 * size-limited; every route declares who may call it (see access.ts) and checks the key's tenant scope.
 *
 * Input is validated with the same zod schemas the library uses (`commandInputSchema`, `tenantInputSchema`), so
 * the API and `submitCommand` can never disagree; the OpenAPI document is generated from those schemas.
 */
import { randomUUID } from 'node:crypto';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest, type RouteOptions } from 'fastify';
import swagger from '@fastify/swagger';
import { SpanStatusCode, trace, type Span } from '@opentelemetry/api';
import swaggerUi from '@fastify/swagger-ui';
import { request } from 'undici';
import { z } from 'zod';
import { isTetherError, operationOutcomeFromError, TetherError } from '@tether/core';
import type { AuditLog } from '../audit/index.js';
import { tenantInputSchema, tenantUpdateSchema, type TenantService } from '../auth/index.js';
import type { EhrClient } from '../client/index.js';
import type { IdentifierTokenizer, Logger, ServiceMetrics } from '../observability/index.js';
import type { ApiRole, CommandRecord, CommandState, Store } from '../store/index.js';
import { COMMAND_STATE_VALUES } from '../store/index.js';
import { commandInputSchema, submitCommand, type ExceptionQueue, type SubmitDispatch } from '../writeback/index.js';
import { ADMIN, ANY_ROLE, API_ROLES, assertRole, authenticate, createApiKey, OPERATE, SUBMIT, type Caller, type RouteAccess } from './access.js';

/** What the API needs from the running service. */
export interface ApiDeps {
  readonly store: Store;
  readonly tenants: TenantService;
  readonly exceptions: ExceptionQueue;
  readonly client: EhrClient;
  readonly metrics: ServiceMetrics;
  readonly logger: Logger;
  readonly tokenizer: IdentifierTokenizer;
  readonly bodyLimitBytes: number;
  readonly metricsRequireAuth: boolean;
  /** Readiness: the store answers, workers run, not draining. */
  readonly readiness: () => Promise<{ ready: boolean; checks: Record<string, string> }>;
  /** The hash-chained audit log: operator actions are recorded in it; routes under /v1/audit read and verify it. */
  readonly audit?: AuditLog;
  /** Tenant diagnostics (`tether tenants doctor`): discovery, token, scopes, capabilities, verdicts. */
  readonly doctor?: (tenantId: string) => Promise<unknown>;
  /** The embedded sandbox EHR (development): its fault profile can be changed through the API. */
  readonly sandbox?: { readonly url: string; readonly fhirBaseUrl: string; readonly tenantId: string };
  /**
   * Sensitivity testing only (the chaos harness's `--broken ack-before-commit`): answers 202 BEFORE the command is
   * stored, and stores it a second later (a write-behind buffer), so a crash in between loses an acknowledged command. Deliberately wrong;
   * never set it anywhere else.
   */
  readonly unsafeBroken?: 'ack-before-commit';
  /** Called after a command was accepted (wakes the local workers). */
  readonly onSubmitted?: (commandId: string) => void;
  /** The local worker, to hand new commands to at submission when it has a free slot (`submitCommand`'s `dispatch`). */
  readonly dispatch?: SubmitDispatch;
  /** Extra routes (audit, console), registered with the same access rules. */
  readonly plugins?: readonly ((app: FastifyInstance, helpers: ApiHelpers) => Promise<void> | void)[];
  readonly version?: string;
}

/** What extra route modules get. */
export interface ApiHelpers {
  /** The authenticated caller of a request (routes that are not public only). */
  caller(request: FastifyRequest): Caller;
  /** Parses with zod; throws REQUEST_INVALID naming the field. */
  parse<S extends z.ZodType>(schema: S, value: unknown, where: string): z.output<S>;
  jsonSchema(schema: z.ZodType): Record<string, unknown>;
}

declare module 'fastify' {
  interface FastifyContextConfig {
    access?: RouteAccess;
  }
  interface FastifyRequest {
    tetherCaller?: Caller;
    tetherSpan?: Span;
  }
  interface FastifyInstance {
    /** Every route with its declared access (the access test enumerates them). */
    tetherRoutes: { method: string; url: string; access: RouteAccess }[];
  }
}

const FHIR_JSON = 'application/fhir+json; charset=utf-8';

/** What "saved" means for the state a submission answers with (docs/writeback.md). */
const savedText = (state: CommandState): string =>
  state === 'queued'
    ? 'queued: durable, not yet in the EHR'
    : state === 'in_flight'
      ? 'in_flight: durable, a worker is sending it to the EHR now'
      : state === 'verified'
        ? 'verified: in the EHR, read back and matching'
        : `${state}: durable; see the command's timeline`;

/** What the exception queue shows: commands a human must decide on (DESIGN §5; docs/writeback.md "needs attention"). */
export const EXCEPTION_STATES: readonly CommandState[] = ['needs_review', 'rejected'];

function parse<S extends z.ZodType>(schema: S, value: unknown, where: string): z.output<S> {
  const result = schema.safeParse(value);
  if (!result.success) {
    const issue = result.error.issues[0];
    // Path and rule only, never the value (it may be PHI).
    throw new TetherError('REQUEST_INVALID', `Invalid ${where}: '${issue?.path.join('.') ?? ''}' ${issue?.message ?? ''}`.trim());
  }
  return result.data;
}

const jsonSchema = (schema: z.ZodType): Record<string, unknown> => {
  const { $schema: _ignored, ...rest } = z.toJSONSchema(schema, { unrepresentable: 'any', io: 'input' }) as Record<string, unknown>;
  return rest;
};

const caller = (request: FastifyRequest): Caller => {
  if (!request.tetherCaller) throw new TetherError('API_UNAUTHENTICATED');
  return request.tetherCaller;
};

/** The API's view of a command: the resource and business key only for roles that see PHI. */
export function commandView(command: CommandRecord, who: Caller, tokenizer: IdentifierTokenizer): Record<string, unknown> {
  const { resource, businessKey, idempotencyKey, patientRef, payloadHash: _hash, ...rest } = command;
  return {
    ...rest,
    businessKey: who.seesPhi ? businessKey : tokenizer.token(businessKey),
    patientRef: who.seesPhi || patientRef === null ? patientRef : tokenizer.token(patientRef),
    idempotencyKey: who.seesPhi ? idempotencyKey : idempotencyKey === null ? null : tokenizer.token(idempotencyKey),
    resource: who.seesPhi ? resource : { resourceType: command.resourceType, masked: true },
  };
}

// ------------------------------------------------------------------------------------------------ schemas

const apiCommandSchema = commandInputSchema.omit({ idempotencyKey: true, requestedBy: true }).extend({
  /** Who asked (a user or system id of the caller's, no PHI). Default: the API key id. */
  requestedBy: z.string().min(1).max(255).optional(),
});

const idParams = z.object({ id: z.string().min(1).max(128) }).strict();
const states = z.enum(COMMAND_STATE_VALUES as unknown as [CommandState, ...CommandState[]]);
const listQuery = z
  .object({
    tenant: z.string().min(1).max(255).optional(),
    state: z.union([states, z.string().regex(/^[a-z_]+(,[a-z_]+)*$/)]).optional(),
    limit: z.coerce.number().int().min(1).max(1_000).default(100),
  })
  .strict();
const operatorActionBody = z.object({ reason: z.string().min(1).max(2_000) }).strict();
const newKeyBody = z
  .object({
    name: z.string().min(1).max(200),
    role: z.enum(API_ROLES as unknown as [ApiRole, ...ApiRole[]]),
    tenants: z.array(z.string().min(1).max(255)).max(1_000).nullable().default(null),
  })
  .strict();
const tenantPatchSchema = tenantUpdateSchema;

function parseStates(state: string | undefined): CommandState[] | undefined {
  if (state === undefined) return undefined;
  return state.split(',').map((s) => parse(states, s, 'query parameter state'));
}

// ------------------------------------------------------------------------------------------------ app

export async function buildApi(deps: ApiDeps): Promise<FastifyInstance> {
  const app: FastifyInstance = Fastify({
    loggerInstance: deps.logger as unknown as FastifyBaseLogger,
    // Our own onResponse line replaces fastify's (which would log the raw URL).
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: deps.bodyLimitBytes,
    genReqId: (req) => {
      const given = req.headers['x-request-id'];
      return typeof given === 'string' && /^[A-Za-z0-9._:-]{1,128}$/.test(given) ? given : randomUUID();
    },
    // Query strings are parsed by fastify; arrays and nested objects are not part of this API.
    routerOptions: { ignoreTrailingSlash: true },
  });
  const helpers: ApiHelpers = { caller, parse, jsonSchema };

  // The API validates with zod in the handlers; the route schemas exist for the OpenAPI document only.
  app.setValidatorCompiler(() => () => true);
  app.setSerializerCompiler(() => (data) => JSON.stringify(data));

  app.addContentTypeParser(['application/fhir+json'], { parseAs: 'string' }, (req, body, done) => {
    void app.getDefaultJsonParser('error', 'error')(req, body as string, done);
  });

  // Every route must say who may call it; swagger-ui's own routes are the public documentation.
  const registered: { method: string; url: string; access: RouteAccess }[] = [];
  app.decorate('tetherRoutes', registered);
  app.addHook('onRoute', (route: RouteOptions) => {
    if (route.url.startsWith('/docs')) route.config = { ...(route.config ?? {}), access: { public: true } };
    const access = route.config?.access;
    if (!access) throw new Error(`route ${String(route.method)} ${route.url} declares no access`);
    for (const method of [route.method].flat()) if (method !== 'HEAD') registered.push({ method, url: route.url, access });
  });

  // One OpenTelemetry span per request (a no-op until the host registers an SDK). Attributes never hold PHI.
  const tracer = trace.getTracer('tether');
  app.addHook('onRequest', async (request, reply) => {
    const route = request.routeOptions.url ?? 'unmatched';
    request.tetherSpan = tracer.startSpan(`tether.api ${request.method} ${route}`, {
      attributes: { 'http.request.method': request.method, 'http.route': route, 'tether.request_id': request.id },
    });
    reply.header('x-request-id', request.id);
    const access = request.routeOptions.config.access;
    if (!access || 'public' in access) return;
    const who = await authenticate(deps.store, request.headers.authorization);
    assertRole(who, access.roles);
    request.tetherCaller = who;
  });

  app.addHook('onResponse', async (request, reply) => {
    const route = request.routeOptions.url ?? 'unmatched';
    const span = request.tetherSpan;
    if (span) {
      span.setAttribute('http.response.status_code', reply.statusCode);
      if (request.tetherCaller) span.setAttribute('tether.actor', request.tetherCaller.actor);
      if (reply.statusCode >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
      span.end();
    }
    deps.metrics.apiRequests.inc({ route, method: request.method, status: String(reply.statusCode) });
    request.log.info(
      { method: request.method, route, status: reply.statusCode, ms: Math.round(reply.elapsedTime), actor: request.tetherCaller?.actor },
      'api request',
    );
  });

  app.setErrorHandler((error, request, reply) => {
    let err: unknown = error;
    const code = (error as { code?: string }).code;
    if (!isTetherError(error)) {
      if (code === 'FST_ERR_CTP_BODY_TOO_LARGE') err = new TetherError('REQUEST_TOO_LARGE');
      else if (code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') err = new TetherError('UNSUPPORTED_MEDIA_TYPE');
      else if (code === 'FST_ERR_CTP_EMPTY_JSON_BODY') err = new TetherError('REQUEST_INVALID', 'The request body is empty.');
      else if (code === 'FST_ERR_CTP_INVALID_JSON_BODY' || error instanceof SyntaxError) err = new TetherError('REQUEST_INVALID', 'The request body is not valid JSON.');
      else if (typeof (error as { statusCode?: number }).statusCode === 'number' && (error as { statusCode: number }).statusCode < 500) {
        err = new TetherError('REQUEST_INVALID', 'The request is malformed.');
      }
    }
    const { status, body } = operationOutcomeFromError(err);
    if (status >= 500) request.log.error({ code: isTetherError(err) ? err.code : 'INTERNAL', errName: (error as Error).name }, 'api error');
    if (isTetherError(err) && err.code === 'API_UNAUTHENTICATED') reply.header('www-authenticate', 'Bearer realm="tether"');
    void reply.status(status).type(FHIR_JSON).send(body);
  });

  app.setNotFoundHandler((request, reply) => {
    const { status, body } = operationOutcomeFromError(new TetherError('API_NOT_FOUND', `No route ${request.method} ${request.url.split('?')[0] ?? ''}.`));
    void reply.status(status).type(FHIR_JSON).send(body);
  });

  await app.register(swagger, {
    openapi: {
      info: {
        title: 'Tether API',
        version: deps.version ?? '0.1.0',
        description: 'Durable write-back to EHRs: submit commands, follow them to verified, operate the exception queue. Errors are FHIR OperationOutcome.',
      },
      components: { securitySchemes: { apiKey: { type: 'http', scheme: 'bearer', description: 'Authorization: Bearer <API key>' } } },
      security: [{ apiKey: [] }],
    },
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });

  const r = <P = unknown, Q = unknown, B = unknown>(
    method: 'GET' | 'POST' | 'PATCH' | 'DELETE',
    url: string,
    access: RouteAccess,
    doc: { summary: string; tags: string[]; body?: z.ZodType; querystring?: z.ZodType; status?: number },
    handler: (request: FastifyRequest<{ Params: P; Querystring: Q; Body: B }>, reply: FastifyReply) => Promise<unknown>,
  ): void => {
    app.route({
      method,
      url,
      config: { access },
      schema: {
        summary: doc.summary,
        tags: doc.tags,
        ...('public' in access ? { security: [] } : { description: `Roles: ${access.roles.join(', ')}.` }),
        ...(doc.body ? { body: jsonSchema(doc.body) } : {}),
        ...(doc.querystring ? { querystring: jsonSchema(doc.querystring) } : {}),
      },
      handler: handler as (request: FastifyRequest, reply: FastifyReply) => Promise<unknown>,
    });
  };

  /** Records an operator action in the audit chain (who: the API key id; never PHI in details). */
  const audited = async (who: Caller, action: string, subject: { tenantId: string | null; type: string; id: string }, details: Record<string, string | number | boolean | null> = {}): Promise<void> => {
    await deps.audit?.record({
      actor: `${who.role === 'operator' || who.role === 'admin' ? 'operator' : 'api'}:${who.actor}`,
      action,
      tenantId: subject.tenantId,
      subjectType: subject.type,
      subjectId: subject.id,
      outcome: 'success',
      details: { role: who.role, ...details },
    });
  };

  // ---------------------------------------------------------------------------------------------- health
  r('GET', '/healthz', { public: true }, { summary: 'Liveness: the process answers.', tags: ['health'] }, async () => ({ status: 'ok' }));
  r('GET', '/readyz', { public: true }, { summary: 'Readiness: store reachable, workers running, not draining.', tags: ['health'] }, async (_req, reply) => {
    const result = await deps.readiness();
    void reply.status(result.ready ? 200 : 503);
    return { status: result.ready ? 'ready' : 'not_ready', checks: result.checks };
  });
  r('GET', '/metrics', deps.metricsRequireAuth ? { roles: ANY_ROLE } : { public: true }, { summary: 'Prometheus metrics.', tags: ['health'] }, async (_req, reply) => {
    await deps.metrics.collect(deps.store);
    void reply.type(deps.metrics.registry.contentType);
    return deps.metrics.registry.metrics();
  });

  // ---------------------------------------------------------------------------------------------- me
  r('GET', '/v1/me', { roles: ANY_ROLE }, { summary: 'The calling API key: id, name, role, tenant scope.', tags: ['keys'] }, async (request) => {
    const { keyHash: _h, ...key } = caller(request).key;
    return key;
  });

  // ---------------------------------------------------------------------------------------------- commands
  r<unknown, unknown, unknown>(
    'POST',
    '/v1/commands',
    { roles: SUBMIT },
    { summary: 'Submit a command. 202 once it is durable (state queued, or in_flight when a worker took it at once). Idempotency-Key header: same key and payload return the original; another payload 422; still being accepted 409.', tags: ['commands'], body: apiCommandSchema, status: 202 },
    async (request, reply) => {
      const who = caller(request);
      const body = parse(apiCommandSchema, request.body, 'command');
      who.assertTenant(body.tenantId);
      const header = request.headers['idempotency-key'];
      if (header !== undefined && (typeof header !== 'string' || header.length === 0 || header.length > 255)) {
        throw new TetherError('REQUEST_INVALID', 'The Idempotency-Key header must be 1-255 characters.');
      }
      const input = { ...body, requestedBy: body.requestedBy ?? `apikey:${who.actor}`, ...(header ? { idempotencyKey: header } : {}) };
      if (deps.unsafeBroken === 'ack-before-commit') {
        const id = randomUUID();
        setTimeout(() => {
          submitCommand(deps.store, input, { newId: () => id }).catch((err: unknown) => request.log.error({ code: isTetherError(err) ? err.code : 'INTERNAL' }, 'broken ack-before-commit: late insert failed'));
        }, 1_000).unref();
        void reply.status(202).header('location', `/v1/commands/${id}`);
        return { id, state: 'queued', created: true, generation: 1, saved: 'queued: durable, not yet in the EHR' };
      }
      const result = await submitCommand(deps.store, input, deps.dispatch ? { dispatch: deps.dispatch } : {});
      deps.metrics.commandsSubmitted.inc({ tenant: body.tenantId, resource: body.resourceType, result: result.created ? 'created' : 'replay' });
      if (result.created) deps.onSubmitted?.(result.id);
      request.log.info({ commandId: result.id, tenant: body.tenantId, created: result.created }, 'command accepted');
      request.tetherSpan?.setAttributes({ 'tether.command_id': result.id, 'tether.tenant': body.tenantId });
      void reply
        .status(202)
        .header('location', `/v1/commands/${result.id}`)
        .header('x-correlation-id', result.id);
      if (!result.created) void reply.header('idempotent-replayed', 'true');
      return { id: result.id, state: result.state, created: result.created, generation: result.generation, saved: savedText(result.state) };
    },
  );

  r<unknown, { tenant?: string; state?: string; limit?: number }>(
    'GET',
    '/v1/commands',
    { roles: ANY_ROLE },
    { summary: 'List commands (oldest first), by tenant and states (comma separated).', tags: ['commands'], querystring: listQuery },
    async (request) => {
      const who = caller(request);
      const q = parse(listQuery, request.query, 'query');
      if (q.tenant) who.assertTenant(q.tenant);
      const statesFilter = parseStates(q.state);
      const tenants = q.tenant ? [q.tenant] : who.key.tenants;
      const lists = tenants === null
        ? [await deps.store.commands.list({ ...(statesFilter ? { states: statesFilter } : {}), limit: q.limit })]
        : await Promise.all(tenants.map((tenantId) => deps.store.commands.list({ tenantId, ...(statesFilter ? { states: statesFilter } : {}), limit: q.limit })));
      const commands = lists.flat().sort((a, b) => a.createdAt - b.createdAt).slice(0, q.limit);
      return { commands: commands.map((c) => commandView(c, who, deps.tokenizer)) };
    },
  );

  r<{ id: string }>('GET', '/v1/commands/:id', { roles: ANY_ROLE }, { summary: 'A command: state, timeline of attempts, events.', tags: ['commands'] }, async (request) => {
    const who = caller(request);
    const { id } = parse(idParams, request.params, 'path');
    const command = await deps.store.commands.get(id);
    if (!command || !who.allowsTenant(command.tenantId)) throw new TetherError('COMMAND_NOT_FOUND');
    const [attempts, events] = await Promise.all([deps.store.commands.attempts(id), deps.store.commands.events(id)]);
    return {
      command: commandView(command, who, deps.tokenizer),
      attempts,
      events: events.map((e) => (who.seesPhi || !e.kind.startsWith('operator:') ? e : { ...e, reason: e.reason === null ? null : '(hidden)' })),
    };
  });

  r<{ id: string }, unknown, unknown>(
    'POST',
    '/v1/commands/:id/cancel',
    { roles: OPERATE },
    { summary: 'Cancel a command that is waiting or in the exception queue.', tags: ['commands'], body: operatorActionBody },
    async (request) => {
      const who = caller(request);
      const { id } = parse(idParams, request.params, 'path');
      await assertCommandTenant(id, who);
      const body = parse(operatorActionBody, request.body, 'body');
      const next = await deps.exceptions.cancel(id, { actor: who.actor, reason: body.reason });
      return { command: commandView(next, who, deps.tokenizer) };
    },
  );

  async function assertCommandTenant(id: string, who: Caller): Promise<CommandRecord> {
    const command = await deps.store.commands.get(id);
    if (!command || !who.allowsTenant(command.tenantId)) throw new TetherError('COMMAND_NOT_FOUND');
    return command;
  }

  // ---------------------------------------------------------------------------------------------- exceptions
  r<unknown, { tenant?: string; limit?: number }>(
    'GET',
    '/v1/exceptions',
    { roles: ANY_ROLE },
    { summary: 'The exception queue: commands that need a human (needs_review, and rejected by the EHR), oldest first.', tags: ['exceptions'], querystring: listQuery },
    async (request) => {
      const who = caller(request);
      const q = parse(listQuery.omit({ state: true }), request.query, 'query');
      if (q.tenant) who.assertTenant(q.tenant);
      const tenants = q.tenant ? [q.tenant] : who.key.tenants;
      const filter = { states: EXCEPTION_STATES, limit: q.limit };
      const lists = tenants === null ? [await deps.store.commands.list(filter)] : await Promise.all(tenants.map((tenantId) => deps.store.commands.list({ ...filter, tenantId })));
      return { exceptions: lists.flat().sort((a, b) => a.createdAt - b.createdAt).slice(0, q.limit).map((c) => commandView(c, who, deps.tokenizer)) };
    },
  );

  r<{ id: string }>('GET', '/v1/exceptions/:id', { roles: ANY_ROLE }, { summary: "One exception with its full context and the EHR's current state.", tags: ['exceptions'] }, async (request) => {
    const who = caller(request);
    const { id } = parse(idParams, request.params, 'path');
    await assertCommandTenant(id, who);
    const detail = await deps.exceptions.show(id);
    return {
      ...detail,
      command: commandView(detail.command, who, deps.tokenizer),
      events: detail.events.map((e) => (who.seesPhi || !e.kind.startsWith('operator:') ? e : { ...e, reason: e.reason === null ? null : '(hidden)' })),
    };
  });

  for (const action of ['retry', 'resolve', 'cancel'] as const) {
    r<{ id: string }, unknown, unknown>(
      'POST',
      `/v1/exceptions/:id/${action}`,
      { roles: OPERATE },
      {
        summary: { retry: 'Retry: back to queued with a fresh budget (the next attempt reconciles first).', resolve: 'Resolve: the EHR has it; mark verified.', cancel: 'Cancel: drop the intent.' }[action],
        tags: ['exceptions'],
        body: operatorActionBody,
      },
      async (request) => {
        const who = caller(request);
        const { id } = parse(idParams, request.params, 'path');
        await assertCommandTenant(id, who);
        const body = parse(operatorActionBody, request.body, 'body');
        const next = await deps.exceptions[action](id, { actor: who.actor, reason: body.reason });
        if (action === 'retry') deps.onSubmitted?.(id);
        return { command: commandView(next, who, deps.tokenizer) };
      },
    );
  }

  // ---------------------------------------------------------------------------------------------- tenants
  r('GET', '/v1/tenants', { roles: ANY_ROLE }, { summary: 'Tenants the key may see (secrets are never returned).', tags: ['tenants'] }, async (request) => {
    const who = caller(request);
    return { tenants: (await deps.tenants.list()).filter((t) => who.allowsTenant(t.id)) };
  });

  r<unknown, unknown, unknown>('POST', '/v1/tenants', { roles: ADMIN }, { summary: 'Register a tenant (secrets are encrypted and write-only).', tags: ['tenants'], body: tenantInputSchema }, async (request, reply) => {
    const who = caller(request);
    const body = request.body as { id?: unknown } | undefined;
    if (typeof body?.id === 'string') who.assertTenant(body.id);
    const tenant = await deps.tenants.register(body as never);
    await audited(who, 'tenant.registered', { tenantId: tenant.id, type: 'tenant', id: tenant.id }, { vendor: tenant.vendor, environment: tenant.environment, authMethod: tenant.authMethod });
    void reply.status(201).header('location', `/v1/tenants/${tenant.id}`);
    return tenant;
  });

  r<{ id: string }>('GET', '/v1/tenants/:id', { roles: ANY_ROLE }, { summary: 'One tenant.', tags: ['tenants'] }, async (request) => {
    const who = caller(request);
    const { id } = parse(idParams, request.params, 'path');
    who.assertTenant(id);
    return deps.tenants.get(id);
  });

  r<{ id: string }, unknown, unknown>('PATCH', '/v1/tenants/:id', { roles: ADMIN }, { summary: 'Update a tenant (secrets write-only).', tags: ['tenants'], body: tenantPatchSchema }, async (request) => {
    const who = caller(request);
    const { id } = parse(idParams, request.params, 'path');
    who.assertTenant(id);
    const patch = parse(tenantPatchSchema, request.body, 'tenant patch');
    const updated = await deps.tenants.update(id, patch);
    // Which settings changed, never their values (secrets and URLs stay out of the chain).
    await audited(who, 'tenant.updated', { tenantId: id, type: 'tenant', id }, { fields: Object.keys(patch).sort().join(',') });
    return updated;
  });

  r<{ id: string }, unknown, unknown>('POST', '/v1/tenants/:id/resume', { roles: OPERATE }, { summary: 'Resume a paused tenant after fixing its credentials.', tags: ['tenants'] }, async (request) => {
    const who = caller(request);
    const { id } = parse(idParams, request.params, 'path');
    who.assertTenant(id);
    const resumed = await deps.tenants.resume(id);
    await audited(who, 'tenant.resumed', { tenantId: id, type: 'tenant', id });
    return resumed;
  });

  r<{ id: string }>('GET', '/v1/tenants/:id/health', { roles: ANY_ROLE }, { summary: 'Tenant health: auth state, granted scopes, breaker, recent rate limiting, queue depth and oldest age.', tags: ['tenants'] }, async (request) => {
    const who = caller(request);
    const { id } = parse(idParams, request.params, 'path');
    who.assertTenant(id);
    const tenant = await deps.tenants.get(id);
    const now = Date.now();
    const [token, queue, categories] = await Promise.all([
      deps.store.tokens.get(id, 'system'),
      deps.store.commandStats.queue(),
      deps.store.commandStats.attemptCategories(now - 15 * 60_000),
    ]);
    const mine = queue.filter((q) => q.tenantId === id);
    const open = mine.filter((q) => ['queued', 'retry_wait', 'in_flight', 'unknown', 'acknowledged', 'conflict'].includes(q.state) && q.oldestCreatedAt !== null);
    const oldest = open.length > 0 ? Math.min(...open.map((q) => q.oldestCreatedAt as number)) : null;
    const recent = categories.filter((c) => c.tenantId === id);
    return {
      tenant: tenant.id,
      vendor: tenant.vendor,
      auth: {
        state: tenant.state,
        stateReason: tenant.stateReason,
        grantedScopes: token?.scope ?? null,
        requestedScopes: tenant.scopes,
        accessTokenExpiresAt: token?.accessExpiresAt ?? null,
      },
      breaker: deps.client.circuitState(tenant.id, tenant.fhirBaseUrl),
      rateLimit: { rateLimitedAttemptsLast15m: recent.filter((c) => c.outcome === 'rate_limited').reduce((n, c) => n + c.count, 0) },
      queue: {
        byState: Object.fromEntries(mine.map((q) => [q.state, q.count])),
        oldestOpenAgeSeconds: oldest === null ? null : Math.round((now - oldest) / 1000),
        exceptions: mine.filter((q) => EXCEPTION_STATES.includes(q.state)).reduce((n, q) => n + q.count, 0),
      },
      attemptsLast15m: recent.map(({ outcome, errorCategory, count }) => ({ outcome, errorCategory, count })),
    };
  });

  r<{ id: string }, unknown, unknown>(
    'POST',
    '/v1/tenants/:id/doctor',
    { roles: OPERATE },
    { summary: 'Diagnose a tenant: SMART discovery, a token, granted scopes, the CapabilityStatement, and what will and will not work per resource type and action.', tags: ['tenants'] },
    async (request) => {
      const who = caller(request);
      const { id } = parse(idParams, request.params, 'path');
      who.assertTenant(id);
      if (!deps.doctor) throw new TetherError('SERVICE_UNAVAILABLE', 'Diagnostics are not available in this process.');
      await deps.tenants.get(id);
      return deps.doctor(id);
    },
  );

  // ---------------------------------------------------------------------------------------------- stats
  r('GET', '/v1/stats', { roles: ANY_ROLE }, { summary: 'Overview for dashboards: queue per tenant and state, verified per minute (30 min), attempts by category (15 min).', tags: ['stats'] }, async (request) => {
    const who = caller(request);
    const now = Date.now();
    const [queue, verified, categories, tenants] = await Promise.all([
      deps.store.commandStats.queue(),
      deps.store.commandStats.verifiedPerMinute(now - 30 * 60_000),
      deps.store.commandStats.attemptCategories(now - 15 * 60_000),
      deps.store.tenants.list(),
    ]);
    const visible = (t: { tenantId: string }) => who.allowsTenant(t.tenantId);
    return {
      now,
      tenants: tenants.filter((t) => who.allowsTenant(t.id)).map((t) => ({ id: t.id, vendor: t.vendor, state: t.state, breaker: deps.client.circuitState(t.id, t.fhirBaseUrl) })),
      queue: queue.filter(visible),
      verifiedPerMinute: verified.filter(visible),
      attempts: categories.filter(visible),
    };
  });

  // ---------------------------------------------------------------------------------------------- sandbox
  // Development only: the embedded sandbox EHR's fault injection, so the walkthrough and the console can make the
  // EHR misbehave. Answers 404 when no embedded sandbox runs (always so in production mode).
  const sandboxAdmin = async (method: 'GET' | 'POST', path: string, body?: unknown): Promise<{ status: number; body: unknown }> => {
    if (!deps.sandbox) throw new TetherError('API_NOT_FOUND', 'No embedded sandbox EHR runs in this process.');
    const res = await request(`${deps.sandbox.url}${path}`, {
      method,
      ...(body !== undefined ? { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } } : {}),
    });
    return { status: res.statusCode, body: await res.body.json() };
  };
  r('GET', '/v1/sandbox', { roles: OPERATE }, { summary: 'The embedded sandbox EHR (development): its FHIR base URL, fault profile and fault statistics.', tags: ['sandbox'] }, async (request) => {
    if (deps.sandbox) caller(request).assertTenant(deps.sandbox.tenantId);
    const [faults, stats] = await Promise.all([sandboxAdmin('GET', '/_admin/faults'), sandboxAdmin('GET', '/_admin/faults/stats')]);
    return { fhirBaseUrl: deps.sandbox?.fhirBaseUrl, faults: faults.body, stats: stats.body };
  });
  r<unknown, unknown, unknown>(
    'POST',
    '/v1/sandbox/faults',
    { roles: ADMIN },
    { summary: "Replace the embedded sandbox EHR's fault profile (docs/faults.md); `{\"faults\": []}` switches faults off.", tags: ['sandbox'] },
    async (request, reply) => {
      if (deps.sandbox) caller(request).assertTenant(deps.sandbox.tenantId);
      const res = await sandboxAdmin('POST', '/_admin/faults', request.body ?? {});
      if (res.status >= 400) {
        const text = JSON.stringify(res.body);
        throw new TetherError('REQUEST_INVALID', `The sandbox refused the fault profile: ${text.length > 500 ? `${text.slice(0, 500)}...` : text}`);
      }
      const faults = (request.body as { faults?: unknown[] } | undefined)?.faults;
      await audited(caller(request), 'sandbox.faults_changed', { tenantId: deps.sandbox?.tenantId ?? null, type: 'sandbox', id: 'faults' }, { faults: Array.isArray(faults) ? faults.length : 0 });
      void reply.status(200);
      return res.body;
    },
  );

  // ---------------------------------------------------------------------------------------------- audit
  const auditQuery = z
    .object({
      tenant: z.string().min(1).max(255).optional(),
      actor: z.string().min(1).max(255).optional(),
      action: z.string().min(1).max(100).optional(),
      subjectType: z.string().min(1).max(64).optional(),
      subjectId: z.string().min(1).max(255).optional(),
      afterSeq: z.coerce.number().int().min(0).optional(),
      limit: z.coerce.number().int().min(1).max(1_000).default(100),
    })
    .strict();
  const needAudit = (): AuditLog => {
    if (!deps.audit) throw new TetherError('SERVICE_UNAVAILABLE', 'The audit log is not available in this process.');
    return deps.audit;
  };
  r<unknown, Record<string, string>>(
    'GET',
    '/v1/audit',
    { roles: OPERATE },
    { summary: 'Audit records in chain order (filter by tenant, actor, action or its dotted prefix, subject; page with afterSeq).', tags: ['audit'], querystring: auditQuery },
    async (request) => {
      const who = caller(request);
      const q = parse(auditQuery, request.query, 'query');
      if (q.tenant) who.assertTenant(q.tenant);
      else if (who.key.tenants !== null) throw new TetherError('API_FORBIDDEN', 'A key limited to tenants must name one (?tenant=).');
      const records = await needAudit().query({
        ...(q.tenant ? { tenantId: q.tenant } : {}),
        ...(q.actor ? { actor: q.actor } : {}),
        ...(q.action ? { action: q.action } : {}),
        ...(q.subjectType ? { subjectType: q.subjectType } : {}),
        ...(q.subjectId ? { subjectId: q.subjectId } : {}),
        ...(q.afterSeq !== undefined ? { afterSeq: q.afterSeq } : {}),
        limit: q.limit,
      });
      return { records };
    },
  );
  const verifyQuery = z
    .object({
      /** Heads exported earlier (`SEQ:HASH`, repeatable) that must still match. */
      anchor: z
        .union([z.string(), z.array(z.string()).max(100)])
        .optional()
        .transform((v) => (v === undefined ? [] : Array.isArray(v) ? v : [v]))
        .pipe(z.array(z.string().regex(/^\d{1,15}:[0-9a-f]{64}$/, 'SEQ:HASH (a seq and a 64-digit hex hash)'))),
    })
    .strict();
  r<unknown, Record<string, string | string[]>>(
    'GET',
    '/v1/audit/verify',
    { roles: OPERATE },
    { summary: 'Verify the whole hash chain, and any anchors (?anchor=SEQ:HASH, repeatable): modified, deleted or reordered records (seqs and kinds only).', tags: ['audit'] },
    async (request) => {
      const who = caller(request);
      if (who.key.tenants !== null) throw new TetherError('API_FORBIDDEN', 'Verifying the whole chain needs a key that is not limited to tenants.');
      const q = parse(verifyQuery, request.query, 'query');
      const anchors = q.anchor.map((a) => {
        const [seq, hash] = a.split(':') as [string, string];
        return { seq: Number(seq), hash };
      });
      return needAudit().verify({ anchors });
    },
  );
  r<unknown, Record<string, string>>(
    'GET',
    '/v1/audit/export',
    { roles: ADMIN },
    { summary: 'Audit records as FHIR R4 AuditEvent resources, NDJSON (page with afterSeq and limit).', tags: ['audit'], querystring: auditQuery },
    async (request, reply) => {
      const who = caller(request);
      const q = parse(auditQuery, request.query, 'query');
      if (q.tenant) who.assertTenant(q.tenant);
      else if (who.key.tenants !== null) throw new TetherError('API_FORBIDDEN', 'A key limited to tenants must name one (?tenant=).');
      const audit = needAudit();
      const records = await audit.query({ ...(q.tenant ? { tenantId: q.tenant } : {}), ...(q.afterSeq !== undefined ? { afterSeq: q.afterSeq } : {}), limit: q.limit });
      void reply.type('application/fhir+ndjson');
      return records.map((record) => JSON.stringify(audit.toAuditEvent(record))).join('\n') + (records.length > 0 ? '\n' : '');
    },
  );

  // ---------------------------------------------------------------------------------------------- api keys
  r('GET', '/v1/api-keys', { roles: ADMIN }, { summary: 'API keys (hashes and secrets are never returned).', tags: ['keys'] }, async () => ({
    keys: (await deps.store.apiKeys.list()).map(({ keyHash: _h, ...k }) => k),
  }));
  r<unknown, unknown, unknown>('POST', '/v1/api-keys', { roles: ADMIN }, { summary: 'Create an API key; the key is in this response only.', tags: ['keys'], body: newKeyBody }, async (request, reply) => {
    const who = caller(request);
    const body = parse(newKeyBody, request.body, 'API key');
    const { record, key } = await createApiKey(deps.store, { ...body, createdBy: who.actor });
    await audited(who, 'api_key.created', { tenantId: null, type: 'api_key', id: record.id }, { keyRole: record.role, tenantScoped: record.tenants !== null });
    const { keyHash: _h, ...view } = record;
    void reply.status(201);
    return { ...view, key };
  });
  r<{ id: string }>('DELETE', '/v1/api-keys/:id', { roles: ADMIN }, { summary: 'Revoke an API key.', tags: ['keys'] }, async (request, reply) => {
    const { id } = parse(idParams, request.params, 'path');
    if (!(await deps.store.apiKeys.revoke(id))) throw new TetherError('API_NOT_FOUND', 'No active API key has that id.');
    await audited(caller(request), 'api_key.revoked', { tenantId: null, type: 'api_key', id });
    void reply.status(204);
    return null;
  });

  for (const plugin of deps.plugins ?? []) await plugin(app, helpers);
  return app;
}
