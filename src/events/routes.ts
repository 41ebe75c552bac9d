/**
 * HTTP routes of the events consumers: the live stream (webhook endpoints, their status and re-enabling are
 * src/control/routes/webhooks.ts). Who may read which tenant's stream is one function (`streamScope`), so the tenant credentials of
 * the control API can replace the operator check without touching the stream.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest, onRequestAsyncHookHandler } from 'fastify';
import type { EventStreams } from './stream.js';
import { ALL_TENANTS, filterOf, subscriptionProblems } from './types.js';
import type { WebhookDelivery } from './webhooks.js';

export interface EventRoutesOptions {
  webhooks: WebhookDelivery;
  streams: EventStreams;
  /** the operator check of the control listener (replies 401/403 itself) */
  operator: (req: FastifyRequest, reply: FastifyReply) => Promise<unknown>;
  /**
   * Whose events the caller may stream: a tenant id, `*` for any tenant, or null after replying with an
   * error. Default: the operator, for any tenant.
   */
  streamScope?: (req: FastifyRequest, reply: FastifyReply) => Promise<string | null>;
  /** the control API's declaration of who may open a stream (its allow(); without it the route is operator-only) */
  streamAccess?: onRequestAsyncHookHandler;
}

const fail = (reply: FastifyReply, status: number, code: string, message: string) => reply.code(status).send({ error: { code, message, details: [] } });

export async function eventRoutes(app: FastifyInstance, opts: EventRoutesOptions): Promise<void> {
  const { streams, operator } = opts;
  const streamScope =
    opts.streamScope ??
    (async (req: FastifyRequest, reply: FastifyReply) => {
      await operator(req, reply);
      return reply.sent ? null : ALL_TENANTS;
    });

  // webhook endpoints (status, enable, and the tenants' own) are src/control/routes/webhooks.ts
  app.get<{ Querystring: { tenant?: string; types?: string; since?: string } }>('/events/stream', opts.streamAccess ? { onRequest: opts.streamAccess } : {}, async (req, reply) => {
    const scope = await streamScope(req, reply);
    if (scope === null) return reply;
    const tenant = scope === ALL_TENANTS ? req.query.tenant : scope;
    if (!tenant) return fail(reply, 400, 'invalid_tenant', 'Give the tenant as ?tenant=<id> (or ?tenant=* for every tenant and node events)');
    if (scope !== ALL_TENANTS && req.query.tenant !== undefined && req.query.tenant !== scope)
      return fail(reply, 403, 'forbidden', `This credential reads the events of tenant ${scope} only`);
    const types = (req.query.types ?? '').split(',').map((t) => t.trim()).filter(Boolean);
    const problems = subscriptionProblems(types, tenant);
    if (problems.length) return fail(reply, 400, 'invalid_types', `types: ${problems.map((p) => p.message).join('; ')}`);
    const lastEventId = req.headers['last-event-id'];
    const since = typeof lastEventId === 'string' && lastEventId !== '' ? lastEventId : req.query.since;
    if (since !== undefined && !/^\d{1,15}$/.test(since)) return fail(reply, 400, 'invalid_since', 'since (or Last-Event-ID) is the seq of the last event you have, a whole number');
    if (streams.count >= streams.maxClients) return fail(reply, 503, 'too_many_streams', `This node serves at most ${streams.maxClients} live streams at once; try again later`);
    reply.hijack();
    await streams.serve(reply.raw, filterOf(tenant, types), since === undefined ? null : Number(since));
  });

  // open streams would keep the listener from closing
  app.addHook('preClose', (done) => {
    streams.closeAll();
    done();
  });
}
