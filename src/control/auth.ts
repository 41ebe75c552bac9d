/**
 * Who is asking, and may they: the control API's credentials, roles and rate limits.
 *
 * Credentials, in the order they are looked at:
 * - `Authorization: Bearer tern_<id>_<secret>`: an API key (one tenant, one role);
 * - `Authorization: Bearer <anything else>`: the operator token (`control.admin_token` / TERN_ADMIN_TOKEN),
 *   compared in constant time;
 * - the `tern_session` cookie of a logged-in user (one tenant, one role). Unsafe methods made with it must
 *   carry `X-Tern-CSRF` with the token the session was given at login (cookies are sent by browsers on their
 *   own; that header is not).
 *
 * Every route declares the roles it allows with `allow(...)` (an onRequest hook: nothing of a refused request
 * is parsed). Tenant routes act for the tenant of the credential, never one named in the request. The
 * operator acts for a tenant by naming it in `X-Tern-Tenant` (any tenant route that lists `operator`); a
 * tenant credential that names another tenant there is refused. Whatever belongs to another tenant is
 * answered 404, exactly as if it did not exist.
 */
import crypto from 'node:crypto';
import type { FastifyReply, FastifyRequest, onRequestAsyncHookHandler } from 'fastify';
import { normalizeAddress } from '../core/net.js';
import { looksLikeApiKey, type ApiKeys } from './api-keys.js';
import type { AuditOrigin } from './audit.js';
import { ApiError, badRequest, sendError } from './errors.js';
import type { Principal, Role } from './roles.js';
import type { TenantDirectory } from './tenants.js';
import type { SessionRecord, Users } from './users.js';

export type { Principal, Role } from './roles.js';

export const SESSION_COOKIE = 'tern_session';
export const CSRF_HEADER = 'x-tern-csrf';
export const TENANT_HEADER = 'x-tern-tenant';

/** What allow() reports for a route: its roles, or public. */
export interface RouteAccess {
  roles: readonly Role[];
  public: boolean;
}

type RateCheck = (req: FastifyRequest) => Promise<{ isAllowed: true } | { isAllowed: false; isExceeded: boolean; max: number; remaining: number; ttlInSeconds: number }>;

declare module 'fastify' {
  interface FastifyRequest {
    /** who the request acts as, once allow() has run (null on public routes without credentials) */
    principal: Principal | null;
  }
  interface FastifyInstance {
    controlAuth: Authenticator;
  }
}

const kChecked = Symbol('tern.authenticated');
const kSession = Symbol('tern.session');
const kRateLimited = Symbol('tern.rateLimited');
const UNSAFE = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

type Tagged = onRequestAsyncHookHandler & { access: RouteAccess };

/** The hook a route declares its roles with; the route answers 401/403 before anything else is read. */
export function allow(...roles: Role[]): Tagged {
  if (!roles.length) throw new Error('allow() needs at least one role; use allowAnyone() for public routes');
  return guard({ roles, public: false });
}

/** For routes anyone may call (login, password reset, the OpenAPI document): still rate-limited by address. */
export function allowAnyone(): Tagged {
  return guard({ roles: [], public: true });
}

function guard(access: RouteAccess): Tagged {
  // replies itself rather than throwing: a plugin with an error handler of its own (queues) keeps this answer
  const hook = async function (req: FastifyRequest, reply: FastifyReply) {
    try {
      await req.server.controlAuth.check(req, access);
    } catch (err) {
      if (err instanceof ApiError) return sendError(reply, err);
      throw err;
    }
  };
  return Object.assign(hook, { access }) as Tagged;
}

/** The access a route's hooks declare, if any. */
export function accessOf(hooks: unknown): RouteAccess | null {
  const list = Array.isArray(hooks) ? hooks : hooks ? [hooks] : [];
  for (const h of list) if (h && typeof h === 'function' && 'access' in h) return (h as Tagged).access;
  return null;
}

/** True when a route's roles make it tenant-scoped (it acts on one tenant's data). */
export const isTenantScoped = (access: RouteAccess) => access.roles.some((r) => r !== 'operator');

/** The tenant a tenant route acts for; the operator must name it with X-Tern-Tenant. */
export function tenantOf(req: FastifyRequest): string {
  const p = req.principal;
  if (p?.tenant) return p.tenant;
  throw new ApiError(400, 'tenant_required', 'The operator acts for a tenant by naming it in the X-Tern-Tenant header', [{ field: 'header.x-tern-tenant', message: 'is required for the operator token on tenant routes' }]);
}

/** Who made the request and from where, for the audit log. */
export function originOf(req: FastifyRequest): AuditOrigin {
  const p = req.principal;
  const ua = req.headers['user-agent'];
  return {
    actor: p ? { kind: p.kind, id: p.id, role: p.role, tenant: p.tenant, ...(p.name ? { name: p.name } : {}) } : { kind: 'anonymous', id: null, role: null, tenant: null },
    ip: normalizeAddress(req.ip),
    // header-safe by construction: Node refuses CR/LF in header values; cut it to a sane length
    user_agent: typeof ua === 'string' ? ua.slice(0, 256) : null,
  };
}

/** The session behind a cookie-authenticated request (logout needs it). */
export function sessionOf(req: FastifyRequest): { token: string; session: SessionRecord } | null {
  return (req as unknown as Record<symbol, { token: string; session: SessionRecord } | undefined>)[kSession] ?? null;
}

const digest = (s: string) => crypto.createHash('sha256').update(s).digest();

