/**
 * The DKIM keys a preparation thread signs with. Kept apart from prepare-pool.ts, which starts the threads:
 * a thread's bundle (see src/core/thread-entry.ts) holds this and not the code that builds bundles.
 */
import { loadSigningKey, type SigningKey } from './dkim.js';
import { keyLookup } from './prepare.js';

export interface KeyMaterial {
  domain: string;
  selector: string;
  pem: string;
}

/** A key of a tenant's sending domain (control API): it signs that tenant's mail only. */
export interface TenantKeyMaterial extends KeyMaterial {
  tenant: string;
}

/**
 * Which keys sign a message: those of the tenant's own sending domains for its From domain (or a parent),
 * else the node's dkim.keys. Each preparation thread holds one; setTenantKeys replaces the tenants' part.
 */
export class SigningKeys {
  private readonly node: (domain: string) => SigningKey[];
  private byTenant = new Map<string, (domain: string) => SigningKey[]>();

  constructor(nodeKeys: KeyMaterial[], tenantKeys: TenantKeyMaterial[] = []) {
    this.node = keyLookup(nodeKeys.map((k) => loadSigningKey(k.domain, k.selector, k.pem)));
    this.setTenantKeys(tenantKeys);
  }

  setTenantKeys(keys: TenantKeyMaterial[]): void {
    const grouped = new Map<string, SigningKey[]>();
    for (const k of keys) grouped.set(k.tenant, [...(grouped.get(k.tenant) ?? []), loadSigningKey(k.domain, k.selector, k.pem)]);
    this.byTenant = new Map([...grouped].map(([tenant, list]) => [tenant, keyLookup(list)]));
  }

  for(tenant: string): (fromDomain: string) => SigningKey[] {
    const own = this.byTenant.get(tenant);
    return own ? (d) => { const k = own(d); return k.length ? k : this.node(d); } : this.node;
  }
}
