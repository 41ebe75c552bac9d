/**
 * A Tern node: every role this build has, wired together from one validated config.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { createSecureContext } from 'node:tls';
import cron from 'node-cron';
import type { FastifyInstance } from 'fastify';
import { ConfigError, type Config } from './core/config.js';
import { createLogger, type Logger } from './core/log.js';
import { Metrics } from './core/metrics.js';
import { Store, type Tx } from './core/store.js';
import { outboundCas, tlsMaterial } from './core/tls.js';
import { DnsClient, resolverFor } from './mta/dns.js';
import { DestinationResolver } from './mta/destination.js';
import { createPreparer, readKeyMaterial, type Preparer } from './mta/prepare-pool.js';
import { Scheduler } from './mta/queues.js';
import { Holds } from './mta/holds.js';
import { QueueAdmin } from './mta/queue-admin.js';
import { Spool, type FinalFailure } from './mta/spool.js';
import { SubmissionListener } from './mta/submission.js';
import { Acceptance } from './mta/acceptance.js';
import { IdempotencyKeys } from './control/idempotency.js';
import { SendingStats } from './events/stats.js';
import { Shaping, describeSettings } from './mta/shaping.js';
import { Warmup, loadWarmupPlans, type WarmupSource } from './mta/warmup.js';
import { MtaStsPolicies } from './mta/mta-sts.js';
import { buildControlServer } from './control/server.js';
import { bootstrapOperatorToken, operatorTokenFile } from './control/operator-token.js';
import { ControlPlane } from './control/plane.js';
import type { EgressPools } from './control/pools.js';
import { SystemMailer } from './control/mailer.js';
import { loadBounceRules, type BounceRules } from './bounce/classify.js';
import { InboundListener } from './bounce/inbound.js';
import { SuppressionList } from './bounce/suppression.js';
import { VerpCodec, loadOrCreateVerpKeys } from './bounce/verp.js';
import { WebhookDelivery } from './events/webhooks.js';
import { EventStreams } from './events/stream.js';
import { TRACKING_HITS, startTracking, type Tracking } from './tracking/index.js';

export interface NodeOptions {
  logger?: Logger;
  /** prepare messages on the calling thread instead of worker threads */
  inlinePrepare?: boolean;
  /** the warmup calendar's clock (tests move it to simulate days) */
  clock?: () => number;
}

/** What classifies and attributes bounces and complaints, and the suppression lists they feed. */
export interface BounceParts {
  rules: BounceRules;
  verp: VerpCodec;
  suppressions: SuppressionList;
}

export class TernNode {
  readonly ports: { submission: number; control: number; inbound: number; tracking: number } = { submission: 0, control: 0, inbound: 0, tracking: 0 };
  /** the tracking listener and its events; null without tracking.base_url */
  tracking: Tracking | null = null;
  private cronTasks: Array<{ stop(): void }> = [];

  private constructor(
    readonly config: Config,
    readonly log: Logger,
    readonly metrics: Metrics,
    readonly store: Store,
    readonly spool: Spool,
    readonly scheduler: Scheduler,
    readonly warmup: Warmup,
    private readonly preparer: Preparer,
    private readonly submission: SubmissionListener,
    private readonly inbound: InboundListener,
    private readonly control: FastifyInstance,
    /** tenants, API keys, SMTP credentials, users, audit log (the control API's state) */
    readonly controlPlane: ControlPlane,
    private readonly resolver: DestinationResolver,
    readonly queueAdmin: QueueAdmin,
    /** null when delivery.mta_sts.enabled is false */
    readonly mtaSts: MtaStsPolicies | null,
    readonly bounces: BounceParts,
  ) {}

  shaping!: Shaping;
  webhooks!: WebhookDelivery;
  stats?: SendingStats;
  idempotency?: IdempotencyKeys;

  /** Re-reads the shaping file and applies it; on an invalid file the rules in force stay. */
  reloadShaping(): { ok: true; file: string } | { ok: false; problems: string[] } {
    try {
      this.shaping = Shaping.load(this.config.shapingFile);
    } catch (err) {
      const problems = (err as { problems?: string[] }).problems ?? [(err as Error).message];
      this.log.error({ problems }, 'shaping reload refused; the rules in force stay');
      return { ok: false, problems };
    }
    this.scheduler.setShaping(this.shaping);
    this.log.info({ file: this.config.shapingFile }, 'shaping rules reloaded');
    return { ok: true, file: this.config.shapingFile };
  }

