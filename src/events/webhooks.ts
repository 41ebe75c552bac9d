/**
 * Webhook delivery. Each configured endpoint has one worker that follows the events outbox from the
 * endpoint's durable cursor, takes the events of its tenant and types, and POSTs them in order, a signed
 * batch at a time; the cursor moves (in an LMDB transaction) only after a 2xx. A failure retries the same
 * batch after an exponential, jittered wait; an endpoint that has not had a success for
 * `webhook_delivery.disable_after` is disabled with a `webhook_disabled` event until an operator enables it
 * again or its config changes. Delivery is at least once: after a crash a batch may be sent again.
 *
 * Where a request may go is decided per attempt (see address-policy.ts): the URL's host is resolved, every
 * address is checked, and the connection goes to a checked address, never through another lookup.
 */
import http from 'node:http';
import https from 'node:https';
import type { Database } from 'lmdb';
import { Counter, Gauge, type Registry } from 'prom-client';
import type { Logger } from '../core/log.js';
import type { Store, TernEvent } from '../core/store.js';
import { AddressPolicy, REFUSAL_ADVICE, literalAddress } from './address-policy.js';
import { OutboxFollower } from './follower.js';
import { PostError, postJson } from './post.js';
import { sign } from './signature.js';
import { ALL_TENANTS, matchesFilter } from './types.js';
import type { WebhookEndpointConfig, WebhookSettings } from './webhook-config.js';

/** What is kept per endpoint (LMDB `webhooks.endpoints`, keyed by endpoint id). */
export interface EndpointState {
  /** every event up to this number was delivered to the endpoint or was not for it */
  cursor: number;
  fingerprint: string;
  /** when the current run of failures began; null after a success */
  failing_since: number | null;
  /** failed requests since the last success */
  failures: number;
  last_error: string | null;
  last_attempt_at: number | null;
  last_success_at: number | null;
  disabled_at: number | null;
  /** outbox events (of any tenant) that retention pruned before this endpoint read them */
  pruned_unread: number;
}

export interface EndpointStatus {
  id: string;
  tenant: string;
  url: string;
  events: string[];
  state: 'active' | 'failing' | 'disabled';
  cursor: number;
  outbox_seq: number;
  /** events of the batch being delivered (or retried) */
  pending: number;
  /** age of the oldest event not yet delivered */
  lag_seconds: number;
  failures: number;
  failing_since: string | null;
  last_error: string | null;
  last_attempt_at: string | null;
  last_success_at: string | null;
  next_attempt_at: string | null;
  disabled_at: string | null;
  pruned_unread: number;
}

export type RequestResult = 'ok' | 'http_error' | 'redirect' | 'timeout' | 'network' | 'refused' | 'dns';

export type Outcome = { ok: true; status: number } | { ok: false; result: Exclude<RequestResult, 'ok'>; error: string };

export interface WebhookDeps {
  store: Store;
  settings: WebhookSettings;
  /** A and AAAA addresses of a host name (the node's resolver) */
  resolveHost: (host: string) => Promise<string[]>;
  log: Logger;
  /** the node's name: event ids are `<node>:<seq>` */
  node: string;
  /** CAs trusted for https endpoints; undefined = Node's list */
  ca?: string[];
}

/** a request body stops growing here (a batch has at least one event, whatever its size) */
const MAX_BODY_BYTES = 1_000_000;
/** an idle endpoint writes how far it has passed over other events at most this often */
const IDLE_PERSIST_MS = 60_000;
const USER_AGENT = 'Tern-Webhooks/1';

/** What an HTTP answer means for delivery: only a 2xx is a success; a redirect is never followed. */
export function judgeAnswer(status: number, location: string | null, body: string): Outcome {
  if (status >= 200 && status < 300) return { ok: true, status };
  const text = body.replace(/\s+/g, ' ').trim().slice(0, 200);
  if (status >= 300 && status < 400) return { ok: false, result: 'redirect', error: `HTTP ${status} redirect${location ? ` to ${location}` : ''} (redirects are not followed; configure the final URL)` };
  return { ok: false, result: 'http_error', error: `HTTP ${status}${text ? `: ${text}` : ''}` };
}

