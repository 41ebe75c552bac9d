/**
 * What the config (and the tenant directory) says about tracking for one tenant's message: the input of the
 * preparation step.
 *
 * Tenants of the config file are read from `config.tenants`. Tenants made through the control API are not in
 * it: the acceptance step passes a lookup into the node's tenant directory. The config file's own tenants are
 * always decided by the file; the lookup is asked only about the others.
 */
import type { Config } from '../core/config.js';
import type { TrackingSettings } from './personalise.js';

/** What a tenant made through the API says about its mail (TenantDirectory's record). */
export interface TenantTracking {
  /** open and click tracking */
  tracking: boolean;
  /** the tenant's own bounce domain (its VERP and mailto addresses), null: bounce.domain */
  bounce_domain: string | null;
  /** false: no List-Unsubscribe on transactional mail; default true */
  list_unsubscribe?: boolean;
  /** the stream of mail that does not say; default marketing */
  stream?: 'marketing' | 'transactional';
}

export type TenantTrackingLookup = (tenant: string) => TenantTracking | undefined;

/** The file's tenant as TenantTracking, else the looked-up one, else undefined (defaults apply). */
function tenantOf(config: Config, tenant: string, lookup?: TenantTrackingLookup): Partial<TenantTracking> | undefined {
  return config.tenants[tenant] ?? lookup?.(tenant);
}

/**
 * The tracking settings of a message of `tenant` to `recipients` (in spool order); null when the node has no
 * tracking listener (`tracking.base_url` unset): then nothing is tracked and no List-Unsubscribe is added.
 */
export function trackingSettingsFor(config: Config, tenant: string, recipients: string[], lookup?: TenantTrackingLookup): TrackingSettings | null {
  const baseUrl = config.tracking.baseUrl;
  if (!baseUrl) return null;
  const t = tenantOf(config, tenant, lookup);
  return {
    baseUrl,
    track: t?.tracking ?? config.tracking.enabled,
    unsubscribeTransactional: t?.list_unsubscribe !== false,
    trapLink: config.tracking.trapLink,
    mailDomain: t?.bounce_domain?.toLowerCase() ?? config.bounce.domain,
    recipients,
  };
}

/** A tenant's mail is marketing unless the tenant says it sends transactional mail. */
export function defaultStreamOf(config: Config, tenant: string, lookup?: TenantTrackingLookup): 'marketing' | 'transactional' {
  return tenantOf(config, tenant, lookup)?.stream ?? 'marketing';
}
