/**
 * Queue administration over HTTP: a fastify plugin mounted at /api/v1/queues on the control listener.
 * Every route takes the operator's token. Request schemas (TypeBox) are checked by TypeBox itself so that
 * problems come back as sentences naming the field, in the control API's error shape
 * `{"error": {"code", "message"}}`.
 */
import { Type, type TSchema } from '@sinclair/typebox';
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import { schemaProblems } from '../core/config.js';
import { DURATION_PATTERN, parseDuration } from '../core/units.js';
import { holdView, QueueInputError, type QueueAdmin } from '../mta/queue-admin.js';
import type { Selector } from '../mta/holds.js';

export interface QueueRoutesOptions {
  admin: QueueAdmin;
  /** the control server's operator-token check */
  operator: (req: FastifyRequest, reply: FastifyReply) => Promise<unknown>;
}

const ONE_LINE = '^[^\\r\\n]*$';
const Name = Type.String({ minLength: 1, maxLength: 253, pattern: ONE_LINE });
const selectorProps = { tenant: Type.Optional(Name), campaign: Type.Optional(Name), domain: Type.Optional(Name), source: Type.Optional(Name) };
const Reason = Type.String({ minLength: 1, maxLength: 500, pattern: ONE_LINE });
const strict = <T extends Record<string, TSchema>>(props: T) => Type.Object(props, { additionalProperties: false });

const SuspendBody = strict({ ...selectorProps, reason: Reason, duration: Type.Optional(Type.String({ pattern: DURATION_PATTERN })) });
const ResumeBody = strict({ id: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })), ...selectorProps });
const FailBody = strict({ ...selectorProps, reason: Reason });
const RetryBody = strict({ ...selectorProps, message_id: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })) });
const ListQuery = strict({ ...selectorProps, limit: Type.Optional(Type.String({ pattern: '^[0-9]{1,6}$' })), cursor: Type.Optional(Type.String({ maxLength: 2000 })) });

/** What a valid request looks like, appended to a refusal. */
const EXAMPLES: Record<string, string> = {
  '/suspend': 'send e.g. {"domain": "example.com", "reason": "complaints spike", "duration": "2h"}',
  '/resume': 'send {"id": "<hold id>"} or the hold\'s selectors, e.g. {"domain": "example.com"}',
  '/fail': 'send e.g. {"campaign": "spring-sale", "reason": "sent by mistake"}',
  '/retry': 'send e.g. {"domain": "example.com"} or {"message_id": "<queue id>"}',
};
const HINTS = { [ONE_LINE]: 'one line of text', '^[0-9]{1,6}$': 'a whole number' };

const selectorFrom = (x: Selector): Selector => ({ tenant: x.tenant, campaign: x.campaign, domain: x.domain, source: x.source });