  /** What applies to mail for `domain` from `source`, and why. */
  async explainShaping(domain: string, source?: string) {
    return explainShaping(this.shaping, this.resolver, this.config, domain, source, this.mtaSts, this.controlPlane.pools.sourcesByPool());
  }

  static async start(config: Config, opts: NodeOptions = {}): Promise<TernNode> {
    const log = opts.logger ?? createLogger(config.log);
    const metrics = new Metrics();
    fs.mkdirSync(config.dataDir, { recursive: true });
    const store = new Store(config.dataDir);
    const dns = new DnsClient(config.dns.servers, config.dns.timeoutMs);
    const controlPlane = new ControlPlane({ config, store, log, resolve: resolverFor(dns) });
    const spool = new Spool(store, config.retry);
    const resolver = new DestinationResolver(dns, config.routes, config.delivery.mxDownMs, config.delivery.smtpPort);
    const shaping = Shaping.load(config.shapingFile);
    const warmup = startWarmup(config, store, opts.clock);
    warmup.registerMetrics(metrics.registry);
    const cas = outboundCas(config.delivery.tlsCaFile);
    const mtaSts = mtaStsPolicies(config, dns, resolver, cas, store, log);
    const tlsContext = cas ? createSecureContext({ ca: cas }) : undefined;
    const bounces: BounceParts = {
      rules: loadBounceRules(config.bounce.rulesFile),
      // every node that sends for a bounce domain must share this key (a bounce may come back to another node)
      verp: new VerpCodec(loadOrCreateVerpKeys(config.dataDir)),
      suppressions: new SuppressionList(store, { softLimit: config.bounce.softBounceLimit, softWindowMs: config.bounce.softBounceWindowMs }),
    };
    const holds = new Holds(store);
    spool.onFinalFailure = (tx, f) => actOnFailure(bounces.suppressions, tx, f);
    const scheduler = new Scheduler({ config, spool, resolver, log, metrics, shaping, warmup, holds, bounces: { rules: bounces.rules, verp: config.bounce.verp ? bounces.verp : null }, mtaSts: mtaSts ?? undefined, tlsContext, tenants: controlPlane.tenants });
    // pools made through the control API: applied now and whenever one changes
    controlPlane.pools.planNames = () => warmup.planNames();
    controlPlane.pools.onChange = () => applyPools(controlPlane.pools, scheduler, warmup, log);
    applyPools(controlPlane.pools, scheduler, warmup, log);
    const queueAdmin = new QueueAdmin({ config, spool, scheduler, holds, store, log, tenants: controlPlane.tenants, pools: controlPlane.pools });
    warmup.onRoll((changes) => log.info({ changes }, 'warmup: a new day'));
    const tracking = config.tracking.baseUrl ? startTracking(config, store, bounces.suppressions, log, metrics.registry) : null;
    const preparer = createPreparer(readKeyMaterial(config.dkim.keys), opts.inlinePrepare ? -1 : config.dkim.workers, tracking?.keys);
    // the keys of tenants' verified sending domains, now and whenever a domain's status changes
    preparer.setTenantKeys(controlPlane.domains.signingKeys());
    controlPlane.domains.onSigningKeys = (keys) => preparer.setTenantKeys(keys);
    const tls = await tlsMaterial(config.dataDir, config.hostname, config.submission.tls);
    if (!config.smtpUsers.length) config.smtpUsers.push(bootstrapUser(config.dataDir, log));
    if (!config.adminToken) {
      // no operator token configured: make the first-login secret, keep it in data_dir and print it
      config.adminToken = bootstrapOperatorToken(config.dataDir);
      log.warn({ file: operatorTokenFile(config.dataDir) }, 'no control.admin_token or TERN_ADMIN_TOKEN: using the bootstrap operator token');
      process.stderr.write(`Tern: operator token for the control API (no control.admin_token in config): ${config.adminToken}\n      (kept in ${operatorTokenFile(config.dataDir)}; send it as "Authorization: Bearer <token>")\n\n`);
    }
    // one acceptance pipeline for SMTP submission, HTTP sending and the node's account mail
    // tracking settings of tenants made through the API (the file's own are read from config.tenants)
    const tenantTracking = (id: string) => {
      const t = controlPlane.tenants.get(id);
      return t && t.managed_by === 'api' ? { tracking: t.tracking, bounce_domain: t.bounce_domain } : undefined;
    };
    const acceptance = new Acceptance({ config, spool, scheduler, preparer, log, metrics, suppressions: bounces.suppressions, sending: controlPlane.tenants, senderDomains: controlPlane.domains, tenantTracking });
    const submission = new SubmissionListener({ config, spool, scheduler, preparer, tls, log, metrics, suppressions: bounces.suppressions, credentials: controlPlane.smtpCredentials, sending: controlPlane.tenants, senderDomains: controlPlane.domains, acceptance });
    const webhooks = new WebhookDelivery({ store, settings: config.webhooks, resolveHost: (host) => resolver.hostAddresses(host), log, node: config.hostname, ca: cas }, metrics.registry);
    // the inbound listener has its own certificate when listeners.inbound.tls names one, else the submission's
    const inboundTls = config.inbound.tls ? await tlsMaterial(config.dataDir, config.hostname, config.inbound.tls) : tls;
    const inbound = new InboundListener({ config, store, spool, rules: bounces.rules, verp: bounces.verp, suppressions: bounces.suppressions, tls: inboundTls, log, metrics, isBounceDomain: (d) => controlPlane.domains.isBounceDomain(d) || controlPlane.tenants.isBounceDomain(d), unsubscribe: tracking ? { tokens: tracking.tokens, events: tracking.events } : null });
    let nodeRef: TernNode | null = null;
    const idempotency = new IdempotencyKeys(store);
    const stats = new SendingStats(store, log);
    const mailer = new SystemMailer({ acceptance, log, from: controlPlane.settings.mailFrom });
    const control = await buildControlServer({
      metrics,
      adminToken: config.adminToken,
      explainShaping: (domain, source) => explainShaping(nodeRef!.shaping, resolver, config, domain, source, mtaSts, controlPlane.pools.sourcesByPool()),
      reload: () => nodeRef!.reloadShaping(),
      backoff: { list: () => scheduler.backoffActions(), clear: (id) => scheduler.clearBackoff(id) },
      warmup: (source) => warmup.status(source),
      queues: queueAdmin,
      api: { plane: controlPlane, suppressions: bounces.suppressions, queues: queueAdmin, store, mailer, adminToken: config.adminToken, http: { acceptance, idempotency, stats, hostname: config.hostname } },
      events: { webhooks, streams: new EventStreams({ store, node: config.hostname }) },
      health: () => {
        const snap = scheduler.snapshot();
        const mem = process.memoryUsage();
        const mb = (n: number) => Math.round(n / 1024 ** 2);
        return {
          ok: true,
          queued_recipients: snap.queuedRecipients,
          recipients_in_memory: snap.inMemory,
          memory_mb: { rss: mb(mem.rss), heap_used: mb(mem.heapUsed), heap_total: mb(mem.heapTotal), external: mb(mem.external), array_buffers: mb(mem.arrayBuffers) },
        };
      },
    });
    control.addHook('onRequest', async (req) => {
      if (req.url !== '/metrics') return;
      metrics.readyQueueDepth.reset();
      for (const rq of scheduler.snapshot().ready) metrics.readyQueueDepth.inc({ site: rq.site }, rq.recipients);
    });

    store.on('events', (events) => {
      // opens and clicks come thousands a second: they are in the outbox, and in the log at debug only
      const hits = log.isLevelEnabled('debug');
      for (const e of events) {
        if (TRACKING_HITS.has(e.type) && !hits) continue;
        const { type, ...fields } = e;
        if (TRACKING_HITS.has(type)) log.debug({ event: type, ...fields }, type);
        else log.info({ event: type, ...fields }, type);
      }
    });

    const node = new TernNode(config, log, metrics, store, spool, scheduler, warmup, preparer, submission, inbound, control, controlPlane, resolver, queueAdmin, mtaSts, bounces);
    node.shaping = shaping;
    node.webhooks = webhooks;
    node.stats = stats;
    node.idempotency = idempotency;
    node.tracking = tracking;
    nodeRef = node;
    // webhooks may name a tenant made through the API (the config check cannot know them): say so when none exists
    config.webhooks.endpoints.forEach((e, i) => {
      if (e.tenant === '*' || config.tenants[e.tenant] || controlPlane.tenants.get(e.tenant)) return;
      const why = controlPlane.tenants.taken(e.tenant) ? 'was deleted' : 'does not exist (neither under tenants nor made through the control API)';
      log.warn({ endpoint: e.id, tenant: e.tenant }, `webhooks[${i}].tenant: tenant "${e.tenant}" ${why}; the endpoint gets only events of a tenant of that id`);
    });
    try {
      controlPlane.webhooks.delivery = webhooks;
      await webhooks.start(controlPlane.webhooks.enabledEndpoints());
      stats.start();
      scheduler.start();
      await queueAdmin.start();
      controlPlane.start();
      node.ports.submission = await submission.listen();
      node.ports.inbound = await inbound.listen();
      await control.listen({ host: config.control.host, port: config.control.port });
      node.ports.control = (control.server.address() as { port: number }).port;
      if (tracking) {
        node.ports.tracking = await tracking.server.listen();
        log.info({ tracking: `${config.tracking.listener.host}:${node.ports.tracking}`, base_url: config.tracking.baseUrl }, 'tracking listener started');
      }
    } catch (err) {
      await node.stop();
      throw err;
    }
    node.cronTasks.push(
      cron.schedule('*/10 * * * *', async () => {
        scheduler.maintain();
        mtaSts?.sweep();
        const before = Date.now() - config.events.retentionMs;
        const events = await store.pruneEvents(before);
        const messages = await spool.pruneFinished(before);
        await tracking?.events.prune(Date.now() - config.tracking.retentionMs);
        await idempotency.prune();
        if (events || messages) log.info({ events, messages }, 'retention: pruned old records');
      }),
      // the warmup day also rolls when mail is bound to a source; this covers quiet nodes
      cron.schedule('* * * * *', () => void warmup.roll()),
      // sending domains whose last DNS check is older than domains.recheck
      cron.schedule('*/10 * * * *', async () => {
        const n = await controlPlane.domains.recheckDue().catch((err) => log.warn({ err }, 'domains: recheck failed'));
        if (n) log.info({ domains: n }, 'domains: DNS rechecked');
      }),
    );
    log.info({ submission: `${config.submission.host}:${node.ports.submission}`, inbound: `${config.inbound.host}:${node.ports.inbound}`, control: `${config.control.host}:${node.ports.control}`, data_dir: config.dataDir }, 'tern node started');
    return node;
  }

