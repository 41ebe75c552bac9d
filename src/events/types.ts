/**
 * Every event type the outbox carries, and whom it concerns. Webhook subscriptions and the live stream are
 * checked against this list, so a typo in a subscription is a config error instead of silence.
 *
 * `tenant` events carry a `tenant` field and go to that tenant's endpoints and streams. `node` events concern
 * the operator (warmup, MTA-STS, reports nobody could be attributed): only endpoints and streams for all
 * tenants (`tenant: "*"`) get them. Queue actions carry a tenant when their selector names one.
 */
export type EventScope = 'tenant' | 'node';

export const EVENT_TYPES = {
  accepted: 'tenant',
  delivered: 'tenant',
  deferred: 'tenant',
  failed: 'tenant',
  expired: 'tenant',
  suppressed: 'tenant',
  suppression_added: 'tenant',
  suppression_removed: 'tenant',
  bounced: 'tenant',
  delayed: 'tenant',
  dsn_delivered: 'tenant',
  complained: 'tenant',
  autoreply: 'tenant',
  opened: 'tenant',
  clicked: 'tenant',
  unsubscribed: 'tenant',
  queue_suspended: 'tenant',
  queue_resumed: 'tenant',
  queue_failed: 'tenant',
  queue_retried: 'tenant',
  webhook_disabled: 'tenant',
  webhook_enabled: 'tenant',
  domain_verified: 'tenant',
  domain_failing: 'tenant',
  warmup_started: 'node',
  warmup_advanced: 'node',
  warmup_held: 'node',
  warmup_reset: 'node',
  mta_sts_failure: 'node',
  report_unknown: 'node',
  report_unattributed: 'node',
} as const satisfies Record<string, EventScope>;

export type EventType = keyof typeof EVENT_TYPES;

/** Subscribes to every type (tenant types only, for a tenant's endpoint or stream). */
export const ALL_TYPES = '*';
/** Stands for every tenant: an operator's endpoint or stream, which also gets node events. */
export const ALL_TENANTS = '*';

export function isEventType(name: string): name is EventType {
  return Object.hasOwn(EVENT_TYPES, name);
}

/**
 * Checks a subscription list (`["delivered", "bounced"]` or `["*"]`) for a tenant (or `*`); returns one
 * sentence per problem, each starting with the offending entry's index.
 */
export function subscriptionProblems(types: string[], tenant: string): Array<{ index: number; message: string }> {
  const problems: Array<{ index: number; message: string }> = [];
  types.forEach((t, index) => {
    if (t === ALL_TYPES) {
      if (types.length > 1) problems.push({ index, message: `"*" already means every event type; list nothing else beside it` });
    } else if (!isEventType(t)) {
      problems.push({ index, message: `"${t}" is not an event type; the types are ${Object.keys(EVENT_TYPES).join(', ')}` });
    } else if (EVENT_TYPES[t] === 'node' && tenant !== ALL_TENANTS) {
      problems.push({ index, message: `"${t}" concerns the node, not a tenant; only an endpoint with tenant "*" gets it` });
    }
  });
  return problems;
}

/** Which events a subscriber (a webhook endpoint, a stream) receives. */
export interface EventFilter {
  /** a tenant id, or `*` for all tenants and node events */
  tenant: string;
  /** null: every type the tenant scope allows */
  types: ReadonlySet<string> | null;
}

export function matchesFilter(filter: EventFilter, event: { type: string; tenant?: unknown }): boolean {
  if (filter.types && !filter.types.has(event.type)) return false;
  if (filter.tenant === ALL_TENANTS) return true;
  return event.tenant === filter.tenant;
}

export function filterOf(tenant: string, types: string[]): EventFilter {
  return { tenant, types: types.includes(ALL_TYPES) || !types.length ? null : new Set(types) };
}
