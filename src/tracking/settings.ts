/** What the config says about tracking for one tenant's message: the input of the preparation step. */
import type { Config } from '../core/config.js';
import type { TrackingSettings } from './personalise.js';

/**
 * The tracking settings of a message of `tenant` to `recipients` (in spool order); null when the node has no
 * tracking listener (`tracking.base_url` unset): then nothing is tracked and no List-Unsubscribe is added.
 */
export function trackingSettingsFor(config: Config, tenant: string, recipients: string[]): TrackingSettings | null {
  const baseUrl = config.tracking.baseUrl;
  if (!baseUrl) return null;
  const t = config.tenants[tenant];
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
export function defaultStreamOf(config: Config, tenant: string): 'marketing' | 'transactional' {
  return config.tenants[tenant]?.stream ?? 'marketing';
}