/** The wait before retrying after the `failures`-th failure in a row: doubling from `initialMs`, ±20 %, capped. */
export function retryDelay(failures: number, initialMs: number, maxMs: number, random: () => number = Math.random): number {
  const base = Math.min(maxMs, initialMs * 2 ** Math.min(Math.max(failures, 1) - 1, 40));
  return Math.min(maxMs, Math.round(base * (0.8 + 0.4 * random())));
}

/** An event as it appears in a webhook body and on the live stream: `id`, `seq`, `type`, `at`, then its fields. */
export function publicEvent(e: TernEvent, node: string): Record<string, unknown> {
  const { seq, type, at, ...fields } = e;
  return { id: `${node}:${seq}`, seq, type, at, ...fields };
}

/** The addresses a request to `url` may use, or why none may be. */
export async function checkTarget(url: URL, policy: AddressPolicy, resolveHost: (host: string) => Promise<string[]>): Promise<{ ok: true; addresses: string[] } | Extract<Outcome, { ok: false }>> {
  const literal = literalAddress(url.hostname);
  let addresses: string[];
  if (literal) addresses = [literal];
  else {
    try {
      addresses = await resolveHost(url.hostname);
    } catch (err) {
      return { ok: false, result: 'dns', error: `${url.hostname}: ${(err as Error).message}` };
    }
    if (!addresses.length) return { ok: false, result: 'dns', error: `${url.hostname} has no address (A or AAAA record)` };
  }
  // every address must pass, or a name with one public and one private address would be a way in
  for (const a of addresses) {
    const verdict = policy.check(a);
    const which = literal ? a : `${url.hostname} resolves to ${a}`;
    if (!verdict.allowed) return { ok: false, result: 'refused', error: `refused: ${which}, ${verdict.range}; ${REFUSAL_ADVICE}` };
    if (url.protocol === 'http:' && !verdict.listed)
      return { ok: false, result: 'refused', error: `refused: ${which}, not in webhook_delivery.allow_networks; plain http goes only there (use https)` };
  }
  return { ok: true, addresses };
}

interface Batch {
  events: TernEvent[];
  body: Buffer;
  /** requests made for this batch */
  attempts: number;
}

interface Instruments {
  requests: Counter<'endpoint' | 'result'>;
  delivered: Counter<'endpoint'>;
}

/** One endpoint's worker. */
class Endpoint {
  state: EndpointState;
  private readonly follower: OutboxFollower;
  private batch: Batch | null = null;
  private readonly agent: http.Agent;
  private stopped = false;
  private inFlight: AbortController | null = null;
  private wakeUp: (() => void) | null = null;
  private loop: Promise<void> | null = null;
  private nextAttemptAt: number | null = null;
  private lastPersist = Date.now();

  constructor(
    readonly config: WebhookEndpointConfig,
    state: EndpointState,
    private readonly deps: WebhookDeps,
    private readonly db: Database<EndpointState, string>,
    private readonly policy: AddressPolicy,
    private readonly instruments: Instruments,
  ) {
    this.state = state;
    this.follower = new OutboxFollower(deps.store, state.cursor, (e) => matchesFilter(config.filter, e));
    const agentOptions = { keepAlive: true, maxSockets: 1, keepAliveMsecs: 30_000 };
    this.agent = config.url.protocol === 'https:' ? new https.Agent(agentOptions) : new http.Agent(agentOptions);
  }

  start(): void {
    this.loop = this.run().catch((err) => this.deps.log.error({ err, endpoint: this.config.id }, 'webhook: the delivery loop stopped'));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.inFlight?.abort();
    this.follower.close();
    this.wake();
    await this.loop;
    this.agent.destroy();
    if (!this.batch && this.follower.position > this.state.cursor) await this.save({ cursor: this.follower.position }).catch(() => {});
  }

  /** Wakes a sleeping or disabled worker (enable, stop). */
  wake(): void {
    const w = this.wakeUp;
    this.wakeUp = null;
    w?.();
    this.follower.interrupt();
  }

