/**
 * Tenants, for the operator: `/api/v1/tenants` (create, list, read, change, delete) and the first API key of
 * a tenant (`POST /api/v1/tenants/{id}/api-keys`). See tenants.ts for what the config file owns.
 */
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyPluginAsync } from 'fastify';
import { useTypeBox } from '../api.js';
import { allow } from '../auth.js';
import { ApiError, badRequest, notFound } from '../errors.js';
import { Page, PageQuery, decodeCursor, isString, pageOf } from '../pagination.js';
import { CONFIG_OWNED, type Tenant, type TenantChange } from '../tenants.js';
import { DomainName, OneLine, TenantId } from '../validate.js';
import { ApiKeyCreated, CreateApiKeyBody, apiKeyCreatedView } from './api-keys.js';
import { Epoch, NoContent, Nullable, mutate, strict, type RouteDeps } from './common.js';

export const TenantView = Type.Object(
  {
    id: Type.String(),
    name: Type.String(),
    pool: Type.String({ description: 'egress pool its mail leaves from' }),
    suspended: Type.Boolean({ description: 'true: its SMTP (and HTTP) sending is refused' }),
    suspended_reason: Nullable(Type.String()),
    daily_quota: Nullable(Type.Integer({ description: 'recipients per UTC day; null = no limit' })),
    sent_today: Type.Integer({ description: 'recipients counted against the quota today (UTC)' }),
    bounce_domain: Nullable(Type.String()),
    tracking: Type.Boolean(),
    allow_unverified_domains: Type.Boolean({ description: 'may send From domains that are not its verified sending domains (default false for tenants made here, true for the config file\'s)' }),
    managed_by: Type.Union([Type.Literal('config'), Type.Literal('api')], { description: 'config: named in the config file, which owns its pool and bounce domain' }),
    created_at: Epoch('made'),
    updated_at: Epoch('last changed'),
  },
  { title: 'Tenant' },
);

const Quota = Nullable(Type.Integer({ minimum: 0, maximum: 1_000_000_000, description: 'recipients per UTC day; null = no limit' }));
const PoolName = Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9._-]+$', description: 'a pool of the config file or made with POST /api/v1/pools' });

const CreateBody = strict({
  id: TenantId(),
  name: Type.Optional(OneLine(200)),
  pool: Type.Optional(PoolName),
  daily_quota: Type.Optional(Quota),
  bounce_domain: Type.Optional(Nullable(DomainName())),
  tracking: Type.Optional(Type.Boolean()),
  suspended: Type.Optional(Type.Boolean()),
  allow_unverified_domains: Type.Optional(Type.Boolean()),
});

const PatchBody = strict(
  {
    name: Type.Optional(OneLine(200)),
    pool: Type.Optional(PoolName),
    suspended: Type.Optional(Type.Boolean()),
    suspended_reason: Type.Optional(Nullable(OneLine(500))),
    daily_quota: Type.Optional(Quota),
    bounce_domain: Type.Optional(Nullable(DomainName())),
    tracking: Type.Optional(Type.Boolean()),
    allow_unverified_domains: Type.Optional(Type.Boolean()),
  },
  { minProperties: 1 },
);

const TenantParams = Type.Object({ id: TenantId() });

