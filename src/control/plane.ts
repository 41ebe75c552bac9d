/**
 * The control plane's state, without HTTP: tenants, API keys, SMTP credentials, users and the audit log,
 * all in the node's LMDB store, and the master key that protects secrets. The node makes one at start and
 * hands parts of it to reception (credentials, sending policy) and delivery (tenant pools); the control
 * API's route plugins change it only through `change()`, which writes the change and its audit entry in one
 * transaction and answers once it is fsynced.
 */
import type { Config } from '../core/config.js';
import type { Logger } from '../core/log.js';
import type { Store, Tx } from '../core/store.js';
import { parseDuration } from '../core/units.js';
import { parseRate, type Rate } from '../mta/rate.js';
import { DnsClient, resolverFor } from '../mta/dns.js';
import { ApiKeys } from './api-keys.js';
import type { Resolve } from './domain-checks.js';
import { SendingDomains } from './domains.js';
import { AuditLog, type AuditInput, type AuditOrigin } from './audit.js';
import { EgressPools } from './pools.js';
import { Secrets } from './secrets.js';
import { SmtpCredentials } from './smtp-credentials.js';
import { TenantDirectory } from './tenants.js';
import { Users } from './users.js';
import { WebhookEndpoints } from './webhooks.js';

export interface ControlSettings {
  sessionTtlMs: number;
  /** base URL for links in account mail; null: the control listener's own address */
  publicUrl: string | null;
  mailFrom: string;
  apiRate: Rate;
  loginRate: Rate;
}

export function controlSettings(config: Config): ControlSettings {
  const c = config.raw.control;
  return {
    sessionTtlMs: parseDuration(c.session_ttl),
    publicUrl: c.public_url ? c.public_url.replace(/\/+$/, '') : null,
    mailFrom: c.mail_from ?? `tern@${config.hostname}`,
    apiRate: parseRate(c.api_rate),
    loginRate: parseRate(c.login_rate),
  };
}

export class ControlPlane {
  readonly settings: ControlSettings;
  readonly secrets: Secrets;
  readonly tenants: TenantDirectory;
  readonly apiKeys: ApiKeys;
  readonly smtpCredentials: SmtpCredentials;
  readonly domains: SendingDomains;
  readonly users: Users;
  readonly audit: AuditLog;
  /** egress pools: the config's and the API's (src/control/pools.ts) */
  readonly pools: EgressPools;
  /** webhook endpoints made through the API (src/control/webhooks.ts) */
  readonly webhooks: WebhookEndpoints;
  private timer: NodeJS.Timeout | null = null;

  constructor(
    /** resolve: how domain checks ask DNS (the node's DnsClient; by default one on the configured servers) */
    readonly deps: { config: Config; store: Store; log: Logger; env?: NodeJS.ProcessEnv; resolve?: Resolve },
  ) {
    const { config, store } = deps;
    this.settings = controlSettings(config);
    this.secrets = Secrets.load(config.dataDir, deps.env);
    this.tenants = new TenantDirectory(store, config);
    this.pools = new EgressPools(store, config);
    this.webhooks = new WebhookEndpoints(store, this.secrets, config);
    this.apiKeys = new ApiKeys(store);
    const configUsers = new Set(config.smtpUsers.map((u) => u.username));
    this.smtpCredentials = new SmtpCredentials(store, this.secrets, (u) => configUsers.has(u));
    this.domains = new SendingDomains({ store, secrets: this.secrets, config, tenants: this.tenants, pools: this.pools, resolve: deps.resolve ?? resolverFor(new DnsClient(config.dns.servers, config.dns.timeoutMs)) });
    this.users = new Users(store);
    this.audit = new AuditLog(store);
  }

  /**
   * Runs `run` in one write transaction with the audit entry `describe` makes of its result (none when it
   * returns null), and resolves once both are durable.
   */
  async change<T>(origin: AuditOrigin, run: (tx: Tx) => T, describe: (result: T) => AuditInput | null): Promise<T> {
    const result = await this.deps.store.transact((tx) => {
      const r = run(tx);
      const entry = describe(r);
      if (entry) this.audit.writeIn(origin, entry);
      return r;
    });
    await this.deps.store.durable();
    return result;
  }

  /** Sweeps expired sessions, invitations and reset tokens every hour. */
  start(): void {
    this.timer = setInterval(() => {
      this.users.pruneExpired().catch((err) => this.deps.log.warn({ err }, 'control: pruning expired sessions failed'));
    }, 3_600_000);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}
