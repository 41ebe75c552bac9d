/**
 * Web sign-in: `/api/v1/auth/…` — login and logout (a session cookie: HttpOnly, SameSite=Lax, Secure when
 * the listener speaks TLS), who am I, changing a password, and resetting a forgotten one by a single-use
 * token sent by mail through Tern. Login and reset requests are rate-limited per client address and
 * account (control.login_rate) on top of the API's limit, and answer the same whether the account exists
 * or not.
 */
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import { normalizeAddress } from '../../core/net.js';
import { useTypeBox } from '../api.js';
import { allow, allowAnyone, originOf, rateLimited, sessionOf, SESSION_COOKIE } from '../auth.js';
import { ApiError } from '../errors.js';
import { RESET_TTL_MS, normalizeEmail, type UserRecord } from '../users.js';
import { Mailbox, Password } from '../validate.js';
import { Epoch, NoContent, Nullable, mutate, publicUrl, strict, type RouteDeps } from './common.js';
import { UserView, userView } from './users.js';

const LoginBody = strict({ email: Mailbox(), password: Type.String({ minLength: 1, maxLength: 256 }) });
const LoginAnswer = Type.Object({
  user: UserView,
  csrf_token: Type.String({ description: 'send it as X-Tern-CSRF with every POST, PATCH and DELETE made with the session cookie' }),
  expires_at: Epoch('the session ends'),
});
const Me = Type.Object({
  kind: Type.String({ description: 'operator, api_key or session' }),
  id: Type.String(),
  tenant: Nullable(Type.String()),
  role: Type.String(),
  name: Nullable(Type.String()),
  csrf_token: Nullable(Type.String({ description: 'sessions only' })),
});
const ResetBody = strict({ email: Mailbox() });
const ResetConfirmBody = strict({ token: Type.String({ minLength: 43, maxLength: 43, pattern: '^[A-Za-z0-9_-]+$', description: 'the token of the reset mail' }), password: Password() });
const ChangePasswordBody = strict({ current_password: Type.String({ minLength: 1, maxLength: 256 }), new_password: Password() });

