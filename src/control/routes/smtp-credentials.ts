/**
 * A tenant's SMTP credentials: `/api/v1/smtp-credentials`. Made and deleted here, they take effect for the
 * next SMTP AUTH. The config file's smtp_users (the bootstrap) are not listed and cannot be changed here.
 */
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyPluginAsync } from 'fastify';
import { useTypeBox } from '../api.js';
import { allow, tenantOf } from '../auth.js';
import { notFound } from '../errors.js';
import { Page, PageQuery, decodeCursor, isString, pageOf } from '../pagination.js';
import type { SmtpCredentialRecord } from '../smtp-credentials.js';
import { OneLine } from '../validate.js';
import { Epoch, IdParams, NoContent, mutate, strict, type RouteDeps } from './common.js';

const CredentialView = Type.Object(
  {
    id: Type.String(),
    name: Type.String(),
    username: Type.String({ description: 'the SMTP AUTH user name' }),
    created_at: Epoch('made'),
    created_by: Type.String(),
  },
  { title: 'SmtpCredential' },
);

const CredentialCreated = Type.Object(
  { ...CredentialView.properties, password: Type.String({ description: 'shown only here; Tern keeps a keyed hash of it' }) },
  { title: 'SmtpCredentialCreated' },
);

const CreateBody = strict({ name: OneLine(100, { description: 'what the credential is for' }) });

const view = (r: SmtpCredentialRecord): Static<typeof CredentialView> => ({ id: r.id, name: r.name, username: r.username, created_at: r.created_at, created_by: r.created_by });
const MANAGERS = ['operator', 'owner', 'admin'] as const;

export const smtpCredentialRoutes: FastifyPluginAsync<RouteDeps> = async (app, deps) => {
  useTypeBox(app);
  const { smtpCredentials } = deps.plane;

  app.get<{ Querystring: PageQuery }>(
    '/smtp-credentials',
    { onRequest: allow(...MANAGERS), schema: { summary: "The tenant's SMTP credentials (never their passwords)", querystring: strict(PageQuery), response: { 200: Page(CredentialView) } } },
    async (req) => {
      const limit = req.query.limit ?? 100;
      return pageOf(smtpCredentials.list(tenantOf(req), decodeCursor(req.query.cursor, isString), limit + 1).map(view), limit, (c) => c.id);
    },
  );

  app.post<{ Body: Static<typeof CreateBody> }>(
    '/smtp-credentials',
    { onRequest: allow(...MANAGERS), schema: { summary: 'Make an SMTP credential (the password is shown only in this answer); it works for AUTH at once', body: CreateBody, response: { 201: CredentialCreated } } },
    async (req, reply) => {
      const tenant = tenantOf(req);
      const made = await mutate(
        deps,
        req,
        () => smtpCredentials.createIn({ tenant, name: req.body.name, createdBy: req.principal!.id }),
        ({ record }) => ({ action: 'smtp_credential.create', tenant, target: { type: 'smtp_credential', id: record.id }, changes: { name: record.name, username: record.username } }),
      );
      return reply.code(201).send({ ...view(made.record), password: made.password });
    },
  );

  app.delete<{ Params: Static<typeof IdParams> }>(
    '/smtp-credentials/:id',
    { onRequest: allow(...MANAGERS), schema: { summary: 'Delete an SMTP credential (refused at the next AUTH)', params: IdParams, response: { 204: NoContent } } },
    async (req, reply) => {
      const tenant = tenantOf(req);
      const c = smtpCredentials.get(tenant, req.params.id);
      if (!c) throw notFound(`SMTP credential ${req.params.id}`);
      await mutate(deps, req, () => smtpCredentials.removeIn(tenant, c.id), () => ({ action: 'smtp_credential.delete', tenant, target: { type: 'smtp_credential', id: c.id }, changes: { name: c.name, username: c.username } }));
      return reply.code(204).send();
    },
  );
};
