/**
 * People who use the web: users of one tenant with a role, their sessions, invitations and password resets.
 *
 * Passwords are argon2id hashes (@node-rs/argon2 defaults: 19 MiB, 2 passes). Sessions, invitations and
 * reset tokens are 256-bit random tokens of which only the SHA-256 is stored: a copy of the data directory
 * gives no way in. Reset and invitation tokens are single-use and expire. Every session of a user ends when
 * the password changes or the user is removed; a role change applies to the next request.
 *
 *   control.users                  id → UserRecord
 *   control.users_by_tenant        [tenant, id] → 1
 *   control.user_emails            email (lower case) → id     (one account per address, across tenants)
 *   control.sessions               sha256(token) → SessionRecord
 *   control.sessions_by_user       [user id, sha256(token)] → 1
 *   control.invitations            sha256(token) → InvitationRecord
 *   control.invitations_by_tenant  [tenant, id] → sha256(token)
 *   control.password_resets        sha256(token) → { user, expires_at }
 */
import crypto from 'node:crypto';
import { hash as argon2Hash, verify as argon2Verify } from '@node-rs/argon2';
import type { Database } from 'lmdb';
import type { Store } from '../core/store.js';
import type { TenantRole } from './roles.js';

export interface UserRecord {
  id: string;
  tenant: string;
  email: string;
  name: string;
  role: TenantRole;
  password_hash: string;
  created_at: number;
  updated_at: number;
}

export interface SessionRecord {
  user: string;
  /** sent back in X-Tern-CSRF on every unsafe request made with this session's cookie */
  csrf: string;
  created_at: number;
  expires_at: number;
  ip: string;
  user_agent: string | null;
}

export interface InvitationRecord {
  id: string;
  tenant: string;
  email: string;
  role: TenantRole;
  invited_by: string;
  created_at: number;
  expires_at: number;
}

interface ResetRecord {
  user: string;
  expires_at: number;
}

export const INVITATION_TTL_MS = 7 * 86_400_000;
export const RESET_TTL_MS = 3_600_000;

const tokenHash = (token: string) => crypto.createHash('sha256').update(token).digest('hex');
const newToken = () => crypto.randomBytes(32).toString('base64url');
const newId = (prefix: string) => `${prefix}_${crypto.randomBytes(9).toString('base64url').replace(/[-_]/g, 'x')}`;
const TOKEN = /^[A-Za-z0-9_-]{43}$/;

export const normalizeEmail = (email: string) => email.trim().toLowerCase();

export class Users {
  private readonly users: Database<UserRecord, string>;
  private readonly byTenant: Database<1, [string, string]>;
  private readonly emails: Database<string, string>;
  private readonly sessions: Database<SessionRecord, string>;
  private readonly sessionsByUser: Database<1, [string, string]>;
  private readonly invitations: Database<InvitationRecord, string>;
  private readonly invitationsByTenant: Database<string, [string, string]>;
  private readonly resets: Database<ResetRecord, string>;
  /** compared against when no user has the address, so a login takes as long either way */
  private dummyHash: Promise<string> | null = null;

  constructor(private readonly store: Store) {
    this.users = store.db('control.users');
    this.byTenant = store.db('control.users_by_tenant');
    this.emails = store.db('control.user_emails');
    this.sessions = store.db('control.sessions');
    this.sessionsByUser = store.db('control.sessions_by_user');
    this.invitations = store.db('control.invitations');
    this.invitationsByTenant = store.db('control.invitations_by_tenant');
    this.resets = store.db('control.password_resets');
  }

  hashPassword(password: string): Promise<string> {
    return argon2Hash(password);
  }

  /** The user an address and password log in as, or null; the same work is done when the address is unknown. */
  async checkLogin(email: string, password: string): Promise<UserRecord | null> {
    const user = this.byEmail(email);
    if (!user) {
      this.dummyHash ??= argon2Hash(crypto.randomBytes(16).toString('hex'));
      await argon2Verify(await this.dummyHash, password).catch(() => false);
      return null;
    }
    const ok = await argon2Verify(user.password_hash, password).catch(() => false);
    // re-read: the user may have been removed while the hash was being checked
    return ok ? (this.users.get(user.id) ?? null) : null;
  }

