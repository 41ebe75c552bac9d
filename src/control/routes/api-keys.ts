/** A tenant's API keys: `/api/v1/api-keys` (owners and admins; nobody grants a role above their own). */
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyPluginAsync } from 'fastify';
import { useTypeBox } from '../api.js';
import type { ApiKeyRecord } from '../api-keys.js';
import { allow, tenantOf } from '../auth.js';
import { ApiError, notFound } from '../errors.js';
import { Page, PageQuery, decodeCursor, isString, pageOf } from '../pagination.js';
import { mayGrant, TENANT_ROLES } from '../roles.js';
import { OneLine } from '../validate.js';
import { Epoch, IdParams, NoContent, Nullable, mutate, strict, type RouteDeps } from './common.js';

const RoleName = Type.Union(TENANT_ROLES.map((r) => Type.Literal(r)), { description: 'owner, admin, marketer or viewer' });

export const ApiKeyView = Type.Object(
  {
    id: Type.String(),
    tenant: Type.String(),
    name: Type.String(),
    role: RoleName,
    created_at: Epoch('made'),
    created_by: Type.String({ description: 'who made it: "operator", a user id or an API key id' }),
    last_used_at: Nullable(Epoch('last request, to the minute')),
  },
  { title: 'ApiKey' },
);

export const ApiKeyCreated = Type.Object(
  { ...ApiKeyView.properties, token: Type.String({ description: 'tern_<id>_<secret>: shown only here, stored hashed; send it as "Authorization: Bearer <token>"' }) },
  { title: 'ApiKeyCreated' },
);

export const CreateApiKeyBody = strict({ name: OneLine(100, { description: 'what the key is for' }), role: RoleName });

export const apiKeyView = (r: ApiKeyRecord): Static<typeof ApiKeyView> => ({ id: r.id, tenant: r.tenant, name: r.name, role: r.role, created_at: r.created_at, created_by: r.created_by, last_used_at: r.last_used_at });
export const apiKeyCreatedView = (r: ApiKeyRecord, token: string): Static<typeof ApiKeyCreated> => ({ ...apiKeyView(r), token });

const MANAGERS = ['operator', 'owner', 'admin'] as const;

export const apiKeyRoutes: FastifyPluginAsync<RouteDeps> = async (app, deps) => {
  useTypeBox(app);
  const { apiKeys } = deps.plane;

  app.get<{ Querystring: PageQuery }>(
    '/api-keys',
    { onRequest: allow(...MANAGERS), schema: { summary: "The tenant's API keys (never their secrets)", querystring: strict(PageQuery), response: { 200: Page(ApiKeyView) } } },
    async (req) => {
      const limit = req.query.limit ?? 100;
      return pageOf(apiKeys.list(tenantOf(req), decodeCursor(req.query.cursor, isString), limit + 1).map(apiKeyView), limit, (k) => k.id);
    },
  );

  app.post<{ Body: Static<typeof CreateApiKeyBody> }>(
    '/api-keys',
    { onRequest: allow(...MANAGERS), schema: { summary: 'Make an API key (the token is shown only in this answer)', body: CreateApiKeyBody, response: { 201: ApiKeyCreated } } },
    async (req, reply) => {
      const tenant = tenantOf(req);
      const p = req.principal!;
      if (!mayGrant(p.role, req.body.role)) throw new ApiError(403, 'forbidden', `A ${p.role} cannot make a key with the role ${req.body.role}`);
      const made = await mutate(
        deps,
        req,
        () => apiKeys.createIn({ tenant, role: req.body.role, name: req.body.name, createdBy: p.id }),
        ({ record }) => ({ action: 'api_key.create', tenant, target: { type: 'api_key', id: record.id }, changes: { name: record.name, role: record.role } }),
      );
      return reply.code(201).send(apiKeyCreatedView(made.record, made.token));
    },
  );

  app.delete<{ Params: Static<typeof IdParams> }>(
    '/api-keys/:id',
    { onRequest: allow(...MANAGERS), schema: { summary: 'Revoke an API key (takes effect with the next request)', params: IdParams, response: { 204: NoContent } } },
    async (req, reply) => {
      const tenant = tenantOf(req);
      const key = apiKeys.get(tenant, req.params.id);
      if (!key) throw notFound(`API key ${req.params.id}`);
      if (!mayGrant(req.principal!.role, key.role)) throw new ApiError(403, 'forbidden', `A ${req.principal!.role} cannot revoke a key with the role ${key.role}`);
      await mutate(deps, req, () => apiKeys.revokeIn(tenant, key.id), () => ({ action: 'api_key.revoke', tenant, target: { type: 'api_key', id: key.id }, changes: { name: key.name, role: key.role } }));
      return reply.code(204).send();
    },
  );
};
