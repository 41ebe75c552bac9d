/**
 * Tenants: the ones the config file names and the ones made through the control API, in one directory the
 * node looks them up in (pool and bounce domain for delivery, suspension and daily quota for acceptance).
 *
 * What the config file says, the file owns: a config tenant's id, pool and bounce domain change only there
 * (the API answers 409), and it cannot be deleted through the API. Its runtime state — name, suspension,
 * daily quota, tracking — is set through the API and kept in LMDB like an API tenant's.
 *
 * A deleted tenant leaves a tombstone: its id is never given out again (a new tenant of the same name would
 * otherwise inherit the old one's events, suppressions and queued mail), and mail it still has queued keeps
 * its pool. Everything that authenticates as it (API keys, SMTP credentials, users) is removed with it.
 *
 *   control.tenants      id → TenantRecord
 *   control.quota_usage  [tenant, "YYYY-MM-DD"] → recipients accepted that UTC day (tenants with a quota)
 */
import type { Database } from 'lmdb';
import type { Config } from '../core/config.js';
import type { Store } from '../core/store.js';

export interface TenantRecord {
  id: string;
  name: string;
  pool: string;
  suspended: boolean;
  suspended_reason: string | null;
  /** recipients per UTC day; null = no limit */
  daily_quota: number | null;
  bounce_domain: string | null;
  /** open and click tracking for this tenant's mail (used by the tracking step) */
  tracking: boolean;
  /**
   * may send From domains that are not verified sending domains of its own (see domains.ts). False for API
   * tenants unless the operator allows it; true for the config file's tenants (they sign with dkim.keys).
   */
  allow_unverified_domains: boolean;
  created_at: number;
  updated_at: number;
  deleted_at: number | null;
  /** config: named in the config file (the record keeps only its runtime state); api: made through the API */
  managed_by: 'config' | 'api';
}

export type Tenant = TenantRecord;

/** The fields a PATCH may set. */
export type TenantChange = Partial<Pick<TenantRecord, 'name' | 'pool' | 'suspended' | 'suspended_reason' | 'daily_quota' | 'bounce_domain' | 'tracking' | 'allow_unverified_domains'>>;

/** Fields only the config file sets for the tenants it names. */
export const CONFIG_OWNED: ReadonlyArray<keyof TenantChange> = ['pool', 'bounce_domain'];

/** Why a tenant may not send now, for SMTP and for HTTP. */
export interface SendingRefusal {
  reason: 'suspended' | 'quota' | 'unknown_tenant' | 'unverified_domain';
  smtp: { code: number; status: string; text: string };
  http: { status: number; code: string; message: string };
}

/**
 * What reception asks before taking a tenant's mail (SMTP submission now, HTTP sending later). Implemented
 * by the TenantDirectory; reception depends on this interface only.
 */
export interface SendingPolicy {
  /** Why `tenant` may not send `recipients` more recipients now, or null when it may. */
  refusal(tenant: string, recipients: number): SendingRefusal | null;
  /** Counts `recipients` against today's quota; false (nothing counted) when they would pass it. */
  take(tenant: string, recipients: number): Promise<boolean>;
}

export const utcDay = (at = Date.now()) => new Date(at).toISOString().slice(0, 10);

export class TenantDirectory implements SendingPolicy {
  private readonly records: Database<TenantRecord, string>;
  private readonly usage: Database<number, [string, string]>;
  /** every tenant, tombstones included, as the node sees it (config merged with LMDB) */
  private readonly all = new Map<string, Tenant>();

  constructor(
    private readonly store: Store,
    private readonly config: Config,
    private readonly clock: () => number = Date.now,
  ) {
    this.records = store.db('control.tenants');
    this.usage = store.db('control.quota_usage');
    for (const id of Object.keys(config.tenants)) {
      // remember the id: should the file drop this tenant one day, the id stays taken (a tombstone)
      if (!this.records.get(id)) {
        const now = this.clock();
        const overlay: TenantRecord = { id, name: id, pool: '', suspended: false, suspended_reason: null, daily_quota: null, bounce_domain: null, tracking: false, allow_unverified_domains: true, created_at: now, updated_at: now, deleted_at: null, managed_by: 'config' };
        this.records.putSync(id, overlay);
      }
      this.refresh(id);
    }
    for (const { key } of this.records.getRange({ snapshot: false })) if (typeof key === 'string') this.refresh(key);
  }

  private fromConfig(id: string): Tenant | null {
    const c = this.config.tenants[id];
    if (!c) return null;
    const r = this.records.get(id);
    return {
      id,
      name: r?.name ?? id,
      pool: c.pool,
      suspended: r?.suspended ?? false,
      suspended_reason: r?.suspended_reason ?? null,
      daily_quota: r?.daily_quota ?? null,
      bounce_domain: c.bounce_domain?.toLowerCase() ?? null,
      tracking: r?.tracking ?? false,
      allow_unverified_domains: r?.allow_unverified_domains ?? true,
      created_at: r?.created_at ?? 0,
      updated_at: r?.updated_at ?? 0,
      deleted_at: null,
      managed_by: 'config',
    };
  }