  status(now = Date.now()): EndpointStatus {
    const s = this.state;
    const iso = (t: number | null) => (t === null ? null : new Date(t).toISOString());
    const first = this.batch?.events[0];
    return {
      id: this.config.id,
      tenant: this.config.tenant,
      url: this.config.url.href,
      events: this.config.events,
      state: s.disabled_at !== null ? 'disabled' : s.failing_since !== null ? 'failing' : 'active',
      cursor: first ? first.seq - 1 : this.follower.position,
      outbox_seq: this.deps.store.lastSeq,
      pending: this.batch?.events.length ?? 0,
      lag_seconds: first ? Math.max(0, Math.round((now - first.at) / 1000)) : 0,
      failures: s.failures,
      failing_since: iso(s.failing_since),
      last_error: s.last_error,
      last_attempt_at: iso(s.last_attempt_at),
      last_success_at: iso(s.last_success_at),
      next_attempt_at: s.disabled_at === null ? iso(this.nextAttemptAt) : null,
      disabled_at: iso(s.disabled_at),
      pruned_unread: s.pruned_unread,
    };
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      if (this.state.disabled_at !== null) {
        await this.sleep(null);
        continue;
      }
      if (!this.batch) {
        this.batch = this.nextBatch();
        if (!this.batch) {
          if (this.follower.idle) {
            if (this.follower.position > this.state.cursor && Date.now() - this.lastPersist > IDLE_PERSIST_MS) await this.save({ cursor: this.follower.position });
            await this.follower.wait(IDLE_PERSIST_MS);
          } else await new Promise((r) => setImmediate(r)); // a long stretch of other events: let others run
          continue;
        }
      }
      const outcome = await this.attempt(this.batch);
      if (this.stopped) return;
      if (outcome.ok) await this.succeeded(this.batch);
      else await this.failed(outcome);
    }
  }

  /** Reads the next events for this endpoint and makes their request body, or null when there are none. */
  private nextBatch(): Batch | null {
    const { events, missing } = this.follower.read(this.deps.settings.batchSize);
    if (missing) {
      this.state.pruned_unread += missing;
      this.deps.log.warn({ endpoint: this.config.id, missing }, 'webhook: outbox events were pruned (events.retention) before this endpoint read them');
    }
    if (!events.length) return null;
    const parts: string[] = [];
    let size = 0;
    for (const e of events) {
      const json = JSON.stringify(publicEvent(e, this.deps.node));
      if (parts.length && size + json.length > MAX_BODY_BYTES) break;
      parts.push(json);
      size += json.length + 1;
    }
    const taken = events.slice(0, parts.length);
    if (taken.length < events.length) this.follower.rewind(taken.at(-1)!.seq);
    return { events: taken, body: Buffer.from(`{"events":[${parts.join(',')}]}`), attempts: 0 };
  }

  private async attempt(batch: Batch): Promise<Outcome> {
    batch.attempts++;
    this.state.last_attempt_at = Date.now();
    this.nextAttemptAt = null;
    const { url } = this.config;
    const target = await checkTarget(url, this.policy, this.deps.resolveHost);
    if (!target.ok) return target;
    // consecutive failures move on to the host's next address
    const address = target.addresses[this.state.failures % target.addresses.length]!;
    const first = batch.events[0]!.seq;
    const last = batch.events.at(-1)!.seq;
    const headers = {
      'user-agent': USER_AGENT,
      'tern-signature': sign(this.config.secret, batch.body),
      'tern-webhook-id': this.config.id,
      'tern-delivery-id': `${this.config.id}:${first}-${last}`,
      'tern-delivery-attempt': String(batch.attempts),
    };
    this.inFlight = new AbortController();
    try {
      const answer = await postJson({ url, address }, batch.body, headers, { timeoutMs: this.deps.settings.timeoutMs, agent: this.agent, ca: this.deps.ca, signal: this.inFlight.signal });
      return judgeAnswer(answer.status, answer.location, answer.body);
    } catch (err) {
      if (err instanceof PostError) return { ok: false, result: err.kind, error: `${url.origin} via ${address}: ${err.message}` };
      throw err;
    } finally {
      this.inFlight = null;
    }
  }

  private async succeeded(batch: Batch): Promise<void> {
    const recovered = this.state.failing_since !== null;
    this.batch = null;
    this.instruments.requests.inc({ endpoint: this.config.id, result: 'ok' });
    this.instruments.delivered.inc({ endpoint: this.config.id }, batch.events.length);
    await this.save({ cursor: this.follower.position, failing_since: null, failures: 0, last_success_at: Date.now() });
    if (recovered) this.deps.log.info({ endpoint: this.config.id }, 'webhook: the endpoint answers again');
  }

  private async failed(outcome: Extract<Outcome, { ok: false }>): Promise<void> {
    const now = Date.now();
    this.instruments.requests.inc({ endpoint: this.config.id, result: outcome.result });
    const failingSince = this.state.failing_since ?? now;
    const failures = this.state.failures + 1;
    const { disableAfterMs, backoffInitialMs, backoffMaxMs } = this.deps.settings;
    if (now - failingSince >= disableAfterMs) {
      await this.disable({ failing_since: failingSince, failures, last_error: outcome.error }, now);
      return;
    }
    await this.save({ failing_since: failingSince, failures, last_error: outcome.error });
    const wait = retryDelay(failures, backoffInitialMs, backoffMaxMs);
    this.deps.log.warn({ endpoint: this.config.id, error: outcome.error, result: outcome.result, failures, retry_in_ms: wait }, 'webhook: delivery failed; retrying');
    this.nextAttemptAt = now + wait;
    await this.sleep(wait);
  }

  private async disable(change: Pick<EndpointState, 'failing_since' | 'failures' | 'last_error'>, now: number): Promise<void> {
    const state: EndpointState = { ...this.state, ...change, disabled_at: now };
    await this.deps.store.transact((tx) => {
      this.db.put(this.config.id, state);
      tx.event('webhook_disabled', {
        at: now,
        ...this.tenantField(),
        endpoint: this.config.id,
        failing_since: change.failing_since,
        failures: change.failures,
        last_error: change.last_error,
      });
    });
    this.state = state;
    this.nextAttemptAt = null;
    this.deps.log.error({ endpoint: this.config.id, failing_since: new Date(change.failing_since!).toISOString(), last_error: change.last_error }, 'webhook: endpoint disabled after failing too long; enable it with POST /api/v1/webhooks/<id>/enable');
  }

  /** Enables a disabled endpoint again (`by`: who decided); false when it was not disabled. */
  async enable(by: 'operator' | 'config', extra: Partial<EndpointState> = {}): Promise<boolean> {
    if (this.state.disabled_at === null) return false;
    const state: EndpointState = { ...this.state, ...extra, disabled_at: null, failing_since: null, failures: 0 };
    await this.deps.store.transact((tx) => {
      this.db.put(this.config.id, state);
      tx.event('webhook_enabled', { ...this.tenantField(), endpoint: this.config.id, by });
    });
    this.state = state;
    this.wake();
    return true;
  }

  /** Events about an endpoint belong to its tenant (an endpoint for every tenant: to the operator). */
  private tenantField(): { tenant?: string } {
    return this.config.tenant === ALL_TENANTS ? {} : { tenant: this.config.tenant };
  }

  private async save(change: Partial<EndpointState>): Promise<void> {
    const state = { ...this.state, ...change };
    await this.deps.store.transact(() => this.db.put(this.config.id, state));
    this.state = state;
    this.lastPersist = Date.now();
  }

  /** Sleeps `ms` (null: until woken); wake() and stop() end it early. */
  private sleep(ms: number | null): Promise<void> {
    if (this.stopped) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = ms === null ? null : setTimeout(() => this.wake(), ms);
      this.wakeUp = () => {
        if (timer) clearTimeout(timer);
        resolve();
      };
    });
  }
}

