/** Who may do what: the roles of the control API and the principal a request acts as. */

export type Role = 'operator' | 'owner' | 'admin' | 'marketer' | 'viewer';
export type TenantRole = Exclude<Role, 'operator'>;

export const ROLES: readonly Role[] = ['operator', 'owner', 'admin', 'marketer', 'viewer'];
export const TENANT_ROLES: readonly TenantRole[] = ['owner', 'admin', 'marketer', 'viewer'];

/** Higher ranks include what lower ones may do when granting roles: nobody grants a role above their own. */
const RANK: Record<Role, number> = { operator: 5, owner: 4, admin: 3, marketer: 2, viewer: 1 };

export function mayGrant(granter: Role, role: Role): boolean {
  return RANK[granter] >= RANK[role];
}

export interface Principal {
  kind: 'operator' | 'api_key' | 'session';
  /** the tenant the request acts for: the credential's own, or for the operator the X-Tern-Tenant header (null without) */
  tenant: string | null;
  role: Role;
  /** api key id, user id, or "operator" */
  id: string;
  name?: string;
}
