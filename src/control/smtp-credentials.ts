/**
 * SMTP credentials made through the control API. The submission listener asks verify() on every AUTH, so a
 * credential works from the moment it is made and stops the moment it is deleted.
 *
 * The password is made here (24 random bytes), shown once, and kept only as a salted HMAC-SHA256 under a key
 * derived from the master key (secrets.ts). A slow hash (argon2) would add nothing against guessing a
 * 192-bit random secret, and would cost ~50 ms of CPU per AUTH — a lever for anyone opening connections;
 * the keyed MAC also means a copy of the data directory without the master key cannot test a guess.
 * Users never choose these passwords, which is what makes a fast MAC safe.
 *
 * Usernames are made here too (`smtp-` + 12 random characters) and are unique across tenants, since AUTH
 * carries no tenant; a tenant never learns which names other tenants use.
 *
 *   control.smtp_credentials             username → SmtpCredentialRecord
 *   control.smtp_credentials_by_tenant   [tenant, id] → username
 */
import crypto from 'node:crypto';
import type { Database } from 'lmdb';
import type { Store } from '../core/store.js';
import type { Secrets, SecretMac } from './secrets.js';

export interface SmtpCredentialRecord {
  id: string;
  tenant: string;
  name: string;
  username: string;
  secret: SecretMac;
  created_at: number;
  created_by: string;
}

const MAC_PURPOSE = 'smtp-credential';
const BASE32 = 'abcdefghijklmnopqrstuvwxyz234567';

function randomName(n: number): string {
  return [...crypto.randomBytes(n)].map((b) => BASE32[b & 31]).join('');
}

export class SmtpCredentials {
  private readonly records: Database<SmtpCredentialRecord, string>;
  private readonly byTenant: Database<string, [string, string]>;

  constructor(
    store: Store,
    private readonly secrets: Secrets,
    /** usernames the config file already uses (smtp_users): never given out */
    private readonly reserved: (username: string) => boolean,
  ) {
    this.records = store.db('control.smtp_credentials');
    this.byTenant = store.db('control.smtp_credentials_by_tenant');
  }

  /** Makes a credential inside a transaction; the password exists in clear only in the return value. */
  createIn(input: { tenant: string; name: string; createdBy: string }): { record: SmtpCredentialRecord; password: string } {
    let username: string;
    do username = `smtp-${randomName(12)}`;
    while (this.records.get(username) || this.reserved(username));
    const password = crypto.randomBytes(24).toString('base64url');
    const record: SmtpCredentialRecord = {
      id: `sc_${randomName(12)}`,
      tenant: input.tenant,
      name: input.name,
      username,
      secret: this.secrets.mac(MAC_PURPOSE, password),
      created_at: Date.now(),
      created_by: input.createdBy,
    };
    this.records.put(username, record);
    this.byTenant.put([input.tenant, record.id], username);
    return { record, password };
  }

  /** The tenant a username and password authenticate as, or null. Fast: an LMDB read and one HMAC. */
  verify(username: string, password: string): { tenant: string; username: string; id: string } | null {
    const record = this.records.get(username);
    if (!record || !this.secrets.verifyMac(MAC_PURPOSE, password, record.secret)) return null;
    if (this.secrets.isStale(record.secret.kid)) {
      // made under a previous master key: re-key it now that the password is at hand (only if still there)
      const fresh = { ...record, secret: this.secrets.mac(MAC_PURPOSE, password) };
      void this.records.transaction(() => {
        if (this.records.get(username)?.id === record.id) this.records.put(username, fresh);
      });
    }
    return { tenant: record.tenant, username, id: record.id };
  }

  get(tenant: string, id: string): SmtpCredentialRecord | undefined {
    const username = this.byTenant.get([tenant, id]);
    return username === undefined ? undefined : this.records.get(username);
  }

  list(tenant: string, after: string | null, limit: number): SmtpCredentialRecord[] {
    const out: SmtpCredentialRecord[] = [];
    for (const { key, value } of this.byTenant.getRange({ start: [tenant, after ?? ''], end: [tenant, '\uffff'], snapshot: false })) {
      if (!Array.isArray(key) || key[1] === after) continue;
      const r = this.records.get(value);
      if (r) out.push(r);
      if (out.length >= limit) break;
    }
    return out;
  }

  /** Deletes a credential inside a transaction; false when the tenant has no such credential. */
  removeIn(tenant: string, id: string): boolean {
    const r = this.get(tenant, id);
    if (!r) return false;
    this.records.remove(r.username);
    this.byTenant.remove([tenant, id]);
    return true;
  }

  removeAllIn(tenant: string): number {
    let n = 0;
    for (const r of this.list(tenant, null, Number.MAX_SAFE_INTEGER)) n += Number(this.removeIn(tenant, r.id));
    return n;
  }
}
