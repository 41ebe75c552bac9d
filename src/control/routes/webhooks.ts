/**
 * Webhook endpoints: `/api/v1/webhooks`. A tenant's owners and admins (and the operator with X-Tern-Tenant)
 * list, make, change and delete the tenant's endpoints; the operator without it sees every endpoint. The
 * config file's endpoints are listed too, read-only (409 on a change), with the delivery state of each
 * (active, failing, disabled after failing too long, paused by its owner); `POST …/{id}/enable` re-enables
 * one that failing disabled. The signing secret is made by the node and shown once: in the answer to the
 * create, and to a PATCH with `rotate_secret`. See src/control/webhooks.ts.
 */
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import type { EndpointStatus } from '../../events/webhooks.js';
import { WEBHOOK_ID_PATTERN, type WebhookEndpointConfig } from '../../events/webhook-config.js';
import { useTypeBox } from '../api.js';
import { allow, tenantOf } from '../auth.js';
import { ApiError, badRequest, notFound } from '../errors.js';
import { Page, PageQuery, decodeCursor, isString, pageOf } from '../pagination.js';
import { newWebhookSecret, type WebhookRecord } from '../webhooks.js';
import { Epoch, NoContent, Nullable, mutate, strict, type RouteDeps } from './common.js';

const Iso = Nullable(Type.String({ description: 'ISO 8601' }));

export const WebhookView = Type.Object(
  {
    id: Type.String(),
    tenant: Type.String({ description: 'its tenant ("*": an operator\'s endpoint for every tenant, from the config file)' }),
    url: Type.String(),
    events: Type.Array(Type.String(), { description: 'event types it gets ("*": all of its tenant\'s)' }),
    enabled: Type.Boolean({ description: 'false: paused by its owner (what happens meanwhile is delivered once it is enabled)' }),
    managed_by: Type.Union([Type.Literal('config'), Type.Literal('api')], { description: 'config: defined in the config file, which owns it (read-only here)' }),
    created_at: Nullable(Epoch('made (null for the config\'s)')),
    updated_at: Nullable(Epoch('last changed (null for the config\'s)')),
    state: Type.Union([Type.Literal('active'), Type.Literal('failing'), Type.Literal('disabled'), Type.Literal('paused')], { description: 'disabled: failing for webhook_delivery.disable_after (POST …/enable); paused: enabled is false' }),
    cursor: Type.Integer({ description: 'every outbox event up to this seq was delivered or was not for it' }),
    outbox_seq: Type.Integer(),
    pending: Type.Integer({ description: 'events of the batch being delivered (or retried)' }),
    lag_seconds: Type.Integer({ description: 'age of the oldest event not yet delivered' }),
    failures: Type.Integer(),
    failing_since: Iso,
    last_error: Nullable(Type.String()),
    last_attempt_at: Iso,
    last_success_at: Iso,
    next_attempt_at: Iso,
    disabled_at: Iso,
    pruned_unread: Type.Integer(),
  },
  { title: 'Webhook' },
);

export const WebhookCreated = Type.Object(
  { ...WebhookView.properties, secret: Type.String({ description: 'the signing secret of the Tern-Signature header: shown only here' }) },
  { title: 'WebhookCreated' },
);

const WebhookChanged = Type.Object(
  { ...WebhookView.properties, secret: Type.Optional(Type.String({ description: 'the new signing secret, after rotate_secret only: shown only here' })) },
  { title: 'WebhookChanged' },
);

const Url = Type.String({ minLength: 8, maxLength: 2048, description: 'https URL (plain http only to networks in webhook_delivery.allow_networks); private addresses are refused' });
const Events = Type.Array(Type.String({ minLength: 1, maxLength: 64 }), { minItems: 1, maxItems: 64, description: 'event types, or ["*"] for all of the tenant\'s' });
const CreateBody = strict({ url: Url, events: Events, enabled: Type.Optional(Type.Boolean()) });
const PatchBody = strict(
  { url: Type.Optional(Url), events: Type.Optional(Events), enabled: Type.Optional(Type.Boolean()), rotate_secret: Type.Optional(Type.Literal(true, { description: 'make a new secret (shown in the answer); the old one stops at once' })) },
  { minProperties: 1 },
);
const WebhookParams = Type.Object({ id: Type.String({ pattern: WEBHOOK_ID_PATTERN, description: 'the endpoint\'s id' }) });

