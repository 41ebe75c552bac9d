/** The control listener (fastify): health, metrics, and the operator's admin routes. */
import crypto from 'node:crypto';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Metrics } from '../core/metrics.js';
import type { QueueAdmin } from '../mta/queue-admin.js';
import { queueRoutes } from './queues.js';
import { eventRoutes, type EventRoutesOptions } from '../events/routes.js';

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
  /** webhook status/enable and the live stream (absent: those routes are not served) */
  events?: Pick<EventRoutesOptions, 'webhooks' | 'streams'>;
}

const fail = (reply: FastifyReply, status: number, code: string, message: string) => reply.code(status).send({ error: { code, message } });

export function buildControlServer(deps: ControlDeps): FastifyInstance {
  const app = Fastify({ logger: false });
  const expected = deps.adminToken ? crypto.createHash('sha256').update(deps.adminToken).digest() : null;

  /** Admin routes take `Authorization: Bearer <operator token>`. */
  const operator = async (req: FastifyRequest, reply: FastifyReply) => {
    if (!expected) return fail(reply, 403, 'admin_disabled', 'Admin routes are off: set control.admin_token in the config or TERN_ADMIN_TOKEN in the environment');
    const given = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1] ?? '';
    if (!crypto.timingSafeEqual(crypto.createHash('sha256').update(given).digest(), expected))
      return fail(reply, 401, 'unauthorized', 'Send the operator token as "Authorization: Bearer <token>"');
  };

  app.get('/healthz', async (_req, reply) => {
    const h = deps.health();
    return reply.code(h.ok ? 200 : 503).send(h);
  });
  app.get('/metrics', async (_req, reply) => {
    reply.header('content-type', deps.metrics.registry.contentType);
    return deps.metrics.registry.metrics();
  });
  app.get<{ Querystring: { domain?: string; source?: string } }>('/api/v1/shaping/explain', { preHandler: operator }, async (req, reply) => {
    const { domain, source } = req.query;
    if (!domain || !/^[A-Za-z0-9.-]+$/.test(domain)) return fail(reply, 400, 'invalid_domain', 'Give the domain as ?domain=example.com');
    try {
      return await deps.explainShaping(domain, source);
    } catch (err) {
      return fail(reply, 404, 'not_found', (err as Error).message);
    }
  });
  app.get('/api/v1/backoff', { preHandler: operator }, async () => ({ actions: deps.backoff.list() }));
  app.delete<{ Params: { id: string } }>('/api/v1/backoff/:id', { preHandler: operator }, async (req, reply) => {
    if (!deps.backoff.clear(req.params.id)) return fail(reply, 404, 'not_found', `No running backoff action has id ${req.params.id}`);
    return reply.code(204).send();
  });
  app.get('/api/v1/warmup', { preHandler: operator }, async () => ({ sources: deps.warmup() }));
  app.get<{ Params: { source: string } }>('/api/v1/warmup/:source', { preHandler: operator }, async (req, reply) => {
    const [found] = deps.warmup(req.params.source);
    return found ?? fail(reply, 404, 'not_found', `Source ${req.params.source} is not on a warmup plan (or does not exist)`);
  });
  app.post('/api/v1/reload', { preHandler: operator }, async (_req, reply) => {
    const r = deps.reload();
    return reply.code(r.ok ? 200 : 422).send(r);
  });
  app.register(queueRoutes, { prefix: '/api/v1/queues', admin: deps.queues, operator });
  if (deps.events) app.register(eventRoutes, { prefix: '/api/v1', ...deps.events, operator });
  return app;
}