  async stop(): Promise<void> {
    for (const t of this.cronTasks) t.stop();
    await this.submission.close().catch(() => {});
    await this.inbound.close().catch(() => {});
    await this.control.close().catch(() => {});
    await this.webhooks.stop();
    await this.stats?.stop();
    await this.tracking?.close().catch(() => {});
    this.queueAdmin.stop();
    this.controlPlane.stop();
    await this.scheduler.stop();
    await this.preparer.close();
    await this.store.close();
    this.log.info('tern node stopped');
    this.log.flush?.();
  }
}

/** A final failure feeds the tenant's suppression list: at once when its rule says so, else by counting. */
export function actOnFailure(suppressions: SuppressionList, tx: Tx, f: FinalFailure): void {
  if (f.action === 'suppress') suppressions.addIn(tx, f.tenant, f.rcpt, { reason: f.hard ? 'hard_bounce' : 'bounce', detail: f.category, queue_id: f.queue_id });
  else if (f.action === 'count') suppressions.softBounceIn(tx, f.tenant, f.rcpt, f.category, f.queue_id);
}

/** Gives the scheduler and the warmup calendar every pool's sources (the config's and the API's). */
function applyPools(pools: EgressPools, scheduler: Scheduler, warmup: Warmup, log: Logger): void {
  scheduler.setPools(pools.sourcesByPool());
  const plans = new Set(warmup.planNames());
  const sources: WarmupSource[] = [];
  for (const p of pools.list())
    for (const s of p.sources) {
      if (!s.warmup) continue;
      // the config's were checked at start; an API source whose plan left the warmup file sends uncapped
      if (plans.has(s.warmup.plan)) sources.push({ name: s.name, pool: p.name, plan: s.warmup.plan, start: s.warmup.start });
      else log.warn({ pool: p.name, source: s.name, plan: s.warmup.plan }, 'warmup: the plan of this source is not defined any more; it sends uncapped');
    }
  warmup.setSources(sources);
}