const MANAGERS = ['operator', 'owner', 'admin'] as const;

type View = Static<typeof WebhookView>;

const PAUSED = { state: 'paused' as const, cursor: 0, outbox_seq: 0, pending: 0, lag_seconds: 0, failures: 0, failing_since: null, last_error: null, last_attempt_at: null, last_success_at: null, next_attempt_at: null, disabled_at: null, pruned_unread: 0 };

export const webhookRoutes: FastifyPluginAsync<RouteDeps> = async (app, deps) => {
  useTypeBox(app);
  const { webhooks } = deps.plane;

  const statusOf = (id: string): Omit<EndpointStatus, 'id' | 'tenant' | 'url' | 'events'> | null => {
    const [s] = webhooks.delivery?.status(id) ?? [];
    if (!s) return null;
    const { id: _i, tenant: _t, url: _u, events: _e, ...rest } = s;
    return rest;
  };
  const apiView = (r: WebhookRecord): View => ({ id: r.id, tenant: r.tenant, url: r.url, events: r.events, enabled: r.enabled, managed_by: 'api', created_at: r.created_at, updated_at: r.updated_at, ...(statusOf(r.id) ?? { ...PAUSED, outbox_seq: deps.store.lastSeq }) });
  const configView = (c: WebhookEndpointConfig): View => ({ id: c.id, tenant: c.tenant, url: c.url.href, events: c.events, enabled: true, managed_by: 'config', created_at: null, updated_at: null, ...(statusOf(c.id) ?? { ...PAUSED, outbox_seq: deps.store.lastSeq }) });

  /** The tenant the caller acts for; null: the operator without X-Tern-Tenant (every endpoint). */
  const scope = (req: FastifyRequest) => req.principal?.tenant ?? null;
  const visible = (req: FastifyRequest): View[] => {
    const t = scope(req);
    return [...webhooks.configured().map(configView), ...webhooks.list().map(apiView)].filter((v) => t === null || v.tenant === t).sort((a, b) => (a.id < b.id ? -1 : 1));
  };
  const find = (req: FastifyRequest, id: string): View => visible(req).find((v) => v.id === id) ?? (() => { throw notFound(`Webhook endpoint ${id}`); })();
  /** An endpoint of the API the caller may change (a config one: 409). */
  const own = (req: FastifyRequest, id: string): WebhookRecord => {
    const v = find(req, id);
    if (v.managed_by === 'config') throw new ApiError(409, 'managed_by_config', `Webhook endpoint ${id} is defined in the config file, which owns it; change it there`);
    return webhooks.get(id)!;
  };
  const checkUrl = (url: string) => {
    const why = webhooks.urlProblem(url);
    if (why) throw badRequest(`The webhook URL cannot be used: ${why}`, [{ field: 'body.url', message: why }]);
  };
  const checkEvents = (events: string[], tenant: string) => {
    const problems = webhooks.eventProblems(events, tenant);
    if (problems.length) throw badRequest(`The event types are invalid: ${problems.map((p) => `${p.field} ${p.message}`).join('; ')}`, problems);
  };

  app.get<{ Querystring: PageQuery }>(
    '/webhooks',
    { onRequest: allow(...MANAGERS), schema: { summary: "The tenant's webhook endpoints with their delivery state (the operator without X-Tern-Tenant: every endpoint)", querystring: strict(PageQuery), response: { 200: Page(WebhookView) } } },
    async (req) => {
      const after = decodeCursor(req.query.cursor, isString);
      const limit = req.query.limit ?? 100;
      return pageOf(visible(req).filter((v) => after === null || v.id > after).slice(0, limit + 1), limit, (v) => v.id);
    },
  );

  app.post<{ Body: Static<typeof CreateBody> }>(
    '/webhooks',
    { onRequest: allow(...MANAGERS), schema: { summary: 'Make a webhook endpoint; it gets events from the next one on (the secret is shown only in this answer)', body: CreateBody, response: { 201: WebhookCreated } } },
    async (req, reply) => {
      const tenant = tenantOf(req);
      checkUrl(req.body.url);
      checkEvents(req.body.events, tenant);
      const secret = newWebhookSecret();
      const id = webhooks.newId();
      const input = { id, tenant, url: new URL(req.body.url).href, events: req.body.events, secret, enabled: req.body.enabled ?? true };
      await mutate(deps, req, () => webhooks.createIn(input), () => ({ action: 'webhook.create', tenant, target: { type: 'webhook', id }, changes: { url: input.url, events: input.events, enabled: input.enabled } }));
      await webhooks.apply(id);
      return reply.code(201).send({ ...apiView(webhooks.get(id)!), secret });
    },
  );

  app.get<{ Params: { id: string } }>(
    '/webhooks/:id',
    { onRequest: allow(...MANAGERS), schema: { summary: 'One webhook endpoint and its delivery state', params: WebhookParams, response: { 200: WebhookView } } },
    async (req) => find(req, req.params.id),
  );

  app.patch<{ Params: { id: string }; Body: Static<typeof PatchBody> }>(
    '/webhooks/:id',
    {
      onRequest: allow(...MANAGERS),
      schema: { summary: 'Change a webhook endpoint: URL, event types (its cursor is kept), pause or resume it, rotate its secret', params: WebhookParams, body: PatchBody, response: { 200: WebhookChanged } },
    },
    async (req) => {
      const r = own(req, req.params.id);
      const { url, events, enabled, rotate_secret } = req.body;
      if (url !== undefined) checkUrl(url);
      if (events !== undefined) checkEvents(events, r.tenant);
      const secret = rotate_secret ? newWebhookSecret() : undefined;
      const change = { ...(url !== undefined ? { url: new URL(url).href } : {}), ...(events !== undefined ? { events } : {}), ...(enabled !== undefined ? { enabled } : {}), ...(secret ? { secret } : {}) };
      await mutate(deps, req, () => webhooks.updateIn(r.id, change), () => ({ action: 'webhook.update', tenant: r.tenant, target: { type: 'webhook', id: r.id }, changes: { url, events, enabled, rotate_secret } }));
      await webhooks.apply(r.id);
      return { ...apiView(webhooks.get(r.id)!), ...(secret ? { secret } : {}) };
    },
  );

  app.delete<{ Params: { id: string } }>(
    '/webhooks/:id',
    { onRequest: allow(...MANAGERS), schema: { summary: 'Delete a webhook endpoint: it gets nothing more', params: WebhookParams, response: { 204: NoContent } } },
    async (req, reply) => {
      const r = own(req, req.params.id);
      await mutate(deps, req, () => webhooks.deleteIn(r.id), () => ({ action: 'webhook.delete', tenant: r.tenant, target: { type: 'webhook', id: r.id }, changes: { url: r.url } }));
      await webhooks.apply(r.id);
      return reply.code(204).send();
    },
  );

  app.post<{ Params: { id: string } }>(
    '/webhooks/:id/enable',
    { onRequest: allow(...MANAGERS), schema: { summary: 'Enable again an endpoint disabled after failing too long: it gets the events it missed, in order', params: WebhookParams, response: { 200: WebhookView } } },
    async (req) => {
      const v = find(req, req.params.id);
      if (v.state === 'paused') throw new ApiError(409, 'paused', `Webhook endpoint ${v.id} is paused by its owner; PATCH it with {"enabled": true}`);
      await webhooks.delivery?.enable(v.id);
      await mutate(deps, req, () => null, () => ({ action: 'webhook.enable', tenant: v.tenant === '*' ? null : v.tenant, target: { type: 'webhook', id: v.id } }));
      return find(req, v.id);
    },
  );
};