  byEmail(email: string): UserRecord | undefined {
    const id = this.emails.get(normalizeEmail(email));
    return id === undefined ? undefined : this.users.get(id);
  }

  byId(id: string): UserRecord | undefined {
    return this.users.get(id);
  }

  get(tenant: string, id: string): UserRecord | undefined {
    const u = this.users.get(id);
    return u && u.tenant === tenant ? u : undefined;
  }

  list(tenant: string, after: string | null, limit: number): UserRecord[] {
    const out: UserRecord[] = [];
    for (const key of this.byTenant.getKeys({ start: [tenant, after ?? ''], end: [tenant, '\uffff'], snapshot: false })) {
      if (!Array.isArray(key) || key[1] === after) continue;
      const u = this.users.get(key[1] as string);
      if (u) out.push(u);
      if (out.length >= limit) break;
    }
    return out;
  }

  owners(tenant: string): UserRecord[] {
    return this.list(tenant, null, Number.MAX_SAFE_INTEGER).filter((u) => u.role === 'owner');
  }

  /** Inside a transaction; the caller has checked that the address is free. */
  createIn(input: { tenant: string; email: string; name: string; role: TenantRole; passwordHash: string }): UserRecord {
    const now = Date.now();
    const user: UserRecord = { id: newId('u'), tenant: input.tenant, email: normalizeEmail(input.email), name: input.name, role: input.role, password_hash: input.passwordHash, created_at: now, updated_at: now };
    this.users.put(user.id, user);
    this.byTenant.put([user.tenant, user.id], 1);
    this.emails.put(user.email, user.id);
    return user;
  }

  updateIn(user: UserRecord, change: { role?: TenantRole; name?: string }): UserRecord {
    const next = { ...user, ...change, updated_at: Date.now() };
    this.users.put(user.id, next);
    return next;
  }

  /** Sets a new password hash and ends every session of the user; inside a transaction. */
  setPasswordIn(user: UserRecord, passwordHash: string): void {
    this.users.put(user.id, { ...user, password_hash: passwordHash, updated_at: Date.now() });
    this.closeSessionsIn(user.id);
  }

  removeIn(user: UserRecord): void {
    this.users.remove(user.id);
    this.byTenant.remove([user.tenant, user.id]);
    if (this.emails.get(user.email) === user.id) this.emails.remove(user.email);
    this.closeSessionsIn(user.id);
  }

  removeAllIn(tenant: string): number {
    const users = this.list(tenant, null, Number.MAX_SAFE_INTEGER);
    for (const u of users) this.removeIn(u);
    for (const inv of this.listInvitations(tenant, null, Number.MAX_SAFE_INTEGER)) this.revokeInvitationIn(tenant, inv.id);
    return users.length;
  }

  // sessions

  openSessionIn(user: UserRecord, ttlMs: number, origin: { ip: string; user_agent: string | null }): { token: string; session: SessionRecord } {
    const token = newToken();
    const now = Date.now();
    const session: SessionRecord = { user: user.id, csrf: newToken(), created_at: now, expires_at: now + ttlMs, ...origin };
    const h = tokenHash(token);
    this.sessions.put(h, session);
    this.sessionsByUser.put([user.id, h], 1);
    return { token, session };
  }

  /** The session a cookie names and its user, when it has not expired. */
  session(token: string): { session: SessionRecord; user: UserRecord } | null {
    if (!TOKEN.test(token)) return null;
    const session = this.sessions.get(tokenHash(token));
    if (!session || session.expires_at <= Date.now()) return null;
    const user = this.users.get(session.user);
    return user ? { session, user } : null;
  }