/** Reads the warmup plans and the sources that follow one; a plan that does not exist is named by key path. */
function startWarmup(config: Config, store: Store, clock?: () => number): Warmup {
  const plans = loadWarmupPlans(config.warmup.file, config.warmup.plans);
  const sources: WarmupSource[] = [];
  const problems: string[] = [];
  for (const [pool, p] of Object.entries(config.pools))
    p.sources.forEach((s, i) => {
      if (!s.warmup) return;
      if (!plans.has(s.warmup.plan)) problems.push(`pools.${pool}.sources[${i}].warmup.plan: no plan is named "${s.warmup.plan}"; the plans are ${[...plans.keys()].join(', ')} (from ${config.warmup.file} and warmup.plans)`);
      else sources.push({ name: s.name, pool, plan: s.warmup.plan, start: s.warmup.start });
    });
  if (problems.length) throw new ConfigError(problems);
  return new Warmup(store, plans, sources, config.warmup.idleResetDays, clock);
}

/**
 * With no smtp_users configured, a fresh node would accept mail from nobody. Make one credential for the
 * default tenant, keep it (0600) in data_dir, and print it, like a first-login secret.
 */
function bootstrapUser(dataDir: string, log: Logger): { username: string; password: string; tenant: string } {
  const file = path.join(dataDir, 'bootstrap-smtp-credentials.json');
  let cred: { username: string; password: string; tenant: string };
  if (fs.existsSync(file)) cred = JSON.parse(fs.readFileSync(file, 'utf8'));
  else {
    cred = { username: 'tern', password: crypto.randomBytes(18).toString('base64url'), tenant: 'default' };
    fs.writeFileSync(file, JSON.stringify(cred), { mode: 0o600 });
  }
  log.warn({ username: cred.username, file }, 'no smtp_users configured: using the bootstrap SMTP credential');
  process.stderr.write(`\nTern: SMTP submission login (no smtp_users in config): user "${cred.username}" password "${cred.password}"\n      (kept in ${file})\n\n`);
  return cred;
}