/** Every configured endpoint's worker, their status and the admin actions on them. */
export class WebhookDelivery {
  private readonly endpoints = new Map<string, Endpoint>();
  private readonly db: Database<EndpointState, string>;
  private readonly policy: AddressPolicy;
  private readonly instruments: Instruments;

  constructor(
    private readonly deps: WebhookDeps,
    registry?: Registry,
  ) {
    this.db = deps.store.db<EndpointState, string>('webhooks.endpoints');
    this.policy = new AddressPolicy(deps.settings.allowNetworks);
    const registers = registry ? [registry] : [];
    this.instruments = {
      requests: new Counter({ name: 'tern_webhook_requests_total', help: 'webhook requests by endpoint and result (ok, http_error, redirect, timeout, network, refused, dns)', labelNames: ['endpoint', 'result'], registers }),
      delivered: new Counter({ name: 'tern_webhook_events_delivered_total', help: 'events acknowledged (2xx) by each webhook endpoint', labelNames: ['endpoint'], registers }),
    };
    if (registry) this.registerGauges(registry);
  }

  /**
   * Loads or creates each endpoint's state (a new endpoint starts with the next event), enables a disabled
   * endpoint whose config changed, and starts the workers.
   */
  async start(extra: WebhookEndpointConfig[] = []): Promise<void> {
    for (const config of [...this.deps.settings.endpoints, ...extra]) await this.open(config);
    for (const e of this.endpoints.values()) e.start();
  }