  closeSessionIn(token: string): void {
    const h = tokenHash(token);
    const s = this.sessions.get(h);
    this.sessions.remove(h);
    if (s) this.sessionsByUser.remove([s.user, h]);
  }

  closeSessionsIn(userId: string): void {
    for (const key of this.sessionsByUser.getKeys({ start: [userId, ''], end: [userId, '\uffff'], snapshot: false })) {
      if (!Array.isArray(key)) continue;
      this.sessions.remove(key[1] as string);
      this.sessionsByUser.remove(key as [string, string]);
    }
  }

  // invitations

  inviteIn(input: { tenant: string; email: string; role: TenantRole; invitedBy: string }): { invitation: InvitationRecord; token: string } {
    const token = newToken();
    const now = Date.now();
    const invitation: InvitationRecord = { id: newId('inv'), tenant: input.tenant, email: normalizeEmail(input.email), role: input.role, invited_by: input.invitedBy, created_at: now, expires_at: now + INVITATION_TTL_MS };
    const h = tokenHash(token);
    this.invitations.put(h, invitation);
    this.invitationsByTenant.put([input.tenant, invitation.id], h);
    return { invitation, token };
  }

  /** The pending invitation a token names (not expired), or null. */
  invitation(token: string): InvitationRecord | null {
    if (!TOKEN.test(token)) return null;
    const inv = this.invitations.get(tokenHash(token));
    return inv && inv.expires_at > Date.now() ? inv : null;
  }

  listInvitations(tenant: string, after: string | null, limit: number): InvitationRecord[] {
    const out: InvitationRecord[] = [];
    for (const { key, value } of this.invitationsByTenant.getRange({ start: [tenant, after ?? ''], end: [tenant, '\uffff'], snapshot: false })) {
      if (!Array.isArray(key) || key[1] === after) continue;
      const inv = this.invitations.get(value);
      if (inv) out.push(inv);
      if (out.length >= limit) break;
    }
    return out;
  }

  revokeInvitationIn(tenant: string, id: string): boolean {
    const h = this.invitationsByTenant.get([tenant, id]);
    if (h === undefined) return false;
    this.invitations.remove(h);
    this.invitationsByTenant.remove([tenant, id]);
    return true;
  }

  /** Consumes an invitation inside a transaction (single use); null when it is gone or expired. */
  takeInvitationIn(token: string): InvitationRecord | null {
    const inv = this.invitation(token);
    if (!inv) return null;
    this.revokeInvitationIn(inv.tenant, inv.id);
    return inv;
  }

  // password resets

  resetTokenIn(user: UserRecord): string {
    const token = newToken();
    this.resets.put(tokenHash(token), { user: user.id, expires_at: Date.now() + RESET_TTL_MS });
    return token;
  }

  /** Consumes a reset token inside a transaction (single use): the user it was made for, or null. */
  takeResetIn(token: string): UserRecord | null {
    if (!TOKEN.test(token)) return null;
    const h = tokenHash(token);
    const r = this.resets.get(h);
    if (!r) return null;
    this.resets.remove(h);
    return r.expires_at > Date.now() ? (this.users.get(r.user) ?? null) : null;
  }

  /** Deletes expired sessions, invitations and reset tokens; returns how many went. */
  async pruneExpired(now = Date.now()): Promise<number> {
    const expired = <V extends { expires_at: number }>(db: Database<V, string>) =>
      [...db.getRange({ snapshot: false })].filter(({ key, value }) => typeof key === 'string' && value.expires_at <= now);
    const sessions = expired(this.sessions);
    const invitations = expired(this.invitations);
    const resets = expired(this.resets);
    await this.store.transact(() => {
      for (const { key, value } of sessions) {
        this.sessions.remove(key);
        this.sessionsByUser.remove([value.user, key]);
      }
      for (const { value } of invitations) this.revokeInvitationIn(value.tenant, value.id);
      for (const { key } of resets) this.resets.remove(key);
    });
    return sessions.length + invitations.length + resets.length;
  }
}