export const queueRoutes: FastifyPluginAsync<QueueRoutesOptions> = async (app, { admin, operator }) => {
  // before body parsing and validation: without the token, nothing about the request is looked at
  app.addHook('onRequest', operator);

  app.setValidatorCompiler(({ schema, httpPart }) => (data: unknown) => {
    if (httpPart === 'body' && (data === undefined || data === null)) return { error: new QueueInputError('empty_body', 'The request has no JSON body') };
    const problems = schemaProblems(schema as TSchema, data, HINTS);
    return problems.length ? { error: new QueueInputError('invalid_request', problems.join('; ')) } : { value: data };
  });

  app.setErrorHandler((err: Error & { statusCode?: number; code?: string }, req, reply) => {
    const example = EXAMPLES[req.routeOptions.url?.replace(/^\/api\/v1\/queues/, '') ?? ''];
    const withExample = (m: string) => (example ? `${m}; ${example}` : m);
    if (err instanceof QueueInputError) return err.code === 'not_found' ? send(reply, 404, err.code, err.message) : send(reply, 400, err.code, withExample(err.message));
    if (err.code === 'FST_ERR_CTP_EMPTY_JSON_BODY') return send(reply, 400, 'empty_body', withExample('The request has an empty JSON body'));
    if (err.statusCode && err.statusCode < 500) return send(reply, err.statusCode, 'invalid_request', withExample(err.message));
    req.log.error({ err }, 'queue admin request failed');
    return send(reply, 500, 'internal', 'The action failed on the node; see its log');
  });

  app.get<{ Querystring: { tenant?: string; campaign?: string; domain?: string; source?: string; limit?: string; cursor?: string } }>(
    '/',
    { schema: { querystring: ListQuery } },
    async (req) => {
      const { limit, cursor, ...filter } = req.query;
      const n = limit === undefined ? 100 : Number(limit);
      if (n < 1 || n > 1000) throw new QueueInputError('invalid_limit', `limit must be 1 to 1000 (got ${n})`);
      return admin.list({ filter: selectorFrom(filter), limit: n, cursor });
    },
  );

  app.get('/suspensions', async () => {
    const { holds, backoff } = admin.suspensions();
    return { holds, backoff };
  });

  app.post<{ Body: Selector & { reason: string; duration?: string } }>('/suspend', { schema: { body: SuspendBody } }, async (req, reply) => {
    const sel = admin.selector(selectorFrom(req.body), { source: true });
    const durationMs = req.body.duration === undefined ? null : parseDuration(req.body.duration);
    if (durationMs !== null && durationMs <= 0) throw new QueueInputError('invalid_duration', 'duration must be longer than 0; leave it out to hold until resumed');
    const hold = await admin.suspend(sel, req.body.reason, durationMs);
    return reply.code(201).send({ hold: holdView(hold) });
  });

  app.post<{ Body: Selector & { id?: string } }>('/resume', { schema: { body: ResumeBody } }, async (req) => {
    const { id, ...rest } = req.body;
    const given = Object.values(selectorFrom(rest)).some((v) => v !== undefined);
    if (id !== undefined && given) throw new QueueInputError('invalid_request', 'Give either a hold id or selectors, not both');
    const ended = id !== undefined ? await admin.resume({ id }) : await admin.resume({ selector: admin.selector(selectorFrom(rest), { source: true }) });
    if (!ended.length)
      throw new QueueInputError('not_found', id !== undefined ? `No hold in force has id ${id}` : 'No hold in force has exactly these selectors; list them with GET /api/v1/queues/suspensions');
    return { resumed: ended.map(holdView) };
  });

  app.delete<{ Params: { id: string } }>('/suspensions/:id', async (req, reply) => {
    const ended = await admin.resume({ id: req.params.id });
    if (!ended.length) return send(reply, 404, 'not_found', `No hold in force has id ${req.params.id}`);
    return { resumed: ended.map(holdView) };
  });

  app.post<{ Body: Selector & { reason: string } }>('/fail', { schema: { body: FailBody } }, async (req) => {
    const sel = admin.selector(selectorFrom(req.body), { source: false });
    return admin.fail(sel, req.body.reason);
  });

  app.post<{ Body: Selector & { message_id?: string } }>('/retry', { schema: { body: RetryBody } }, async (req) => {
    const { message_id: messageId, ...rest } = req.body;
    const given = Object.values(selectorFrom(rest)).some((v) => v !== undefined);
    if (messageId !== undefined && given) throw new QueueInputError('invalid_request', 'Give either message_id or selectors, not both');
    if (messageId !== undefined) return admin.retry({ messageId });
    return admin.retry({ selector: admin.selector(selectorFrom(rest), { source: false }) });
  });

  app.get<{ Params: { id: string } }>('/messages/:id', async (req, reply) => {
    const m = admin.message(req.params.id);
    if (!m) return send(reply, 404, 'not_found', `No message has queue id ${req.params.id} (the id in "250 … queued as ID"; finished messages are kept for events.retention)`);
    return m;
  });
};

function send(reply: FastifyReply, status: number, code: string, message: string) {
  return reply.code(status).send({ error: { code, message, details: [] } });
}
