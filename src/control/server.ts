/** The control listener (fastify): health, metrics, the operator's admin routes and the control API. */
import Fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import type { Metrics } from '../core/metrics.js';
import type { QueueAdmin } from '../mta/queue-admin.js';
import { queueRoutes } from './queues.js';
import { adminSchemas as S } from './admin-schemas.js';
import { controlFoundation, type ControlApiDeps } from './api.js';
import { allow } from './auth.js';
import { auditRoutes } from './routes/audit.js';
import { apiKeyRoutes } from './routes/api-keys.js';
import { domainRoutes } from './routes/domains.js';
import { eventRoutes } from './routes/events.js';
import { messageRoutes } from './routes/messages.js';
import { sendingRoutes } from './routes/sending.js';
import { sessionRoutes } from './routes/session.js';
import { statsRoutes } from './routes/stats.js';
import { smtpCredentialRoutes } from './routes/smtp-credentials.js';
import { suppressionRoutes } from './routes/suppressions.js';
import { tenantRoutes } from './routes/tenants.js';
import { userRoutes } from './routes/users.js';
import { poolRoutes } from './routes/pools.js';
import { webhookRoutes } from './routes/webhooks.js';
import { eventRoutes as eventConsumerRoutes, type EventRoutesOptions } from '../events/routes.js';
import { ALL_TENANTS } from '../events/types.js';

export interface ControlDeps {
  metrics: Metrics;
  health: () => { ok: boolean; [k: string]: unknown };
  /** null: admin routes answer 403 */
  adminToken: string | null;
  explainShaping: (domain: string, source?: string) => Promise<unknown>;
  reload: () => { ok: boolean; [k: string]: unknown };
  backoff: { list: () => unknown[]; clear: (id: string) => boolean };
  /** warmup state of every source on a plan, or of one */
  warmup: (source?: string) => unknown[];
  queues: QueueAdmin;
  /** tenants, keys, credentials, users, audit: the control API (src/control/api.ts) */
  api: ControlApiDeps;
  /** webhook status/enable and the live stream (absent: those routes are not served) */
  events?: Pick<EventRoutesOptions, 'webhooks' | 'streams'>;
}

const fail = (reply: FastifyReply, status: number, code: string, message: string) => reply.code(status).send({ error: { code, message, details: [] } });

export async function buildControlServer(deps: ControlDeps): Promise<FastifyInstance> {
  const app = Fastify({ logger: false });
  // first: the OpenAPI document, error shape, credentials and rate limits must see every route
  await app.register(controlFoundation, deps.api);

  /** Admin routes take `Authorization: Bearer <operator token>`. */
  const operator = allow('operator');

  app.get('/healthz', { schema: S.health }, async (_req, reply) => {
    const h = deps.health();
    return reply.code(h.ok ? 200 : 503).send(h);
  });
  app.get('/metrics', { schema: S.metrics }, async (_req, reply) => {
    reply.header('content-type', deps.metrics.registry.contentType);
    return deps.metrics.registry.metrics();
  });
  app.get<{ Querystring: { domain?: string; source?: string } }>('/api/v1/shaping/explain', { onRequest: operator, schema: S.explainShaping }, async (req, reply) => {
    const { domain, source } = req.query;
    if (!domain || !/^[A-Za-z0-9.-]+$/.test(domain)) return fail(reply, 400, 'invalid_domain', 'Give the domain as ?domain=example.com');
    try {
      return await deps.explainShaping(domain, source);
    } catch (err) {
      return fail(reply, 404, 'not_found', (err as Error).message);
    }
  });
  app.get('/api/v1/backoff', { onRequest: operator, schema: S.backoffList }, async () => ({ actions: deps.backoff.list() }));
  app.delete<{ Params: { id: string } }>('/api/v1/backoff/:id', { onRequest: operator, schema: S.backoffClear }, async (req, reply) => {
    if (!deps.backoff.clear(req.params.id)) return fail(reply, 404, 'not_found', `No running backoff action has id ${req.params.id}`);
    return reply.code(204).send();
  });
  app.get('/api/v1/warmup', { onRequest: operator, schema: S.warmupList }, async () => ({ sources: deps.warmup() }));
  app.get<{ Params: { source: string } }>('/api/v1/warmup/:source', { onRequest: operator, schema: S.warmupOne }, async (req, reply) => {
    const [found] = deps.warmup(req.params.source);
    return found ?? fail(reply, 404, 'not_found', `Source ${req.params.source} is not on a warmup plan (or does not exist)`);
  });
  app.post('/api/v1/reload', { onRequest: operator, schema: S.reload }, async (_req, reply) => {
    const r = deps.reload();
    return reply.code(r.ok ? 200 : 422).send(r);
  });
  app.register(queueRoutes, { prefix: '/api/v1/queues', admin: deps.queues, operator });
  app.register(tenantRoutes, { prefix: '/api/v1', ...deps.api });
  app.register(apiKeyRoutes, { prefix: '/api/v1', ...deps.api });
  app.register(smtpCredentialRoutes, { prefix: '/api/v1', ...deps.api });
  app.register(suppressionRoutes, { prefix: '/api/v1', ...deps.api });
  app.register(domainRoutes, { prefix: '/api/v1', ...deps.api });
  app.register(eventRoutes, { prefix: '/api/v1', ...deps.api });
  app.register(messageRoutes, { prefix: '/api/v1', ...deps.api });
  app.register(sendingRoutes, { prefix: '/api/v1', ...deps.api });
  app.register(statsRoutes, { prefix: '/api/v1', ...deps.api });
  app.register(userRoutes, { prefix: '/api/v1', ...deps.api });
  app.register(sessionRoutes, { prefix: '/api/v1', ...deps.api });
  app.register(auditRoutes, { prefix: '/api/v1', ...deps.api });
  app.register(poolRoutes, { prefix: '/api/v1', ...deps.api });
  app.register(webhookRoutes, { prefix: '/api/v1', ...deps.api });
  if (deps.events)
    app.register(eventConsumerRoutes, {
      prefix: '/api/v1',
      ...deps.events,
      operator,
      // tenants stream their own events; the operator any tenant's (?tenant=), or the one named in X-Tern-Tenant
      streamAccess: allow('operator', 'owner', 'admin', 'marketer', 'viewer'),
      streamScope: async (req) => req.principal?.tenant ?? ALL_TENANTS,
    });
  return app;
}
