/**
 * The control API's foundation, registered on the control listener before any route: credentials and rate
 * limits (auth.ts), the error shape (errors.ts), and the OpenAPI document built from the route schemas
 * (`GET /api/v1/openapi.json`). Each resource is a plugin of its own (src/control/routes/); they validate
 * with `useTypeBox`, so the formats of validate.ts are checked by the schemas that document them.
 *
 * Every route under /api/v1 declares its roles with allow() or allowAnyone(); one that does not is given
 * allow('operator') here, so a forgotten declaration can only make a route stricter.
 */
import fastifyCookie from '@fastify/cookie';
import fastifyRateLimit from '@fastify/rate-limit';
import fastifySwagger from '@fastify/swagger';
import { Type, type TSchema } from '@sinclair/typebox';
import { TypeCompiler, ValueErrorType, type TypeCheck } from '@sinclair/typebox/compiler';
import { Value } from '@sinclair/typebox/value';
import type { FastifyInstance, FastifyPluginAsync, RouteOptions } from 'fastify';
import type { SuppressionList } from '../bounce/suppression.js';
import type { Store } from '../core/store.js';
import type { QueueAdmin } from '../mta/queue-admin.js';
import { accessOf, allow, allowAnyone, Authenticator, isTenantScoped, rateKey, TENANT_HEADER, type RouteAccess } from './auth.js';
import { ApiError, ErrorBody, errorHandler, notFoundHandler, type FieldProblem } from './errors.js';
import type { Mailer } from './mailer.js';
import type { IdempotencyKeys } from './idempotency.js';
import type { Acceptance } from '../mta/acceptance.js';
import type { SendingStats } from '../events/stats.js';
import type { ControlPlane } from './plane.js';
import { FORMAT_HINTS, TENANT_ID_PATTERN } from './validate.js';

export interface ControlApiDeps {
  plane: ControlPlane;
  suppressions: SuppressionList;
  queues: QueueAdmin;
  store: Store;
  mailer: Mailer;
  adminToken: string | null;
  /** HTTP sending and its statistics */
  http: { acceptance: Acceptance; idempotency: IdempotencyKeys; stats: SendingStats; hostname: string };
}

export interface RouteEntry {
  method: string;
  url: string;
  access: RouteAccess;
}

declare module 'fastify' {
  interface FastifyInstance {
    /** every route of the listener with the access it declares (the OpenAPI test and the isolation test walk it) */
    controlRoutes: RouteEntry[];
  }
}

export const API_PREFIX = '/api/v1';

/** Registered on the listener's root instance (not encapsulated): its hooks see every route. */
export const controlFoundation: FastifyPluginAsync<ControlApiDeps> = async (app, deps) => {
  const { plane } = deps;
  const auth = new Authenticator({ adminToken: deps.adminToken, apiKeys: plane.apiKeys, users: plane.users, tenants: plane.tenants });
  app.decorate('controlAuth', auth);
  app.decorateRequest('principal', null);
  app.decorate('controlRoutes', [] as RouteEntry[]);

  app.addHook('onRoute', (route) => {
    if (route.url.startsWith(API_PREFIX)) {
      let access = accessOf(route.onRequest) ?? accessOf(route.preHandler);
      if (!access) {
        const hook = allow('operator');
        route.onRequest = route.onRequest ? [...(Array.isArray(route.onRequest) ? route.onRequest : [route.onRequest]), hook] : [hook];
        access = hook.access;
      }
      app.controlRoutes.push({ method: String(route.method), url: route.url, access });
    } else app.controlRoutes.push({ method: String(route.method), url: route.url, access: { roles: [], public: true } });
  });

  await app.register(fastifyCookie);
  await app.register(fastifyRateLimit, { global: false });
  const { count, periodMs } = plane.settings.apiRate;
  auth.apiRate = app.createRateLimit({ max: count, timeWindow: periodMs, keyGenerator: rateKey });

  await app.register(fastifySwagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'Tern control API',
        version: '1',
        description:
          'Operators manage tenants; tenants manage their keys, credentials, users, suppressions and read their events and messages. ' +
          'Errors are {"error": {"code", "message", "details"}}. Lists are paginated with ?limit=&cursor= and answer {items, next_cursor}. ' +
          'x-tern-roles on each operation lists the roles allowed to call it.',
      },
      components: {
        securitySchemes: {
          bearer: { type: 'http', scheme: 'bearer', description: 'An API key (tern_<id>_<secret>, one tenant and one role) or the operator token. The operator acts for a tenant by sending X-Tern-Tenant.' },
          session: { type: 'apiKey', in: 'cookie', name: 'tern_session', description: 'The session cookie of POST /api/v1/auth/login. Unsafe methods also need X-Tern-CSRF with the csrf_token of the login.' },
        },
      },
    },
    // a plugin's '/' route is reachable with and without the slash; the document names it without
    transform: ({ schema, url, route }) => ({ url: url.length > 1 ? url.replace(/\/$/, '') : url, schema: documented(schema as Record<string, unknown> | undefined, route as RouteOptions) as never }),
  });

  app.setErrorHandler(errorHandler);
  app.setNotFoundHandler(notFoundHandler);

  app.get(`${API_PREFIX}/openapi.json`, { onRequest: allowAnyone(), schema: { summary: 'This document (OpenAPI 3.1)', tags: ['meta'] } }, async () => app.swagger());
};
// like fastify-plugin: the hooks, decorators and error handler apply to the whole listener
(controlFoundation as unknown as Record<symbol, boolean>)[Symbol.for('skip-override')] = true;