  /** Loads or creates an endpoint's state and makes its worker (not started). */
  private async open(config: WebhookEndpointConfig): Promise<Endpoint> {
    const { store } = this.deps;
    let state = this.db.get(config.id);
    if (!state) {
      state = { cursor: store.lastSeq, fingerprint: config.fingerprint, failing_since: null, failures: 0, last_error: null, last_attempt_at: null, last_success_at: null, disabled_at: null, pruned_unread: 0 };
      const fresh = state;
      await store.transact(() => this.db.put(config.id, fresh));
    } else if (state.cursor > store.lastSeq) {
      // an outbox that is younger than the cursor (a data directory restored or replaced): follow the new one
      this.deps.log.warn({ endpoint: config.id, cursor: state.cursor, outbox_seq: store.lastSeq }, 'webhook: the cursor is past the end of the outbox; starting from its end');
      state = { ...state, cursor: store.lastSeq };
    }
    const endpoint = new Endpoint(config, state, this.deps, this.db, this.policy, this.instruments);
    this.endpoints.set(config.id, endpoint);
    if (state.fingerprint !== config.fingerprint) {
      if (await endpoint.enable('config', { fingerprint: config.fingerprint })) this.deps.log.info({ endpoint: config.id }, 'webhook: a disabled endpoint whose config changed is enabled again');
      else {
        const changed = { ...state, fingerprint: config.fingerprint, failing_since: null, failures: 0 };
        await store.transact(() => this.db.put(config.id, changed));
        endpoint.state = changed;
      }
    }
    return endpoint;
  }

  /**
   * Runs an endpoint made or changed at run time (control API): a new one starts from the next event; a
   * changed one restarts its worker from its cursor (a batch in flight is sent again, to the new URL).
   */
  async put(config: WebhookEndpointConfig): Promise<void> {
    const old = this.endpoints.get(config.id);
    if (old) {
      this.endpoints.delete(config.id);
      await old.stop();
    }
    (await this.open(config)).start();
  }

  /** Stops an endpoint's worker; `forget`: it was deleted, so its cursor goes too (else it is paused). */
  async remove(id: string, forget: boolean): Promise<void> {
    const e = this.endpoints.get(id);
    if (e) {
      this.endpoints.delete(id);
      await e.stop();
    }
    if (forget) await this.deps.store.transact(() => this.db.remove(id));
  }

  async stop(): Promise<void> {
    await Promise.all([...this.endpoints.values()].map((e) => e.stop()));
  }

  status(id?: string): EndpointStatus[] {
    const now = Date.now();
    return [...this.endpoints.values()].filter((e) => id === undefined || e.config.id === id).map((e) => e.status(now));
  }

  /** Enables a disabled endpoint; null when no endpoint has that id. */
  async enable(id: string): Promise<EndpointStatus | null> {
    const e = this.endpoints.get(id);
    if (!e) return null;
    if (await e.enable('operator')) this.deps.log.info({ endpoint: id }, 'webhook: endpoint enabled by the operator');
    return e.status();
  }

  private registerGauges(registry: Registry): void {
    const delivery = this;
    new Gauge({
      name: 'tern_webhook_lag_seconds',
      help: 'age of the oldest event a webhook endpoint has not acknowledged yet (0 when caught up)',
      labelNames: ['endpoint'],
      registers: [registry],
      collect() {
        this.reset();
        for (const s of delivery.status()) this.set({ endpoint: s.id }, s.lag_seconds);
      },
    });
    new Gauge({
      name: 'tern_webhook_behind_events',
      help: 'outbox events (of any tenant) after the endpoint cursor',
      labelNames: ['endpoint'],
      registers: [registry],
      collect() {
        this.reset();
        for (const s of delivery.status()) this.set({ endpoint: s.id }, Math.max(0, s.outbox_seq - s.cursor));
      },
    });
    new Gauge({
      name: 'tern_webhook_disabled',
      help: '1 for a webhook endpoint disabled after failing too long',
      labelNames: ['endpoint'],
      registers: [registry],
      collect() {
        this.reset();
        for (const s of delivery.status()) this.set({ endpoint: s.id }, s.state === 'disabled' ? 1 : 0);
      },
    });
  }
}
