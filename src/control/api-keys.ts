/**
 * API keys: `tern_<id>_<secret>`, shown once when made. Each is scoped to one tenant and one role. Only the
 * SHA-256 of the secret is stored (a 256-bit random secret needs no slow hash), and every request looks the
 * key up again, so a revoked key stops working with the next request.
 *
 *   control.api_keys            id → ApiKeyRecord
 *   control.api_keys_by_tenant  [tenant, id] → 1
 *   control.api_keys_last_used  id → epoch ms (written at most once a minute per key)
 */
import crypto from 'node:crypto';
import type { Database } from 'lmdb';
import type { Store } from '../core/store.js';
import type { TenantRole } from './roles.js';

export interface ApiKeyRecord {
  id: string;
  tenant: string;
  role: TenantRole;
  name: string;
  /** hex SHA-256 of the secret part */
  hash: string;
  created_at: number;
  created_by: string;
  /** read from control.api_keys_last_used */
  last_used_at: number | null;
}

const TOKEN = /^tern_([a-z0-9]{16})_([A-Za-z0-9_-]{43})$/;
/** last_used_at is written at most this often per key (it is informative, not an audit trail) */
const TOUCH_EVERY_MS = 60_000;

const sha256 = (s: string) => crypto.createHash('sha256').update(s).digest();

/** True when `token` has the shape of an API key (anything else in a Bearer header is the operator token). */
export const looksLikeApiKey = (token: string) => token.startsWith('tern_');

export class ApiKeys {
  private readonly keys: Database<ApiKeyRecord, string>;
  private readonly byTenant: Database<1, [string, string]>;
  private readonly lastUsed: Database<number, string>;

  constructor(store: Store) {
    this.keys = store.db('control.api_keys');
    this.byTenant = store.db('control.api_keys_by_tenant');
    this.lastUsed = store.db('control.api_keys_last_used');
  }

  /** Makes a key inside a transaction; returns its record and the token (the only time it exists in clear). */
  createIn(input: { tenant: string; role: TenantRole; name: string; createdBy: string }): { record: ApiKeyRecord; token: string } {
    const id = crypto.randomBytes(10).toString('hex').slice(0, 16);
    const secret = crypto.randomBytes(32).toString('base64url');
    const record: ApiKeyRecord = {
      id,
      tenant: input.tenant,
      role: input.role,
      name: input.name,
      hash: sha256(secret).toString('hex'),
      created_at: Date.now(),
      created_by: input.createdBy,
      last_used_at: null,
    };
    this.keys.put(id, record);
    this.byTenant.put([input.tenant, id], 1);
    return { record, token: `tern_${id}_${secret}` };
  }

  /** The key a token names, when the secret matches; null otherwise (never says which part was wrong). */
  verify(token: string): ApiKeyRecord | null {
    const m = TOKEN.exec(token);
    if (!m) return null;
    const record = this.keys.get(m[1]!);
    const given = sha256(m[2]!);
    const expected = record ? Buffer.from(record.hash, 'hex') : crypto.randomBytes(32);
    if (!crypto.timingSafeEqual(given, expected) || !record) return null;
    const now = Date.now();
    const last = this.lastUsed.get(record.id) ?? null;
    // kept apart from the key record, so that this write (best effort, outside any transaction) can never
    // bring back a key revoked meanwhile
    if (last === null || now - last > TOUCH_EVERY_MS) void this.lastUsed.put(record.id, now);
    return { ...record, last_used_at: last ?? now };
  }

  get(tenant: string, id: string): ApiKeyRecord | undefined {
    const r = this.keys.get(id);
    return r && r.tenant === tenant ? { ...r, last_used_at: this.lastUsed.get(id) ?? null } : undefined;
  }

  /** A tenant's keys in id order after `after`. */
  list(tenant: string, after: string | null, limit: number): ApiKeyRecord[] {
    const out: ApiKeyRecord[] = [];
    for (const key of this.byTenant.getKeys({ start: [tenant, after ?? ''], end: [tenant, '\uffff'], snapshot: false })) {
      if (!Array.isArray(key) || key[1] === after) continue;
      const r = this.get(tenant, key[1] as string);
      if (r) out.push(r);
      if (out.length >= limit) break;
    }
    return out;
  }

  /** Revokes (deletes) a key inside a transaction; false when the tenant has no such key. */
  revokeIn(tenant: string, id: string): boolean {
    if (!this.get(tenant, id)) return false;
    this.keys.remove(id);
    this.byTenant.remove([tenant, id]);
    this.lastUsed.remove(id);
    return true;
  }

  /** Revokes every key of a tenant inside a transaction (the tenant is being deleted). */
  revokeAllIn(tenant: string): number {
    let n = 0;
    for (const id of this.list(tenant, null, Number.MAX_SAFE_INTEGER).map((r) => r.id)) n += Number(this.revokeIn(tenant, id));
    return n;
  }
}
