/** The control listener (fastify). This stage serves /healthz and /metrics; the control API grows here. */
import Fastify, { type FastifyInstance } from 'fastify';
import type { Metrics } from '../core/metrics.js';

export interface ControlDeps {
  metrics: Metrics;
  health: () => { ok: boolean; [k: string]: unknown };
}

export function buildControlServer(deps: ControlDeps): FastifyInstance {
  const app = Fastify({ logger: false });
  app.get('/healthz', async (_req, reply) => {
    const h = deps.health();
    return reply.code(h.ok ? 200 : 503).send(h);
  });
  app.get('/metrics', async (_req, reply) => {
    reply.header('content-type', deps.metrics.registry.contentType);
    return deps.metrics.registry.metrics();
  });
  return app;
}
