/**
 * The audit log: every change made through the control API — who (principal), what (action, target, the
 * fields changed, never a secret), when, and from where (address, user agent). Entries are written inside
 * the transaction of the change they describe, so there is no change without its entry.
 *
 *   control.audit            seq → AuditRecord          (all entries, oldest first)
 *   control.audit_by_tenant  [tenant, seq] → 1          (a tenant's entries)
 */
import type { Database } from 'lmdb';
import type { Store } from '../core/store.js';
import type { Principal } from './roles.js';

export interface AuditActor {
  kind: Principal['kind'] | 'anonymous';
  id: string | null;
  role: Principal['role'] | null;
  tenant: string | null;
  name?: string;
}

export interface AuditInput {
  /** what happened, `resource.verb`: tenant.create, api_key.revoke, user.login, … */
  action: string;
  /** the tenant whose data changed (null for platform-wide changes) */
  tenant: string | null;
  target?: { type: string; id: string } | null;
  /** the fields set, without secrets */
  changes?: Record<string, unknown>;
}

export interface AuditOrigin {
  actor: AuditActor;
  ip: string;
  user_agent: string | null;
}

export interface AuditRecord extends AuditInput, AuditOrigin {
  at: number;
}

export interface AuditEntry extends AuditRecord {
  id: number;
}

export class AuditLog {
  private readonly entries: Database<AuditRecord, number>;
  private readonly byTenant: Database<1, [string, number]>;
  private seq = 0;

  constructor(store: Store) {
    this.entries = store.db('control.audit');
    this.byTenant = store.db('control.audit_by_tenant');
    for (const last of this.entries.getKeys({ reverse: true, limit: 2 })) {
      if (typeof last !== 'number') continue; // the shared-structures entry
      this.seq = last;
      break;
    }
  }

  /** Writes an entry; call it inside the transaction of the change it records. */
  writeIn(origin: AuditOrigin, input: AuditInput, at = Date.now()): number {
    const id = ++this.seq;
    const record: AuditRecord = { at, ...origin, action: input.action, tenant: input.tenant, target: input.target ?? null, changes: input.changes ?? {} };
    this.entries.put(id, record);
    if (input.tenant !== null) this.byTenant.put([input.tenant, id], 1);
    return id;
  }

  /**
   * Entries newest first, before `before` (an id), for one tenant or (tenant null) all, optionally of one
   * action (`api_key` matches every `api_key.*`). Reads at most `maxScan` entries: `next` is where to go on
   * (null when the log is exhausted), so a rare action never makes one request walk the whole log.
   */
  list(opts: { tenant: string | null; before: number | null; limit: number; action?: string; maxScan?: number }): { entries: AuditEntry[]; next: number | null } {
    const entries: AuditEntry[] = [];
    const maxScan = opts.maxScan ?? 10_000;
    const matches = (r: AuditRecord) => opts.action === undefined || r.action === opts.action || r.action.startsWith(`${opts.action}.`);
    const before = opts.before ?? Number.MAX_SAFE_INTEGER;
    const ids =
      opts.tenant === null
        ? this.entries.getKeys({ start: before - 1, end: 0, reverse: true, snapshot: false })
        : this.byTenant.getKeys({ start: [opts.tenant, before - 1], end: [opts.tenant, 0], reverse: true, snapshot: false }).map((k) => (Array.isArray(k) ? k[1] : k));
    let scanned = 0;
    for (const id of ids) {
      if (typeof id !== 'number') continue; // the shared-structures entry
      const r = this.entries.get(id);
      if (r && matches(r)) entries.push({ id, ...r });
      if (entries.length > opts.limit) return { entries: entries.slice(0, opts.limit), next: entries[opts.limit - 1]!.id };
      if (++scanned >= maxScan) return { entries, next: id };
    }
    return { entries, next: null };
  }
}
