/**
 * The `webhooks` and `webhook_delivery` config keys, checked beyond their schema: known event types, a
 * tenant of the file or a well-formed tenant id (one made through the control API), a URL that can be delivered to (https unless the operator allowed the network; an IP
 * literal in a private range refused at once), unique ids.
 */
import crypto from 'node:crypto';
import { parseCidr, type Cidr } from '../core/net.js';
import { isTenantId } from '../control/validate.js';
import { parseDuration } from '../core/units.js';
import { AddressPolicy, REFUSAL_ADVICE, literalAddress } from './address-policy.js';
import { ALL_TENANTS, filterOf, subscriptionProblems, type EventFilter } from './types.js';

export interface RawWebhook {
  id?: string;
  tenant: string;
  url: string;
  secret: string;
  events: string[];
}

export interface RawWebhookDelivery {
  allow_networks: string[];
  timeout: string;
  batch_size: number;
  backoff_initial: string;
  backoff_max: string;
  disable_after: string;
}

export interface WebhookEndpointConfig {
  id: string;
  /** a tenant id, or `*` for every tenant and node events */
  tenant: string;
  url: URL;
  secret: string;
  events: string[];
  filter: EventFilter;
  /** changes when anything of the endpoint changes: a disabled endpoint whose config changed is enabled again */
  fingerprint: string;
}

export interface WebhookSettings {
  endpoints: WebhookEndpointConfig[];
  allowNetworks: Cidr[];
  timeoutMs: number;
  batchSize: number;
  backoffInitialMs: number;
  backoffMaxMs: number;
  disableAfterMs: number;
}

export const WEBHOOK_ID_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$';

/** The id of an endpoint configured without one: stable as long as its tenant and URL stay the same. */
export function derivedWebhookId(tenant: string, url: string): string {
  return `wh-${crypto.createHash('sha256').update(`${tenant}\n${url}`).digest('hex').slice(0, 12)}`;
}

export function resolveWebhooks(
  hooks: RawWebhook[],
  delivery: RawWebhookDelivery,
  ctx: { tenants: string[]; retentionMs: number },
  problems: string[],
): WebhookSettings {
  const allowNetworks: Cidr[] = [];
  delivery.allow_networks.forEach((cidr, i) => {
    try {
      allowNetworks.push(parseCidr(cidr));
    } catch (err) {
      problems.push(`webhook_delivery.allow_networks[${i}]: ${(err as Error).message}`);
    }
  });
  const policy = new AddressPolicy(allowNetworks);
  const ids = new Set<string>();
  const endpoints: WebhookEndpointConfig[] = [];
  hooks.forEach((h, i) => {
    const at = `webhooks[${i}]`;
    // a tenant of the file, or the id of one made through the control API (which the file cannot know: the node
    // warns at start when no such tenant exists); the endpoint gets the events whose tenant field is this id
    if (h.tenant !== ALL_TENANTS && !ctx.tenants.includes(h.tenant) && !isTenantId(h.tenant))
      problems.push(`${at}.tenant: "${h.tenant}" is neither a tenant defined under tenants nor a tenant id (1 to 63 lower-case letters, digits, "-" or "_", as the control API makes them); write "*" for an operator's endpoint that gets every tenant's events`);
    for (const p of subscriptionProblems(h.events, h.tenant)) problems.push(`${at}.events[${p.index}]: ${p.message}`);
    const url = urlProblem(h.url, policy, allowNetworks.length > 0);
    if (typeof url === 'string') problems.push(`${at}.url: ${url}`);
    const id = h.id ?? derivedWebhookId(h.tenant, h.url);
    if (ids.has(id)) problems.push(`${at}.id: "${id}" is used by another endpoint; give each endpoint its own id`);
    ids.add(id);
    if (typeof url === 'string') return;
    const fingerprint = crypto.createHash('sha256').update(JSON.stringify([h.tenant, h.url, h.secret, [...h.events].sort()])).digest('hex').slice(0, 16);
    endpoints.push({ id, tenant: h.tenant, url, secret: h.secret, events: h.events, filter: filterOf(h.tenant, h.events), fingerprint });
  });
  const ms = (key: keyof RawWebhookDelivery) => {
    try {
      return parseDuration(String(delivery[key]));
    } catch (err) {
      problems.push(`webhook_delivery.${key}: ${(err as Error).message}`);
      return 0;
    }
  };
  const settings: WebhookSettings = {
    endpoints,
    allowNetworks,
    timeoutMs: ms('timeout'),
    batchSize: delivery.batch_size,
    backoffInitialMs: ms('backoff_initial'),
    backoffMaxMs: ms('backoff_max'),
    disableAfterMs: ms('disable_after'),
  };
  if (settings.backoffMaxMs < settings.backoffInitialMs)
    problems.push(`webhook_delivery.backoff_max: "${delivery.backoff_max}" is shorter than backoff_initial ("${delivery.backoff_initial}"); make it at least as long`);
  // an endpoint is disabled before the events it has not delivered can be pruned
  if (settings.disableAfterMs >= ctx.retentionMs)
    problems.push(`webhook_delivery.disable_after: "${delivery.disable_after}" must be shorter than events.retention, or a failing endpoint would lose events to pruning before it is disabled`);
  return settings;
}

/** The parsed URL, or what is wrong with it. */
export function urlProblem(text: string, policy: AddressPolicy, someNetworksAllowed: boolean): URL | string {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return `"${text}" is not a URL; write it like "https://hooks.example.com/tern"`;
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') return `"${text}" is not an http(s) URL`;
  if (url.username || url.password) return `"${text}" carries credentials; remove them (the Tern-Signature header authenticates each request)`;
  if (url.hash) return `"${text}" has a #fragment, which is never sent; remove it`;
  const literal = literalAddress(url.hostname);
  if (literal) {
    const verdict = policy.check(literal);
    if (!verdict.allowed) return `${literal} is ${verdict.range}; ${REFUSAL_ADVICE}`;
    if (url.protocol === 'http:' && !verdict.listed) return `plain http is only for receivers on networks listed in webhook_delivery.allow_networks; use https`;
  } else if (url.protocol === 'http:' && !someNetworksAllowed) {
    return `plain http is only for receivers on networks listed in webhook_delivery.allow_networks; use https`;
  }
  return url;
}