const ERROR_RESPONSES: Record<string, string> = {
  '400': 'Invalid request: details names each field and what is wrong with it',
  '401': 'No valid credentials',
  '403': 'The credential\'s role may not do this (or CSRF token missing)',
  '404': 'No such resource (resources of other tenants are not found either)',
  '429': 'Rate limited; see Retry-After',
};

/** What the OpenAPI document says of a route besides its own schema: roles, security, error responses. */
function documented(schema: Record<string, unknown> | undefined, route: RouteOptions): Record<string, unknown> {
  const out: Record<string, unknown> = { ...(schema ?? {}) };
  if (!route.url.startsWith(API_PREFIX)) {
    out.security = [];
    out.tags ??= ['node'];
    return out;
  }
  const access = accessOf(route.onRequest) ?? accessOf(route.preHandler) ?? { roles: ['operator'], public: false };
  const method = String(route.method).toLowerCase();
  out.operationId ??= `${method}${route.url.slice(API_PREFIX.length).replace(/[{}:]/g, '').replace(/[^A-Za-z0-9]+(.)?/g, (_, c: string | undefined) => (c ?? '').toUpperCase())}`;
  out['x-tern-roles'] = access.public ? ['anyone'] : access.roles;
  out.security = access.public ? [] : [{ bearer: [] }, { session: [] }];
  out.tags ??= [route.url.slice(API_PREFIX.length + 1).split('/')[0] || 'meta'];
  const response = { ...((schema?.response as Record<string, unknown> | undefined) ?? {}) };
  for (const [code, description] of Object.entries(ERROR_RESPONSES)) {
    if (access.public && (code === '401' || code === '403')) continue;
    response[code] ??= { ...ErrorBody, description };
  }
  if (!Object.keys(response).some((c) => c.startsWith('2'))) response['200'] = { description: 'Success', type: 'object' };
  out.response = response;
  if (!access.public && access.roles.includes('operator') && isTenantScoped(access)) {
    const headers = (schema?.headers as { properties?: Record<string, unknown> } | undefined)?.properties ?? {};
    out.headers = Type.Object({
      ...(headers as Record<string, TSchema>),
      [TENANT_HEADER]: Type.Optional(Type.String({ pattern: TENANT_ID_PATTERN, description: 'operator token only: the tenant to act for' })),
    });
  }
  return out;
}

const compiled = new WeakMap<TSchema, TypeCheck<TSchema>>();

/**
 * Validates requests of the routes in `app`'s context with TypeBox: query strings and path parameters are
 * converted (a number in a query string arrives as a string) and given their defaults; bodies are taken as
 * sent. A problem is a 400 with one detail per field.
 */
export function useTypeBox(app: FastifyInstance): void {
  app.setValidatorCompiler(({ schema, httpPart }) => {
    const s = schema as TSchema;
    let check = compiled.get(s);
    if (!check) compiled.set(s, (check = TypeCompiler.Compile(s)));
    const part = httpPart === 'querystring' ? 'query' : httpPart === 'headers' ? 'header' : (httpPart ?? 'body');
    return (data: unknown) => {
      if (part === 'body' && (data === null || data === undefined))
        return { error: new ApiError(400, 'invalid_request', 'The request needs a JSON body ("Content-Type: application/json")', [{ field: 'body', message: 'is missing' }]) };
      const value = part === 'body' ? Value.Default(s, structuredClone(data)) : Value.Default(s, Value.Convert(s, structuredClone(data)));
      if (check.Check(value)) return { value };
      const details = problems(check, value, part);
      return { error: new ApiError(400, 'invalid_request', `The request is invalid: ${details.map((d) => `${d.field} ${d.message}`).join('; ')}`, details) };
    };
  });
}

/** One problem per field, as a sentence fragment that says what a valid value looks like. */
function problems(check: TypeCheck<TSchema>, value: unknown, part: string): FieldProblem[] {
  const out: FieldProblem[] = [];
  const seen = new Set<string>();
  for (const e of check.Errors(value)) {
    const field = `${part}${e.path.replace(/\//g, '.')}`;
    if (seen.has(field)) continue;
    seen.add(field);
    const sch = e.schema as { format?: string; description?: string };
    let message: string;
    if (/unexpected property/i.test(e.message)) message = 'is not a field of this request';
    else if (e.value === undefined) message = 'is required';
    else if (e.type === ValueErrorType.StringFormat && sch.format && FORMAT_HINTS[sch.format]) message = `must be ${FORMAT_HINTS[sch.format]}`;
    else if (e.type === ValueErrorType.StringPattern) message = `must be ${sch.description ?? 'in the documented form'}`;
    else message = e.message.charAt(0).toLowerCase() + e.message.slice(1);
    out.push({ field, message });
    if (out.length >= 20) break;
  }
  return out;
}
