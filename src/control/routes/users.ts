/**
 * A tenant's people: `/api/v1/users` and `/api/v1/invitations`. Owners and admins invite by address with a
 * role (never above their own); the invitation goes out as mail through Tern, and accepting it
 * (`POST /api/v1/invitations/accept`, no credentials: the token is the credential) sets the password.
 * A tenant always keeps at least one owner.
 */
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import { useTypeBox } from '../api.js';
import { allow, allowAnyone, tenantOf } from '../auth.js';
import { ApiError, conflict, notFound } from '../errors.js';
import { Page, PageQuery, decodeCursor, isString, pageOf } from '../pagination.js';
import { mayGrant, TENANT_ROLES, type TenantRole } from '../roles.js';
import { normalizeEmail, type InvitationRecord, type UserRecord } from '../users.js';
import { Mailbox, OneLine, Password } from '../validate.js';
import { Epoch, IdParams, NoContent, mutate, publicUrl, strict, type RouteDeps } from './common.js';

const RoleName = Type.Union(TENANT_ROLES.map((r) => Type.Literal(r)), { description: 'owner, admin, marketer or viewer' });

export const UserView = Type.Object(
  { id: Type.String(), tenant: Type.String(), email: Type.String(), name: Type.String(), role: RoleName, created_at: Epoch('joined'), updated_at: Epoch('last changed') },
  { title: 'User' },
);
const InvitationView = Type.Object(
  { id: Type.String(), email: Type.String(), role: RoleName, invited_by: Type.String(), created_at: Epoch('sent'), expires_at: Epoch('valid until') },
  { title: 'Invitation' },
);

const PatchUser = strict({ role: Type.Optional(RoleName), name: Type.Optional(OneLine(200)) }, { minProperties: 1 });
const InviteBody = strict({ email: Mailbox(), role: RoleName });
const AcceptBody = strict({ token: Type.String({ minLength: 43, maxLength: 43, pattern: '^[A-Za-z0-9_-]+$', description: 'the token of the invitation mail' }), password: Password(), name: Type.Optional(OneLine(200)) });

export const userView = (u: UserRecord): Static<typeof UserView> => ({ id: u.id, tenant: u.tenant, email: u.email, name: u.name, role: u.role, created_at: u.created_at, updated_at: u.updated_at });
const invitationView = (i: InvitationRecord): Static<typeof InvitationView> => ({ id: i.id, email: i.email, role: i.role, invited_by: i.invited_by, created_at: i.created_at, expires_at: i.expires_at });

const MANAGERS = ['operator', 'owner', 'admin'] as const;