export interface AuthenticatorDeps {
  adminToken: string | null;
  apiKeys: ApiKeys;
  users: Users;
  tenants: TenantDirectory;
}

export class Authenticator {
  private readonly operatorDigest: Buffer | null;
  /** set by the API plugin once @fastify/rate-limit is registered */
  apiRate: RateCheck | null = null;

  constructor(private readonly deps: AuthenticatorDeps) {
    this.operatorDigest = deps.adminToken ? digest(deps.adminToken) : null;
  }

  /** Who the credentials of a request belong to: a principal, null (none given), or an ApiError (bad ones). */
  authenticate(req: FastifyRequest): Principal | null | ApiError {
    const header = req.headers.authorization;
    if (header !== undefined) {
      const token = /^Bearer ([\x21-\x7e]+)$/.exec(header)?.[1];
      if (!token) return new ApiError(401, 'unauthorized', 'Send credentials as "Authorization: Bearer <API key or operator token>"');
      if (looksLikeApiKey(token)) {
        const key = this.deps.apiKeys.verify(token);
        if (!key || !this.deps.tenants.get(key.tenant)) return new ApiError(401, 'unauthorized', 'This API key is not valid (revoked, or mistyped)');
        return { kind: 'api_key', tenant: key.tenant, role: key.role, id: key.id, name: key.name };
      }
      if (this.operatorDigest && crypto.timingSafeEqual(digest(token), this.operatorDigest)) return { kind: 'operator', tenant: null, role: 'operator', id: 'operator' };
      return new ApiError(401, 'unauthorized', 'Send the operator token or an API key as "Authorization: Bearer <token>"');
    }
    const cookie = req.cookies?.[SESSION_COOKIE];
    if (cookie !== undefined) {
      const found = this.deps.users.session(cookie);
      if (!found || !this.deps.tenants.get(found.user.tenant)) return new ApiError(401, 'session_expired', 'The session has ended; log in again');
      (req as unknown as Record<symbol, unknown>)[kSession] = { token: cookie, session: found.session };
      return { kind: 'session', tenant: found.user.tenant, role: found.user.role, id: found.user.id, name: found.user.email };
    }
    return null;
  }

  /** Authenticates once per request, rate-limits once, then checks the route's roles, tenant and CSRF. */
  async check(req: FastifyRequest, access: RouteAccess): Promise<void> {
    const r = req as unknown as Record<symbol, unknown>;
    let found: Principal | null | ApiError;
    if (r[kChecked] === undefined) {
      found = this.authenticate(req);
      r[kChecked] = found;
      req.principal = found instanceof ApiError ? null : found;
    } else found = r[kChecked] as Principal | null | ApiError;

    if (!r[kRateLimited] && this.apiRate) {
      r[kRateLimited] = true;
      const limit = await this.apiRate(req);
      if (!limit.isAllowed && limit.isExceeded) throw rateLimited(req, limit.ttlInSeconds);
    }
    if (access.public) return;
    const operatorOnly = access.roles.length === 1 && access.roles[0] === 'operator';
    if (operatorOnly && !this.operatorDigest && !(found && !(found instanceof ApiError) && found.role === 'operator'))
      throw new ApiError(403, 'admin_disabled', 'Admin routes are off: set control.admin_token in the config or TERN_ADMIN_TOKEN in the environment');
    if (found instanceof ApiError) throw found;
    if (!found) throw new ApiError(401, 'unauthorized', 'This route needs credentials: "Authorization: Bearer <API key or operator token>", or a session cookie from POST /api/v1/auth/login');

    if (!access.roles.includes(found.role)) {
      const who = found.kind === 'api_key' ? 'this API key has' : found.kind === 'session' ? 'your account has' : 'the operator token has';
      throw new ApiError(403, 'forbidden', `This route needs the role ${access.roles.join(' or ')}; ${who} the role ${found.role}`);
    }

    const named = req.headers[TENANT_HEADER];
    if (named !== undefined) {
      if (typeof named !== 'string') throw badRequest('Send X-Tern-Tenant once');
      if (found.kind !== 'operator') {
        if (named !== found.tenant) throw badRequest('X-Tern-Tenant is for the operator token; an API key or a session always acts for its own tenant', [{ field: 'header.x-tern-tenant', message: 'is not allowed with this credential' }]);
      } else if (isTenantScoped(access)) {
        if (!this.deps.tenants.get(named)) throw new ApiError(404, 'not_found', `Tenant ${JSON.stringify(named.slice(0, 64))} does not exist`);
        req.principal = { ...found, tenant: named };
      }
    }

    if (found.kind === 'session' && UNSAFE.has(req.method)) {
      const given = req.headers[CSRF_HEADER];
      const expected = sessionOf(req)!.session.csrf;
      const ok = typeof given === 'string' && given.length === expected.length && crypto.timingSafeEqual(Buffer.from(given), Buffer.from(expected));
      if (!ok) throw new ApiError(403, 'csrf_failed', 'Requests made with a session cookie must send X-Tern-CSRF with the csrf_token given at login');
    }
  }
}

export function rateLimited(req: FastifyRequest, retryAfterS: number): ApiError {
  const what = req.principal ? 'with these credentials' : 'from your address';
  return new ApiError(429, 'rate_limited', `Too many requests ${what}; try again in ${retryAfterS} s`, [], { 'retry-after': String(retryAfterS) });
}

/** The key API requests are counted under: the credential, else the client address. */
export function rateKey(req: FastifyRequest): string {
  const p = req.principal;
  return p ? `${p.kind}:${p.id}` : `ip:${normalizeAddress(req.ip)}`;
}