/** The MTA-STS policies of a node or of the CLI (no store: memory only), or null when MTA-STS is off. */
export function mtaStsPolicies(config: Config, dns: DnsClient, resolver: DestinationResolver, ca: string[] | undefined, store?: Store, log?: Logger): MtaStsPolicies | null {
  if (!config.delivery.mtaSts.enabled) return null;
  return new MtaStsPolicies({
    dns,
    hostAddresses: (host) => resolver.hostAddresses(host),
    store,
    log,
    httpsPort: config.delivery.mtaSts.httpsPort,
    fetchTimeoutMs: config.delivery.mtaSts.fetchTimeoutMs,
    ca,
  });
}

/**
 * Resolves the domain (route or MX set) and merges the shaping layers for it, naming each value's origin;
 * with `mtaSts`, also the domain's MTA-STS policy (`mta_sts`, null when MTA-STS is off or a route applies).
 */
export async function explainShaping(shaping: Shaping, resolver: DestinationResolver, config: Config, domain: string, source?: string, mtaSts?: MtaStsPolicies | null, pools?: Record<string, Array<{ name: string }>>) {
  const d = domain.toLowerCase();
  // the file's pools, and (on a running node) those made through the control API
  const allPools = pools ?? Object.fromEntries(Object.entries(config.pools).map(([n, p]) => [n, p.sources]));
  const sourceName = source ?? Object.values(allPools)[0]!.at(0)!.name;
  const known = Object.values(allPools).some((list) => list.some((s) => s.name === sourceName));
  if (!known) throw new Error(`no egress source is named "${sourceName}"`);
  const dest = await resolver.resolve(d);
  const mxHosts = dest.ok ? dest.site.hosts.map((h) => h.name) : [];
  const e = shaping.explain({ domain: shaping.hasDomainBlock(d) ? d : '', mxHosts, source: sourceName });
  const settings = describeSettings(e.settings);
  return {
    domain: d,
    source: sourceName,
    site: dest.ok ? dest.site.key : null,
    route: dest.ok && dest.site.route ? `${dest.site.route.host}:${dest.site.route.port}` : null,
    destination_error: dest.ok ? null : dest.response,
    provider: e.provider,
    shaping_file: shaping.file,
    settings: Object.fromEntries(Object.entries(settings).map(([k, v]) => [k, { value: v, from: e.origins[k as keyof typeof e.origins] }])),
    mta_sts: mtaSts && dest.ok && !dest.site.route ? await mtaSts.describe(d) : null,
  };
}
