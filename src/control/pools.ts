/**
 * Egress pools: the config file's and the ones made through the control API, in one registry the node asks
 * for a pool's sources. The config file's pools are a bootstrap: they are listed by the API but change only
 * in the file (409 `managed_by_config`). Pools made through the API live in LMDB and are applied at run time
 * (`onChange`: the scheduler's sources and the warmup calendar learn them without a restart).
 *
 * Source names are unique across every pool: warmup counters, backoff and holds are kept by source name.
 *
 *   control.pools  name → PoolRecord
 */
import net from 'node:net';
import type { Database } from 'lmdb';
import type { Config } from '../core/config.js';
import type { Store } from '../core/store.js';

export interface PoolSource {
  name: string;
  address: string;
  ehlo: string;
  warmup?: { plan: string; start: string };
}

export interface PoolRecord {
  name: string;
  sources: PoolSource[];
  created_at: number;
  updated_at: number;
}

export interface Pool extends PoolRecord {
  managed_by: 'config' | 'api';
}

export class EgressPools {
  private readonly records: Database<PoolRecord, string>;
  private readonly api = new Map<string, PoolRecord>();
  /** called after an API pool was made or changed (the node applies it to delivery) */
  onChange: (() => void) | null = null;
  /** the warmup plans a source may follow (set by the node once the plans are read) */
  planNames: () => string[] = () => [];

  constructor(
    store: Store,
    private readonly config: Config,
  ) {
    this.records = store.db('control.pools');
    for (const { key, value } of this.records.getRange({ snapshot: false })) if (typeof key === 'string' && !this.config.pools[key]) this.api.set(key, value);
  }

  /** Every pool, config first, each group in name order. */
  list(): Pool[] {
    const fromConfig = Object.entries(this.config.pools).map(([name, p]): Pool => ({ name, sources: p.sources.map((s) => ({ ...s })), created_at: 0, updated_at: 0, managed_by: 'config' }));
    const fromApi = [...this.api.values()].sort((a, b) => (a.name < b.name ? -1 : 1)).map((p): Pool => ({ ...p, managed_by: 'api' }));
    return [...fromConfig.sort((a, b) => (a.name < b.name ? -1 : 1)), ...fromApi];
  }

  get(name: string): Pool | undefined {
    return this.list().find((p) => p.name === name);
  }

  has(name: string): boolean {
    return !!this.config.pools[name] || this.api.has(name);
  }

  /** The sources of a pool (the default pool's for an unknown one, as delivery does). */
  sourcesOf(pool: string): PoolSource[] {
    return (this.config.pools[pool]?.sources ?? this.api.get(pool)?.sources ?? this.config.pools.default?.sources ?? []) as PoolSource[];
  }

  /** Every pool's sources by pool name: what the scheduler binds mail to. */
  sourcesByPool(): Record<string, PoolSource[]> {
    return Object.fromEntries(this.list().map((p) => [p.name, p.sources]));
  }

  /**
   * What is wrong with `sources` for pool `pool` (empty when nothing): addresses, duplicate names, names
   * another pool uses, warmup plans that do not exist. Each problem names its field.
   */
  problems(pool: string, sources: PoolSource[]): Array<{ field: string; message: string }> {
    const out: Array<{ field: string; message: string }> = [];
    const elsewhere = new Map<string, string>();
    for (const p of this.list()) if (p.name !== pool) for (const s of p.sources) elsewhere.set(s.name, p.name);
    const seen = new Set<string>();
    const plans = this.planNames();
    sources.forEach((s, i) => {
      const at = `body.sources.${i}`;
      if (seen.has(s.name)) out.push({ field: `${at}.name`, message: `is given twice in this pool` });
      seen.add(s.name);
      const other = elsewhere.get(s.name);
      if (other) out.push({ field: `${at}.name`, message: `is a source of pool ${other} already (source names are unique across pools)` });
      if (!net.isIP(s.address)) out.push({ field: `${at}.address`, message: 'must be an IPv4 or IPv6 address' });
      if (s.warmup && !plans.includes(s.warmup.plan))
        out.push({ field: `${at}.warmup.plan`, message: `is not a warmup plan; the plans are ${plans.length ? plans.join(', ') : '(none: define them in the warmup file or warmup.plans)'}` });
      if (s.warmup && Number.isNaN(Date.parse(s.warmup.start))) out.push({ field: `${at}.warmup.start`, message: 'is not a date; write it like "2026-12-01"' });
    });
    return out;
  }

  /** Writes an API pool (new or changed); call inside a transaction, then refresh(). */
  putIn(name: string, sources: PoolSource[], now = Date.now()): PoolRecord {
    const old = this.api.get(name);
    const record: PoolRecord = { name, sources, created_at: old?.created_at ?? now, updated_at: now };
    this.records.put(name, record);
    return record;
  }

  /** Re-reads one pool after its change committed and tells the node. */
  refresh(name: string): void {
    const r = this.records.get(name);
    if (r && !this.config.pools[name]) this.api.set(name, r);
    else this.api.delete(name);
    this.onChange?.();
  }
}

/**
 * Whether this machine can send from `address`: 0.0.0.0 and :: (any address) always; any other address
 * must be one of this host's (a bind to it on an ephemeral port succeeds), or outgoing connections from it
 * would fail at delivery time. Resolves to null when usable, else a sentence.
 */
export function bindProblem(address: string): Promise<string | null> {
  if (address === '0.0.0.0' || address === '::') return Promise.resolve(null);
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', (err: NodeJS.ErrnoException) => resolve(`is not an address of this host (${err.code ?? err.message}); outgoing connections from it would fail`));
    server.listen({ host: address, port: 0, exclusive: true }, () => server.close(() => resolve(null)));
  });
}