export const userRoutes: FastifyPluginAsync<RouteDeps> = async (app, deps) => {
  useTypeBox(app);
  const { users, tenants } = deps.plane;

  /** A change to `target` by the caller: nobody acts on someone above their own role. */
  const mayManage = (req: FastifyRequest, target: TenantRole) => {
    const role = req.principal!.role;
    if (!mayGrant(role, target)) throw new ApiError(403, 'forbidden', `A ${role} cannot change a user with the role ${target}`);
  };
  const keepsAnOwner = (u: UserRecord, nextRole: TenantRole | null) => {
    if (u.role === 'owner' && nextRole !== 'owner' && users.owners(u.tenant).length <= 1)
      throw conflict('This is the tenant\'s last owner; make someone else owner first');
  };

  app.get<{ Querystring: PageQuery }>(
    '/users',
    { onRequest: allow(...MANAGERS), schema: { summary: "The tenant's users", querystring: strict(PageQuery), response: { 200: Page(UserView) } } },
    async (req) => {
      const limit = req.query.limit ?? 100;
      return pageOf(users.list(tenantOf(req), decodeCursor(req.query.cursor, isString), limit + 1).map(userView), limit, (u) => u.id);
    },
  );

  app.patch<{ Params: Static<typeof IdParams>; Body: Static<typeof PatchUser> }>(
    '/users/:id',
    { onRequest: allow(...MANAGERS), schema: { summary: "Change a user's role or name (applies to their next request)", params: IdParams, body: PatchUser, response: { 200: UserView } } },
    async (req) => {
      const tenant = tenantOf(req);
      const u = users.get(tenant, req.params.id);
      if (!u) throw notFound(`User ${req.params.id}`);
      mayManage(req, u.role);
      if (req.body.role) {
        mayManage(req, req.body.role);
        keepsAnOwner(u, req.body.role);
      }
      const next = await mutate(deps, req, () => users.updateIn(u, req.body), () => ({ action: 'user.update', tenant, target: { type: 'user', id: u.id }, changes: { ...req.body } }));
      return userView(next);
    },
  );

  app.delete<{ Params: Static<typeof IdParams> }>(
    '/users/:id',
    { onRequest: allow(...MANAGERS), schema: { summary: 'Remove a user (their sessions end at once)', params: IdParams, response: { 204: NoContent } } },
    async (req, reply) => {
      const tenant = tenantOf(req);
      const u = users.get(tenant, req.params.id);
      if (!u) throw notFound(`User ${req.params.id}`);
      mayManage(req, u.role);
      keepsAnOwner(u, null);
      await mutate(deps, req, () => users.removeIn(u), () => ({ action: 'user.delete', tenant, target: { type: 'user', id: u.id }, changes: { email: u.email, role: u.role } }));
      return reply.code(204).send();
    },
  );

  app.get<{ Querystring: PageQuery }>(
    '/invitations',
    { onRequest: allow(...MANAGERS), schema: { summary: 'Invitations not yet accepted', querystring: strict(PageQuery), response: { 200: Page(InvitationView) } } },
    async (req) => {
      const limit = req.query.limit ?? 100;
      return pageOf(users.listInvitations(tenantOf(req), decodeCursor(req.query.cursor, isString), limit + 1).map(invitationView), limit, (i) => i.id);
    },
  );

  app.post<{ Body: Static<typeof InviteBody> }>(
    '/invitations',
    { onRequest: allow(...MANAGERS), schema: { summary: 'Invite someone by mail with a role; a pending invitation of the same address is replaced', body: InviteBody, response: { 201: InvitationView } } },
    async (req, reply) => {
      const tenant = tenantOf(req);
      const p = req.principal!;
      if (!mayGrant(p.role, req.body.role)) throw new ApiError(403, 'forbidden', `A ${p.role} cannot invite someone as ${req.body.role}`);
      const email = normalizeEmail(req.body.email);
      const existing = users.byEmail(email);
      if (existing && existing.tenant === tenant) throw conflict(`${email} is already a user of this tenant`);
      const made = await mutate(
        deps,
        req,
        () => {
          for (const old of users.listInvitations(tenant, null, Number.MAX_SAFE_INTEGER)) if (old.email === email) users.revokeInvitationIn(tenant, old.id);
          return users.inviteIn({ tenant, email, role: req.body.role, invitedBy: p.id });
        },
        ({ invitation }) => ({ action: 'invitation.create', tenant, target: { type: 'invitation', id: invitation.id }, changes: { email, role: invitation.role } }),
      );
      const name = tenants.get(tenant)?.name ?? tenant;
      const link = `${publicUrl(deps, req)}/accept-invitation?token=${made.token}`;
      await deps.mailer.send({
        to: email,
        subject: `You are invited to ${name} on Tern`,
        lines: [
          `You have been invited to join ${name} on Tern as ${made.invitation.role}.`,
          '',
          'To accept, choose a password here:',
          link,
          '',
          `The invitation is valid until ${new Date(made.invitation.expires_at).toUTCString()} and works once.`,
          `(Without the web: POST /api/v1/invitations/accept {"token": "${made.token}", "password": "..."})`,
        ],
      });
      return reply.code(201).send(invitationView(made.invitation));
    },
  );

  app.delete<{ Params: Static<typeof IdParams> }>(
    '/invitations/:id',
    { onRequest: allow(...MANAGERS), schema: { summary: 'Withdraw an invitation', params: IdParams, response: { 204: NoContent } } },
    async (req, reply) => {
      const tenant = tenantOf(req);
      const inv = users.listInvitations(tenant, null, Number.MAX_SAFE_INTEGER).find((i) => i.id === req.params.id);
      if (!inv) throw notFound(`Invitation ${req.params.id}`);
      await mutate(deps, req, () => users.revokeInvitationIn(tenant, inv.id), () => ({ action: 'invitation.revoke', tenant, target: { type: 'invitation', id: inv.id }, changes: { email: inv.email } }));
      return reply.code(204).send();
    },
  );

  app.post<{ Body: Static<typeof AcceptBody> }>(
    '/invitations/accept',
    { onRequest: allowAnyone(), schema: { summary: 'Accept an invitation: sets the password of the new account (then log in)', body: AcceptBody, response: { 201: UserView } } },
    async (req, reply) => {
      const inv = users.invitation(req.body.token);
      if (!inv || !tenants.get(inv.tenant)) throw new ApiError(400, 'invalid_token', 'This invitation is not valid any more (used, withdrawn or expired); ask for a new one');
      if (users.byEmail(inv.email)) throw conflict(`${inv.email} already has an account; log in with it (an address belongs to one tenant)`);
      const passwordHash = await users.hashPassword(req.body.password);
      const user = await mutate(
        deps,
        req,
        () => {
          // taken inside the transaction: two concurrent accepts cannot both succeed
          const taken = users.takeInvitationIn(req.body.token);
          if (!taken || users.byEmail(taken.email)) return null;
          return users.createIn({ tenant: taken.tenant, email: taken.email, name: req.body.name ?? taken.email, role: taken.role, passwordHash });
        },
        (u) => (u ? { action: 'invitation.accept', tenant: u.tenant, target: { type: 'user', id: u.id }, changes: { email: u.email, role: u.role } } : null),
      );
      if (!user) throw new ApiError(400, 'invalid_token', 'This invitation is not valid any more (used, withdrawn or expired); ask for a new one');
      return reply.code(201).send(userView(user));
    },
  );
};
