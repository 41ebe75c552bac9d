/**
 * Webhook endpoints made through the control API (tenants' own), next to the config file's (a bootstrap,
 * like `smtp_users`: listed, but changed only in the file). The records live in LMDB with their signing
 * secret sealed under the master key; the node's WebhookDelivery runs one worker per enabled endpoint and
 * learns every change at once (`delivery`): a new endpoint starts from the next event, a changed one keeps
 * its cursor, a deleted one stops.
 *
 *   control.webhooks  id → WebhookRecord
 */
import crypto from 'node:crypto';
import type { Database } from 'lmdb';
import type { Config } from '../core/config.js';
import type { Store } from '../core/store.js';
import { AddressPolicy } from '../events/address-policy.js';
import { filterOf, subscriptionProblems } from '../events/types.js';
import { urlProblem, type WebhookEndpointConfig } from '../events/webhook-config.js';
import type { WebhookDelivery } from '../events/webhooks.js';
import type { Secrets } from './secrets.js';

export interface WebhookRecord {
  id: string;
  tenant: string;
  url: string;
  events: string[];
  /** the signing secret, sealed (context `webhook:<id>`) */
  secret_sealed: string;
  /** false: paused by its owner (no worker; the cursor is kept, so enabling it delivers what it missed) */
  enabled: boolean;
  created_at: number;
  updated_at: number;
}

export type WebhookChange = Partial<Pick<WebhookRecord, 'url' | 'events' | 'enabled'>> & { secret?: string };

const sealContext = (id: string) => `webhook:${id}`;

export const newWebhookSecret = () => `whsec_${crypto.randomBytes(32).toString('base64url')}`;

export class WebhookEndpoints {
  private readonly records: Database<WebhookRecord, string>;
  private readonly policy: AddressPolicy;
  /** the node's delivery engine (null until the node attaches it) */
  delivery: WebhookDelivery | null = null;

  constructor(
    store: Store,
    private readonly secrets: Secrets,
    private readonly config: Config,
  ) {
    this.records = store.db('control.webhooks');
    this.policy = new AddressPolicy(config.webhooks.allowNetworks);
  }

  /** The config file's endpoints. */
  configured(): WebhookEndpointConfig[] {
    return this.config.webhooks.endpoints;
  }

  /** Every API endpoint, id order. */
  list(): WebhookRecord[] {
    const out: WebhookRecord[] = [];
    for (const { key, value } of this.records.getRange({ snapshot: false })) if (typeof key === 'string') out.push(value);
    return out;
  }

  get(id: string): WebhookRecord | undefined {
    return this.records.get(id);
  }

  /** Why `url` cannot be a webhook URL (a sentence), or null. */
  urlProblem(url: string): string | null {
    const r = urlProblem(url, this.policy, this.config.webhooks.allowNetworks.length > 0);
    return typeof r === 'string' ? r : null;
  }

  /** Problems of a subscription for `tenant`, one per event type. */
  eventProblems(events: string[], tenant: string): Array<{ field: string; message: string }> {
    return subscriptionProblems(events, tenant).map((p) => ({ field: `body.events.${p.index}`, message: p.message }));
  }

  /** A fresh id no endpoint (config or API) has. */
  newId(): string {
    for (;;) {
      const id = `wh_${crypto.randomBytes(8).toString('hex')}`;
      if (!this.records.get(id) && !this.configured().some((e) => e.id === id)) return id;
    }
  }

  /** Writes a new endpoint; call inside a transaction. */
  createIn(input: { id: string; tenant: string; url: string; events: string[]; secret: string; enabled: boolean }, now = Date.now()): WebhookRecord {
    const record: WebhookRecord = { id: input.id, tenant: input.tenant, url: input.url, events: input.events, secret_sealed: this.secrets.seal(input.secret, sealContext(input.id)), enabled: input.enabled, created_at: now, updated_at: now };
    this.records.put(record.id, record);
    return record;
  }

  /** Applies a change; call inside a transaction. */
  updateIn(id: string, change: WebhookChange, now = Date.now()): WebhookRecord {
    const old = this.records.get(id)!;
    const { secret, ...fields } = change;
    const record: WebhookRecord = { ...old, ...fields, ...(secret ? { secret_sealed: this.secrets.seal(secret, sealContext(id)) } : {}), updated_at: now };
    this.records.put(id, record);
    return record;
  }

  deleteIn(id: string): void {
    this.records.remove(id);
  }

  /** Every endpoint of a deleted tenant goes; call inside a transaction. Returns how many. */
  removeAllIn(tenant: string): string[] {
    const gone = this.list().filter((r) => r.tenant === tenant).map((r) => r.id);
    for (const id of gone) this.records.remove(id);
    return gone;
  }

  /** What the delivery engine runs for a record. */
  endpointOf(r: WebhookRecord): WebhookEndpointConfig {
    const secret = this.secrets.open(r.secret_sealed, sealContext(r.id)).toString('utf8');
    const fingerprint = crypto.createHash('sha256').update(JSON.stringify([r.tenant, r.url, secret, [...r.events].sort()])).digest('hex').slice(0, 16);
    return { id: r.id, tenant: r.tenant, url: new URL(r.url), secret, events: r.events, filter: filterOf(r.tenant, r.events), fingerprint };
  }

  /** The enabled API endpoints, for the engine at start. */
  enabledEndpoints(): WebhookEndpointConfig[] {
    return this.list().filter((r) => r.enabled).map((r) => this.endpointOf(r));
  }

  /** Tells the engine about a committed change of endpoint `id` (made, changed, paused or deleted). */
  async apply(id: string): Promise<void> {
    if (!this.delivery) return;
    const r = this.records.get(id);
    if (!r) await this.delivery.remove(id, true);
    else if (!r.enabled) await this.delivery.remove(id, false);
    else await this.delivery.put(this.endpointOf(r));
  }
}