export const tenantRoutes: FastifyPluginAsync<RouteDeps> = async (app, deps) => {
  useTypeBox(app);
  const { tenants } = deps.plane;
  const view = (t: Tenant): Static<typeof TenantView> => ({ ...t, sent_today: tenants.usedToday(t.id) });
  const live = (id: string) => tenants.get(id) ?? (() => { throw notFound(`Tenant ${id}`); })();
  const checkPool = (pool: string | undefined) => {
    if (pool !== undefined && !deps.plane.pools.has(pool))
      throw badRequest(`No pool is named "${pool}"; the pools are ${deps.plane.pools.list().map((p) => p.name).join(', ')}`, [{ field: 'body.pool', message: 'is not a pool (GET /api/v1/pools lists them)' }]);
  };

  app.post<{ Body: Static<typeof CreateBody> }>(
    '/tenants',
    { onRequest: allow('operator'), schema: { summary: 'Create a tenant', body: CreateBody, response: { 201: TenantView } } },
    async (req, reply) => {
      const b = req.body;
      if (tenants.taken(b.id)) throw new ApiError(409, 'conflict', `The tenant id ${b.id} is taken (ids of deleted tenants are never given out again)`);
      checkPool(b.pool);
      const record = await mutate(
        deps,
        req,
        () => tenants.createIn({ id: b.id, name: b.name ?? b.id, pool: b.pool ?? 'default', daily_quota: b.daily_quota ?? null, bounce_domain: b.bounce_domain?.toLowerCase() ?? null, tracking: b.tracking ?? false, suspended: b.suspended ?? false, allow_unverified_domains: b.allow_unverified_domains ?? false }),
        (t) => ({ action: 'tenant.create', tenant: t.id, target: { type: 'tenant', id: t.id }, changes: { ...b } }),
      );
      tenants.refresh(record.id);
      return reply.code(201).send(view(live(record.id)));
    },
  );

  app.get<{ Querystring: PageQuery }>(
    '/tenants',
    { onRequest: allow('operator'), schema: { summary: 'List tenants (id order)', querystring: strict(PageQuery), response: { 200: Page(TenantView) } } },
    async (req) => {
      const after = decodeCursor(req.query.cursor, isString);
      const limit = req.query.limit ?? 100;
      return pageOf(tenants.list(after, limit + 1).map(view), limit, (t) => t.id);
    },
  );

  app.get<{ Params: { id: string } }>(
    '/tenants/:id',
    { onRequest: allow('operator'), schema: { summary: 'One tenant', params: TenantParams, response: { 200: TenantView } } },
    async (req) => view(live(req.params.id)),
  );

  app.patch<{ Params: { id: string }; Body: Static<typeof PatchBody> }>(
    '/tenants/:id',
    { onRequest: allow('operator'), schema: { summary: 'Change a tenant: suspend or resume it, set its daily quota, pool, name…', params: TenantParams, body: PatchBody, response: { 200: TenantView } } },
    async (req) => {
      const t = live(req.params.id);
      const change: TenantChange = { ...req.body, bounce_domain: req.body.bounce_domain?.toLowerCase() ?? req.body.bounce_domain };
      if (!('bounce_domain' in req.body)) delete change.bounce_domain;
      if (t.managed_by === 'config') {
        const owned = CONFIG_OWNED.filter((k) => k in change);
        if (owned.length) throw new ApiError(409, 'managed_by_config', `Tenant ${t.id} is defined in the config file, which owns its ${owned.join(' and ')}; change ${owned.length > 1 ? 'them' : 'it'} there`);
      }
      checkPool(change.pool);
      await mutate(deps, req, () => tenants.updateIn(t.id, change), () => ({ action: t.suspended !== change.suspended && change.suspended !== undefined ? (change.suspended ? 'tenant.suspend' : 'tenant.resume') : 'tenant.update', tenant: t.id, target: { type: 'tenant', id: t.id }, changes: { ...req.body } }));
      tenants.refresh(t.id);
      return view(live(t.id));
    },
  );

  app.delete<{ Params: { id: string } }>(
    '/tenants/:id',
    { onRequest: allow('operator'), schema: { summary: 'Delete a tenant: its keys, SMTP credentials, users and sessions go at once; its id is never reused', params: TenantParams, response: { 204: NoContent } } },
    async (req, reply) => {
      const t = live(req.params.id);
      if (t.managed_by === 'config') throw new ApiError(409, 'managed_by_config', `Tenant ${t.id} is defined in the config file; remove it there`);
      const { plane } = deps;
      const removed = await mutate(
        deps,
        req,
        () => {
          plane.tenants.deleteIn(t.id);
          return { api_keys: plane.apiKeys.revokeAllIn(t.id), smtp_credentials: plane.smtpCredentials.removeAllIn(t.id), users: plane.users.removeAllIn(t.id), domains: plane.domains.removeAllIn(t.id), webhooks: plane.webhooks.removeAllIn(t.id) };
        },
        (removed) => ({ action: 'tenant.delete', tenant: t.id, target: { type: 'tenant', id: t.id }, changes: { removed } }),
      );
      tenants.refresh(t.id);
      plane.domains.refresh();
      for (const id of removed.webhooks) await plane.webhooks.apply(id);
      return reply.code(204).send();
    },
  );

  app.post<{ Params: { id: string }; Body: Static<typeof CreateApiKeyBody> }>(
    '/tenants/:id/api-keys',
    { onRequest: allow('operator'), schema: { summary: 'Make an API key for a tenant (the token is shown only in this answer)', params: TenantParams, body: CreateApiKeyBody, response: { 201: ApiKeyCreated } } },
    async (req, reply) => {
      const t = live(req.params.id);
      const made = await mutate(
        deps,
        req,
        () => deps.plane.apiKeys.createIn({ tenant: t.id, role: req.body.role, name: req.body.name, createdBy: 'operator' }),
        ({ record }) => ({ action: 'api_key.create', tenant: t.id, target: { type: 'api_key', id: record.id }, changes: { name: record.name, role: record.role } }),
      );
      return reply.code(201).send(apiKeyCreatedView(made.record, made.token));
    },
  );
};