export const sessionRoutes: FastifyPluginAsync<RouteDeps> = async (app, deps) => {
  useTypeBox(app);
  const { users, settings } = deps.plane;
  const { count, periodMs } = settings.loginRate;
  // per address and account (guessing one password), and per address (trying many accounts)
  const perAccount = app.createRateLimit({ max: count, timeWindow: periodMs, keyGenerator: (req) => `login:${normalizeAddress(req.ip)}:${normalizeEmail((req.body as { email: string }).email)}` });
  const perAddress = app.createRateLimit({ max: count * 10, timeWindow: periodMs, keyGenerator: (req) => `login-ip:${normalizeAddress(req.ip)}` });
  const throttle = async (req: FastifyRequest) => {
    for (const limiter of [perAccount, perAddress]) {
      const r = await limiter(req);
      if (!r.isAllowed && r.isExceeded) throw rateLimited(req, r.ttlInSeconds);
    }
  };
  const setSessionCookie = (req: FastifyRequest, reply: FastifyReply, token: string, maxAgeS: number) =>
    reply.setCookie(SESSION_COOKIE, token, { path: '/', httpOnly: true, sameSite: 'lax', secure: req.protocol === 'https', maxAge: maxAgeS });

  const sendReset = async (req: FastifyRequest, user: UserRecord) => {
    const token = await mutate(deps, req, () => users.resetTokenIn(user), () => ({ action: 'user.password_reset_request', tenant: user.tenant, target: { type: 'user', id: user.id }, changes: {} }));
    await deps.mailer.send({
      to: user.email,
      subject: 'Reset your Tern password',
      lines: [
        'Someone (we hope you) asked to reset the password of your Tern account.',
        '',
        'Choose a new password here:',
        `${publicUrl(deps, req)}/reset-password?token=${token}`,
        '',
        `The link works once, until ${new Date(Date.now() + RESET_TTL_MS).toUTCString()}. If you did not ask, ignore this mail.`,
        `(Without the web: POST /api/v1/auth/password-reset/confirm {"token": "${token}", "password": "..."})`,
      ],
    });
  };

  app.post<{ Body: Static<typeof LoginBody> }>(
    '/auth/login',
    { onRequest: allowAnyone(), schema: { summary: 'Log in: sets the session cookie and gives the CSRF token', body: LoginBody, response: { 200: LoginAnswer } } },
    async (req, reply) => {
      await throttle(req);
      const user = await users.checkLogin(req.body.email, req.body.password);
      if (!user || !deps.plane.tenants.get(user.tenant)) {
        req.log.warn({ ip: normalizeAddress(req.ip), email: normalizeEmail(req.body.email) }, 'control: login failed');
        throw new ApiError(401, 'invalid_login', 'Wrong address or password');
      }
      req.principal = { kind: 'session', tenant: user.tenant, role: user.role, id: user.id, name: user.email };
      const origin = originOf(req);
      const { token, session } = await mutate(
        deps,
        req,
        () => users.openSessionIn(user, settings.sessionTtlMs, { ip: origin.ip, user_agent: origin.user_agent }),
        () => ({ action: 'user.login', tenant: user.tenant, target: { type: 'user', id: user.id }, changes: {} }),
      );
      setSessionCookie(req, reply, token, Math.floor(settings.sessionTtlMs / 1000));
      return { user: userView(user), csrf_token: session.csrf, expires_at: session.expires_at };
    },
  );

  app.post(
    '/auth/logout',
    { onRequest: allow('owner', 'admin', 'marketer', 'viewer'), schema: { summary: 'End this session (needs X-Tern-CSRF)', response: { 204: NoContent } } },
    async (req, reply) => {
      const s = sessionOf(req);
      if (!s) throw new ApiError(400, 'not_a_session', 'Only a session cookie can be logged out; API keys are revoked with DELETE /api/v1/api-keys/{id}');
      const p = req.principal!;
      await mutate(deps, req, () => users.closeSessionIn(s.token), () => ({ action: 'user.logout', tenant: p.tenant, target: { type: 'user', id: p.id }, changes: {} }));
      reply.clearCookie(SESSION_COOKIE, { path: '/' });
      return reply.code(204).send();
    },
  );

  app.get(
    '/auth/me',
    { onRequest: allow('operator', 'owner', 'admin', 'marketer', 'viewer'), schema: { summary: 'Who the credentials of this request belong to', response: { 200: Me } } },
    async (req) => {
      const p = req.principal!;
      return { kind: p.kind, id: p.id, tenant: p.tenant, role: p.role, name: p.name ?? null, csrf_token: sessionOf(req)?.session.csrf ?? null };
    },
  );

  app.post<{ Body: Static<typeof ChangePasswordBody> }>(
    '/auth/password',
    { onRequest: allow('owner', 'admin', 'marketer', 'viewer'), schema: { summary: 'Change your password (sessions only); every session ends, this one gets a new cookie', body: ChangePasswordBody, response: { 200: LoginAnswer } } },
    async (req, reply) => {
      const p = req.principal!;
      if (!sessionOf(req)) throw new ApiError(400, 'not_a_session', 'Passwords belong to users; log in to change yours');
      const user = users.byId(p.id)!;
      const checked = await users.checkLogin(user.email, req.body.current_password);
      if (!checked) throw new ApiError(403, 'invalid_login', 'The current password is wrong');
      const hash = await users.hashPassword(req.body.new_password);
      const origin = originOf(req);
      const { token, session } = await mutate(
        deps,
        req,
        () => {
          users.setPasswordIn(checked, hash);
          return users.openSessionIn(checked, settings.sessionTtlMs, { ip: origin.ip, user_agent: origin.user_agent });
        },
        () => ({ action: 'user.password_change', tenant: user.tenant, target: { type: 'user', id: user.id }, changes: {} }),
      );
      setSessionCookie(req, reply, token, Math.floor(settings.sessionTtlMs / 1000));
      return { user: userView(users.byId(user.id)!), csrf_token: session.csrf, expires_at: session.expires_at };
    },
  );

  app.post<{ Body: Static<typeof ResetBody> }>(
    '/auth/password-reset',
    { onRequest: allowAnyone(), schema: { summary: 'Mail a single-use password reset link (202 whether or not the address has an account)', body: ResetBody, response: { 202: NoContent } } },
    async (req, reply) => {
      await throttle(req);
      const user = users.byEmail(req.body.email);
      // the answer leaves before the work: its timing says nothing about whether the account exists
      if (user && deps.plane.tenants.get(user.tenant)) sendReset(req, user).catch((err) => req.log.error({ err }, 'control: password reset mail failed'));
      return reply.code(202).send();
    },
  );

  app.post<{ Body: Static<typeof ResetConfirmBody> }>(
    '/auth/password-reset/confirm',
    { onRequest: allowAnyone(), schema: { summary: 'Set a new password with the token of a reset mail; every session of the account ends', body: ResetConfirmBody, response: { 204: NoContent } } },
    async (req, reply) => {
      const hash = await users.hashPassword(req.body.password);
      const user = await mutate(
        deps,
        req,
        () => {
          const u = users.takeResetIn(req.body.token);
          if (u) users.setPasswordIn(u, hash);
          return u;
        },
        (u) => (u ? { action: 'user.password_reset', tenant: u.tenant, target: { type: 'user', id: u.id }, changes: {} } : null),
      );
      if (!user) throw new ApiError(400, 'invalid_token', 'This reset link is not valid any more (used or expired); ask for a new one');
      return reply.code(204).send();
    },
  );
};
