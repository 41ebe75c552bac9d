/**
 * The audit log: `GET /api/v1/audit?action=&limit=&cursor=`, newest first. Owners read their tenant's
 * entries; the operator reads everything, or one tenant's with X-Tern-Tenant.
 */
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyPluginAsync } from 'fastify';
import { useTypeBox } from '../api.js';
import { allow } from '../auth.js';
import { PageQuery, decodeCursor, encodeCursor, isNumber } from '../pagination.js';
import { Epoch, Nullable, strict, type RouteDeps } from './common.js';

const AuditView = Type.Object(
  {
    id: Type.Integer(),
    at: Epoch('when'),
    action: Type.String({ description: 'resource.verb: tenant.create, api_key.revoke, user.login, suppression.add, …' }),
    tenant: Nullable(Type.String({ description: 'the tenant whose data changed' })),
    target: Nullable(Type.Object({ type: Type.String(), id: Type.String() })),
    changes: Type.Record(Type.String(), Type.Unknown(), { description: 'the fields set (never a secret)' }),
    actor: Type.Object({
      kind: Type.String({ description: 'operator, api_key, session or anonymous (login, invitation, reset)' }),
      id: Nullable(Type.String()),
      role: Nullable(Type.String()),
      tenant: Nullable(Type.String()),
      name: Type.Optional(Type.String()),
    }),
    ip: Type.String(),
    user_agent: Nullable(Type.String()),
  },
  { title: 'AuditEntry' },
);

const AuditQuery = strict({ action: Type.Optional(Type.String({ pattern: '^[a-z_]{1,40}(\\.[a-z_]{1,40})?$', description: 'an action (api_key.revoke) or a resource (api_key)' })), ...PageQuery });

export const auditRoutes: FastifyPluginAsync<RouteDeps> = async (app, deps) => {
  useTypeBox(app);

  app.get<{ Querystring: Static<typeof AuditQuery> }>(
    '/audit',
    {
      onRequest: allow('operator', 'owner'),
      schema: {
        summary: 'Audit log, newest first: every change made through the API, who made it and from where',
        querystring: AuditQuery,
        response: { 200: Type.Object({ items: Type.Array(AuditView), next_cursor: Nullable(Type.String()) }) },
      },
    },
    async (req) => {
      // an owner reads their tenant's; the operator everything, or the tenant named in X-Tern-Tenant
      const tenant = req.principal!.tenant;
      const { entries, next } = deps.plane.audit.list({ tenant, before: decodeCursor(req.query.cursor, isNumber), limit: req.query.limit ?? 100, action: req.query.action });
      return { items: entries, next_cursor: next === null ? null : encodeCursor(next) };
    },
  );
};