  /** Re-reads one tenant into the in-memory directory (after a change commits). */
  refresh(id: string): void {
    const t = this.fromConfig(id) ?? (() => {
      const r = this.records.get(id);
      // a tenant the file no longer names: gone, its id kept
      if (r?.managed_by === 'config') return { ...r, pool: 'default', deleted_at: r.deleted_at ?? r.updated_at };
      return r ?? null;
    })();
    if (t) this.all.set(id, t);
    else this.all.delete(id);
  }

  /** A live tenant (not deleted), or undefined. */
  get(id: string): Tenant | undefined {
    const t = this.all.get(id);
    return t && t.deleted_at === null ? t : undefined;
  }

  /** Pool and bounce domain of a tenant's mail, deleted tenants' included (their mail may still be queued). */
  routing(id: string): { pool: string; bounce_domain: string | null } | undefined {
    return this.all.get(id);
  }

  /** True when `domain` is the bounce domain of a tenant made through the API (the config's are in config.bounce). */
  isBounceDomain(domain: string): boolean {
    for (const t of this.all.values()) if (t.managed_by === 'api' && t.bounce_domain === domain) return true;
    return false;
  }

  /** True when the id was ever used (live, deleted, or in the config). */
  taken(id: string): boolean {
    return this.all.has(id);
  }

  /** Live tenants in id order after `after`. */
  list(after: string | null, limit: number): Tenant[] {
    return [...this.all.values()]
      .filter((t) => t.deleted_at === null && (after === null || t.id > after))
      .sort((a, b) => (a.id < b.id ? -1 : 1))
      .slice(0, limit);
  }

  /** Writes a new API tenant; call inside a transaction, then refresh(). */
  createIn(input: Pick<TenantRecord, 'id' | 'name' | 'pool'> & Partial<Omit<TenantRecord, 'managed_by'>>): TenantRecord {
    const now = this.clock();
    const record: TenantRecord = {
      id: input.id,
      name: input.name,
      pool: input.pool,
      suspended: input.suspended ?? false,
      suspended_reason: input.suspended_reason ?? null,
      daily_quota: input.daily_quota ?? null,
      bounce_domain: input.bounce_domain ?? null,
      tracking: input.tracking ?? false,
      allow_unverified_domains: input.allow_unverified_domains ?? false,
      created_at: now,
      updated_at: now,
      deleted_at: null,
      managed_by: 'api',
    };
    this.records.put(record.id, record);
    return record;
  }

  /** Applies a change (already checked against CONFIG_OWNED); call inside a transaction, then refresh(). */
  updateIn(id: string, change: TenantChange): void {
    const t = this.all.get(id)!;
    const next: TenantRecord = { ...t, ...change, updated_at: this.clock() };
    if (next.suspended === false) next.suspended_reason = null;
    if (t.managed_by === 'config') {
      // only the runtime state is kept; the file stays the source of pool and bounce domain
      next.pool = '';
      next.bounce_domain = null;
      if (!next.created_at) next.created_at = next.updated_at;
    }
    this.records.put(id, next);
  }

  /** Leaves a tombstone; call inside a transaction, then refresh(). */
  deleteIn(id: string): void {
    const t = this.all.get(id)!;
    this.records.put(id, { ...t, suspended: true, deleted_at: this.clock(), updated_at: this.clock() });
  }

  /** Recipients counted against the tenant's quota today (UTC). */
  usedToday(id: string): number {
    return this.usage.get([id, utcDay(this.clock())]) ?? 0;
  }

  refusal(tenant: string, recipients: number): SendingRefusal | null {
    const t = this.get(tenant);
    if (!t) {
      return {
        reason: 'unknown_tenant',
        smtp: { code: 550, status: '5.7.1', text: 'This account does not exist any more; sending is refused' },
        http: { status: 403, code: 'tenant_deleted', message: 'This account does not exist any more; sending is refused' },
      };
    }
    if (t.suspended) {
      const why = t.suspended_reason ? ` (${t.suspended_reason})` : '';
      return {
        reason: 'suspended',
        smtp: { code: 550, status: '5.7.1', text: `Sending is suspended for this account${why}; contact the operator` },
        http: { status: 403, code: 'tenant_suspended', message: `Sending is suspended for this account${why}; contact the operator` },
      };
    }
    if (t.daily_quota !== null && this.usedToday(tenant) + recipients > t.daily_quota) return quotaRefusal(t.daily_quota);
    return null;
  }

  async take(tenant: string, recipients: number): Promise<boolean> {
    const quota = this.get(tenant)?.daily_quota ?? null;
    if (quota === null) return true;
    const key: [string, string] = [tenant, utcDay(this.clock())];
    // check and count in one write transaction: concurrent sessions cannot both pass the last slot
    return this.store.transact(() => {
      const used = this.usage.get(key) ?? 0;
      if (used + recipients > quota) return false;
      this.usage.put(key, used + recipients);
      return true;
    });
  }
}

export function quotaRefusal(quota: number): SendingRefusal {
  const text = `Daily sending quota of ${quota} recipients reached; it resets at 00:00 UTC`;
  return { reason: 'quota', smtp: { code: 452, status: '4.7.1', text }, http: { status: 429, code: 'quota_exceeded', message: text } };
}
