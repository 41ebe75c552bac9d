/**
 * The three tiers, named as in DESIGN.md:
 *   scheduled queue (per tenant:campaign@domain) → ready queue (per egress source → site) → connection.
 *
 * The scheduler holds at most `memoryQueueLimit` jobs in memory; everything else waits in the spool's
 * time-ordered schedule index and is read in due order through a cursor, so memory stays flat however
 * many recipients are queued and each step is an O(log n) B-tree operation.
 */
import type tls from 'node:tls';
import type { Logger } from '../core/log.js';
import type { Metrics } from '../core/metrics.js';
import type { Config } from '../core/config.js';
import { DestinationResolver, matchRoute, type Destination, type Site } from './destination.js';
import { OutboundConnection, DeliveryError, type TlsPolicy } from './smtp-client.js';
import { jobKeyString, queueName, type Job, type Outcome, type ScheduleKey, type Spool } from './spool.js';
import { Gcra } from './rate.js';
import { Backoff, type BackoffAction } from './backoff.js';
import type { Shaping, ShapingSettings } from './shaping.js';
import type { Warmup } from './warmup.js';
import type { MtaStsPolicies } from './mta-sts.js';
import type { Holds } from './holds.js';
import { classifyResponse, type BounceRules } from '../bounce/classify.js';
import type { VerpCodec } from '../bounce/verp.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Order of schedule keys: due time, then message id, domain and first recipient. */
const compareKeys = (a: ScheduleKey, b: ScheduleKey) => a[0] - b[0] || (a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0) || (a[2] < b[2] ? -1 : a[2] > b[2] ? 1 : 0) || a[3] - b[3];
/** schedule entries one scan reads before yielding (entries held by an operator are read and passed over) */
const SCAN_STEP = 5000;

export interface EgressSource {
  name: string;
  address: string;
  ehlo: string;
  pool: string;
}

/** Jobs bound for one site from one source, and the connections that drain them. */
export class ReadyQueue {
  private jobs: Job[] = [];
  private head = 0;
  /** queued jobs by message, so that recipients of one message for one site share a transaction */
  private readonly byMessage = new Map<string, Job[]>();
  private readonly taken = new WeakSet<Job>();
  private waiters: Array<() => void> = [];
  /** jobs queued and not taken (entries of `jobs` past `head` may have been taken out of order) */
  private queuedJobs = 0;
  connections = 0;
  /** connections not yet able to take a job (connecting) */
  connecting = 0;
  idle = 0;
  recipients = 0;
  delivered = 0;

  /** the settings in force, recomputed when the shaping rules are reloaded */
  settings!: ShapingSettings;
  settingsVersion = -1;

  constructor(
    readonly key: string,
    readonly source: EgressSource,
    readonly site: Site,
    /** the domain whose `domains` block shapes this queue, or null when the site's limits apply */
    readonly shapedDomain: string | null,
    /** the domain whose MTA-STS policy is checked when connecting (a queue of its own), or null */
    readonly mtaStsDomain: string | null = null,
  ) {}

  get length(): number {
    return this.queuedJobs;
  }

  push(job: Job): void {
    this.jobs.push(job);
    this.queuedJobs++;
    this.recipients += job.rcpts.length;
    const same = this.byMessage.get(job.msgId);
    if (same) same.push(job);
    else this.byMessage.set(job.msgId, [job]);
    const w = this.waiters.shift();
    if (w) w();
  }

  /** Next transaction: one job plus queued jobs of the same message, up to `maxRecipients`. */
  take(maxRecipients: number): Job[] | null {
    while (this.head < this.jobs.length) {
      const job = this.jobs[this.head]!;
      this.jobs[this.head++] = undefined as unknown as Job;
      if (this.head > 1024 && this.head * 2 > this.jobs.length) {
        this.jobs = this.jobs.slice(this.head);
        this.head = 0;
      }
      if (this.taken.has(job)) continue;
      const batch = [job];
      this.taken.add(job);
      let count = job.rcpts.length;
      const siblings = this.byMessage.get(job.msgId)!;
      for (const s of siblings) {
        if (this.taken.has(s) || count + s.rcpts.length > maxRecipients) continue;
        batch.push(s);
        this.taken.add(s);
        count += s.rcpts.length;
      }
      const left = siblings.filter((s) => !this.taken.has(s));
      if (left.length) this.byMessage.set(job.msgId, left);
      else this.byMessage.delete(job.msgId);
      this.recipients -= count;
      this.queuedJobs -= batch.length;
      return batch;
    }
    return null;
  }

  /** Removes and returns every queued job (used when the site cannot be reached at all). */
  drain(): Job[] {
    const out: Job[] = [];
    for (let batch = this.take(Infinity); batch; batch = this.take(Infinity)) out.push(...batch);
    return out;
  }

  /** Takes out the queued jobs `pick` selects (an operator's hold or action pulls them back). */
  remove(pick: (job: Job) => boolean): Job[] {
    const out: Job[] = [];
    for (let k = this.head; k < this.jobs.length; k++) {
      const job = this.jobs[k]!;
      if (this.taken.has(job) || !pick(job)) continue;
      this.taken.add(job);
      out.push(job);
      this.recipients -= job.rcpts.length;
      this.queuedJobs--;
      const left = this.byMessage.get(job.msgId)!.filter((s) => s !== job);
      if (left.length) this.byMessage.set(job.msgId, left);
      else this.byMessage.delete(job.msgId);
    }
    return out;
  }

  /** The queued jobs, oldest first. */
  *queued(): Generator<Job> {
    for (let k = this.head; k < this.jobs.length; k++) if (!this.taken.has(this.jobs[k]!)) yield this.jobs[k]!;
  }

  wakeAll(): void {
    this.waiters.splice(0).forEach((w) => w());
  }

  /** Resolves true when a job arrives, false after `ms`. */
  waitForJob(ms: number): Promise<boolean> {
    if (this.length) return Promise.resolve(true);
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        resolve(true);
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== wake);
        resolve(false);
      }, ms);
      this.waiters.push(wake);
    });
  }
}

interface SchedulerDeps {
  config: Config;
  shaping: Shaping;
  spool: Spool;
  resolver: DestinationResolver;
  log: Logger;
  metrics: Metrics;
  /** daily caps of sources on a warmup plan */
  warmup?: Warmup;
  holds: Holds;
  /** the bounce classifier's rules; and the VERP codec, absent when bounce.verp is false */
  bounces?: { rules: BounceRules; verp: VerpCodec | null };
  /** MTA-STS policies (absent when delivery.mta_sts.enabled is false) */
  mtaSts?: MtaStsPolicies;
  /** trust for outbound certificate checks when the operator added CAs (delivery.tls_ca_file) */
  tlsContext?: tls.SecureContext;
  /** tenants made through the control API as well as the config's (config.tenants when absent) */
  tenants?: { routing(id: string): { pool: string; bounce_domain: string | null } | undefined };
}

/** Recipients a message would hand to one provider (null: none of the shaping file's providers). */
interface Need {
  provider: string | null;
  n: number;
}

export class Scheduler {
  /** jobs held in memory (resolving, ready or in flight), and how many recipients they carry */
  private readonly inMemory = new Set<string>();
  private memRecipients = 0;
  /** recipients in memory per domain, and the first entry passed over because its domain had no room */
  private readonly memByDomain = new Map<string, number>();
  private readonly skipped = new Map<string, ScheduleKey>();
  private readonly readyQueues = new Map<string, ReadyQueue>();
  /** jobs waiting for their domain to resolve, by scheduled queue name */
  private readonly scheduled = new Map<string, number>();
  private readonly sourcesByPool = new Map<string, EgressSource[]>();
  private readonly rotation = new Map<string, number>();
  private cursor: ScheduleKey | [number] | null = null;
  private backlog = true; // true until the first scan has read what the spool already holds
  private timer: NodeJS.Timeout | null = null;
  private scanQueued = false;
  private stopping = false;
  private readonly connections = new Set<OutboundConnection>();
  private readonly inflight = new Set<Promise<unknown>>();
  private queuedRecipients = 0;
  private shaping: Shaping;
  private shapingVersion = 0;
  private readonly messageRate = new Gcra();
  private readonly connectionRate = new Gcra();
  readonly backoff: Backoff;
  private readonly wakeups = new Set<NodeJS.Timeout>();
  /** warmup room held by jobs bound to a capped source and not yet sent */
  private readonly reservations = new Map<Job, { source: string; provider: string | null; n: number }>();
  /** due times given to mail that waits for the next warmup day */
  private readonly postponedTo = new Set<number>();
  private readonly providers = new Map<string, string | null>();
  /** jobs an operator failed while they were on the wire or resolving: key → the failure's response */
  private readonly failAfter = new Map<string, string>();

  constructor(private readonly deps: SchedulerDeps) {
    this.shaping = deps.shaping;
    this.backoff = new Backoff(deps.shaping.rules);
    for (const [pool, p] of Object.entries(deps.config.pools)) this.sourcesByPool.set(pool, p.sources.map((s) => ({ name: s.name, address: s.address, ehlo: s.ehlo, pool })));
    deps.warmup?.onRoll(() => this.releasePostponed());
  }

  /**
   * The pools' sources changed (pools made or changed through the control API). A source that stays keeps
   * its object, so its ready queues open new connections with the new address and EHLO; mail waiting on a
   * source that is gone moves to another source of its pool, or back to the spool when there is none.
   */
  setPools(pools: Record<string, Array<{ name: string; address: string; ehlo: string }>>): void {
    const known = new Map<string, EgressSource>();
    for (const list of this.sourcesByPool.values()) for (const s of list) known.set(s.name, s);
    this.sourcesByPool.clear();
    for (const [pool, sources] of Object.entries(pools))
      this.sourcesByPool.set(pool, sources.map((s) => Object.assign(known.get(s.name) ?? ({} as EgressSource), { name: s.name, address: s.address, ehlo: s.ehlo, pool })));
    const live = new Set([...this.sourcesByPool.values()].flatMap((l) => l.map((s) => s.name)));
    for (const q of this.readyQueues.values()) {
      if (live.has(q.source.name)) continue;
      for (const job of q.remove(() => true)) {
        const dest = { ok: true as const, site: q.site };
        this.unreserve(job);
        const other = this.pickSource(job.tenant, [dest], q.source.name, this.needsOf([job], [dest]));
        if (other) this.route(job, dest, other);
        else this.release(job); // it waits in the spool
      }
    }
  }

  start(): void {
    this.queuedRecipients = this.deps.spool.queues.recipients;
    this.deps.metrics.queueDepth.set({ tier: 'spool' }, this.queuedRecipients);
    this.scan();
  }

  /** Newly accepted jobs: admitted straight away while there is room and nothing older waits. */
  enqueue(jobs: Job[]): void {
    for (const job of jobs) this.queuedRecipients += job.rcpts.length;
    if (!this.backlog && this.memRecipients < this.deps.config.delivery.memoryQueueLimit && jobs.every((j) => this.domainHasRoom(j))) this.admit(jobs);
    else for (const job of jobs) this.rewind(job.key);
    this.deps.metrics.queueDepth.set({ tier: 'spool' }, this.queuedRecipients);
  }

  /** Makes the scanner look at `key` again (it was written behind the cursor). */
  private rewind(key: ScheduleKey): void {
    // an entry due later is ahead of the cursor (which never passes now): the scanner meets it in time
    if (key[0] > Date.now()) return;
    this.backlog = true;
    if (this.cursor && this.cursor[0] > key[0] - 1) this.cursor = [key[0] - 1];
    this.requestScan();
  }

  private requestScan(): void {
    if (this.scanQueued || this.stopping) return;
    this.scanQueued = true;
    setImmediate(() => {
      this.scanQueued = false;
      this.scan();
    });
  }

  /** Reads due jobs from the spool in due order, as many as there is room for. */
  private scan(): void {
    if (this.stopping) return;
    if (this.timer) clearTimeout(this.timer);
    const limit = this.deps.config.delivery.memoryQueueLimit;
    const now = Date.now();
    let full = false;
    // jobs of one message are adjacent in the index (same due time and id): admit them together
    let group: Job[] = [];
    let examined = 0;
    let more = false;
    let lastMsgId = '';
    for (const job of this.deps.spool.due(this.cursor as ScheduleKey | null, now)) {
      if (group.length && group[0]!.msgId !== job.msgId) {
        this.admit(group);
        group = [];
      }
      if (++examined > SCAN_STEP && job.msgId !== lastMsgId) {
        more = true; // keep the event loop responsive when many entries are passed over
        break;
      }
      lastMsgId = job.msgId;
      if (this.memRecipients + group.reduce((n, j) => n + j.rcpts.length, 0) >= limit) {
        full = true;
        break;
      }
      this.cursor = job.key;
      if (this.deps.holds.blocking(job)) continue; // stays in the spool; holdsEnded() reads it again
      // committed but not yet durable: its accept() has not returned, and enqueue() will bring it in. Taken
      // now, it could be delivered and finished before enqueue() runs, which would then take it again.
      if (this.deps.spool.isAccepting(job.msgId)) continue;
      if (!this.domainHasRoom(job)) {
        // its domain holds its share of memory already (a slow or dead destination must not starve the
        // others): it stays in the spool, and the scanner comes back for it when the domain has room again
        const first = this.skipped.get(job.domain);
        if (!first || compareKeys(job.key, first) < 0) this.skipped.set(job.domain, job.key);
        continue;
      }
      if (!this.inMemory.has(jobKeyString(job.key))) group.push(job);
    }
    if (group.length) this.admit(group);
    this.backlog = full || more;
    // the first entry not yet due: everything due before it has been read (or is held in memory)
    const next = this.deps.spool.nextDue(now);
    const wait = more ? 0 : full ? 250 : next === null ? 1000 : Math.max(10, Math.min(1000, next - Date.now()));
    this.timer = setTimeout(() => this.scan(), wait);
    this.timer.unref();
  }

  /**
   * Takes jobs (all of one message) into memory. They are routed together once every domain is resolved,
   * so that recipients on domains sharing a site land in the ready queue side by side and share a transaction.
   */
  private admit(candidates: Job[]): void {
    // enqueue() of a message the scanner has already taken
    const jobs = candidates.filter((job) => !this.inMemory.has(jobKeyString(job.key)));
    if (!jobs.length) return;
    for (const job of jobs) this.hold(job);
    const cached = jobs.map((job) => this.peekDestination(job.domain));
    if (cached.every((d) => d)) {
      this.bind(jobs, cached as Destination[]);
      return;
    }
    const names = jobs.map((job) => queueName(job.tenant, job.campaign, job.domain));
    for (const q of names) this.scheduled.set(q, (this.scheduled.get(q) ?? 0) + 1);
    this.track(
      Promise.all(jobs.map((job) => this.resolveDestination(job.domain))).then((dests) => {
        for (const q of names) {
          const left = (this.scheduled.get(q) ?? 1) - 1;
          if (left) this.scheduled.set(q, left);
          else this.scheduled.delete(q);
        }
        this.bind(jobs, dests);
      }),
    );
  }

  /**
   * Binds a message's jobs to one source of the tenant's pool, so its recipients on one site share a
   * transaction. When warmup caps leave no source able to take the whole message, each domain's job finds
   * its own; a job no source can take today waits for the next warmup day.
   */
  private bind(jobs: Job[], dests: Destination[]): void {
    const source = this.pickSource(jobs[0]!.tenant, dests, undefined, this.needsOf(jobs, dests));
    if (source) {
      jobs.forEach((job, i) => this.route(job, dests[i]!, source));
      return;
    }
    jobs.forEach((job, i) => {
      const own = this.pickSource(job.tenant, [dests[i]!], undefined, this.needsOf([job], [dests[i]!]));
      if (own) this.route(job, dests[i]!, own);
      else this.postpone(job);
    });
  }

  /** What binding these jobs would take from a source's warmup room (nothing when no source warms up). */
  private needsOf(jobs: Job[], dests: Array<{ ok: boolean; site?: Site }>): Need[] {
    if (!this.deps.warmup?.active) return [];
    const needs: Need[] = [];
    jobs.forEach((job, i) => {
      const site = dests[i]?.ok ? dests[i]!.site : undefined;
      if (site) needs.push({ provider: this.providerOf(site), n: job.rcpts.length });
    });
    return needs;
  }

  /** The shaping file's provider for a site (warmup plans may cap providers separately). */
  private providerOf(site: Site): string | null {
    let p = this.providers.get(site.key);
    if (p === undefined) {
      p = this.shaping.providerFor(site.hosts.map((h) => h.name))?.name ?? null;
      this.providers.set(site.key, p);
    }
    return p;
  }

  /** Schedules a job for the start of the next warmup day, without counting an attempt. */
  private postpone(job: Job): void {
    const at = this.deps.warmup!.nextDayAt();
    this.postponedTo.add(at);
    this.deps.metrics.warmupPostponed.inc(job.rcpts.length);
    this.track(this.deps.spool.reschedule([job], at, { type: 'postponed', by: 'warmup' }).then(() => this.release(job)));
  }

  /** A new warmup day: mail that waited for it is due now (it would be anyway, unless the calendar was moved). */
  private releasePostponed(): void {
    const now = Date.now();
    for (const at of this.postponedTo) {
      if (at <= now) continue;
      const jobs = [...this.deps.spool.dueBetween(at, at)];
      this.track(this.deps.spool.reschedule(jobs, now, { type: 'postponed', by: 'warmup' }).then((moved) => moved.forEach((job) => this.rewind(job.key))));
    }
    this.postponedTo.clear();
  }

  /** A cached destination, once the domain's MTA-STS policy (which picks its ready queue) is known too. */
  private peekDestination(domain: string): Destination | undefined {
    const dest = this.deps.resolver.peek(domain);
    if (!dest?.ok || dest.site.route || !this.deps.mtaSts) return dest;
    return this.deps.mtaSts.peek(domain) ? dest : undefined;
  }

  /** Resolves the destination and, alongside, looks up the domain's MTA-STS policy (not for routes). */
  private async resolveDestination(domain: string): Promise<Destination> {
    const policy = this.deps.mtaSts && !matchRoute(this.deps.config.routes, domain) ? this.deps.mtaSts.get(domain) : null;
    const dest = await this.deps.resolver.resolve(domain);
    await policy;
    return dest;
  }

  private route(job: Job, dest: Destination, source: EgressSource): void {
    const doomed = this.failAfter.get(jobKeyString(job.key));
    if (doomed !== undefined) {
      this.failAfter.delete(jobKeyString(job.key));
      this.failNow(job, doomed);
      return;
    }
    // operator holds: held mail goes back to the spool; a held source leaves its mail to another source
    const holds = this.deps.holds;
    if (holds.blocking(job)) return this.release(job);
    if (holds.namesSources && holds.blocking(job, source.name)) {
      const other = this.pickSource(job.tenant, [dest], undefined, this.needsOf([job], [dest]), (s) => holds.blocking(job, s) !== undefined);
      if (!other || holds.blocking(job, other.name)) return this.release(job); // every source is held: it waits in the spool
      source = other;
    }
    if (!dest.ok) {
      const result = dest.permanent ? 'failed' : 'deferred';
      this.finish(job, job.rcpts.map((r) => ({ i: r.i, result, response: dest.response })), 'dns');
      return;
    }
    const shapedDomain = this.shaping.hasDomainBlock(job.domain) ? job.domain : null;
    // a domain held to an MTA-STS policy connects under its own rules, so it gets a ready queue of its own
    // (the site's other domains must not wait on, or be refused by, its policy); routes skip MTA-STS
    const stsDomain = !dest.site.route && this.deps.mtaSts?.active(job.domain) ? job.domain : null;
    const ownQueue = shapedDomain ?? stsDomain;
    const key = `${source.name}->${dest.site.key}${ownQueue ? `#${ownQueue}` : ''}`;
    let rq = this.readyQueues.get(key);
    if (!rq) {
      rq = new ReadyQueue(key, source, dest.site, shapedDomain, dest.site.route ? null : ownQueue);
      this.readyQueues.set(key, rq);
    }
    const warmup = this.deps.warmup;
    if (warmup?.has(source.name)) {
      const reservation = { source: source.name, provider: this.providerOf(dest.site), n: job.rcpts.length };
      warmup.reserve(reservation.source, reservation.provider, reservation.n);
      this.reservations.set(job, reservation);
    }
    rq.push(job);
    this.pump(rq);
  }

  /** The job's mail goes out now: its reserved warmup room becomes today's count. */
  private countSent(job: Job): void {
    const r = this.reservations.get(job);
    if (!r) return;
    this.reservations.delete(job);
    this.deps.warmup!.record(r.source, r.provider, r.n);
  }

  /** The job was not sent from the source it was bound to: give the room back. */
  private unreserve(job: Job): void {
    const r = this.reservations.get(job);
    if (!r) return;
    this.reservations.delete(job);
    this.deps.warmup!.unreserve(r.source, r.provider, r.n);
  }

  /** Periodic housekeeping: forgets ready queues with nothing queued or open, and idle rate state. */
  maintain(): void {
    for (const [key, rq] of this.readyQueues) if (rq.length === 0 && rq.connections === 0) this.readyQueues.delete(key);
    this.messageRate.sweep();
    this.connectionRate.sweep();
  }

  /** New shaping rules: ready queues take them up at their next connection or transaction. */
  setShaping(shaping: Shaping): void {
    this.shaping = shaping;
    this.backoff.setRules(shaping.rules);
    this.shapingVersion++;
    this.providers.clear();
    for (const rq of this.readyQueues.values()) this.pump(rq);
  }

  private settingsOf(rq: ReadyQueue): ShapingSettings {
    if (rq.settingsVersion !== this.shapingVersion) {
      rq.settings = this.shaping.explain({ domain: rq.shapedDomain ?? '', mxHosts: rq.site.hosts.map((h) => h.name), source: rq.source.name }).settings;
      rq.settingsVersion = this.shapingVersion;
    }
    return rq.settings;
  }

  /**
   * The next source of the tenant's pool that has warmup room for `needs`, passing over sources suspended
   * towards the message's site (and those `passOver` names: held by an operator). Null when no source has
   * room today.
   */
  private pickSource(tenant: string, dests: Array<{ ok: boolean; site?: Site }> = [], skip?: string, needs: Need[] = [], passOver?: (source: string) => boolean): EgressSource | null {
    const pool = (this.deps.tenants?.routing(tenant) ?? this.deps.config.tenants[tenant])?.pool ?? 'default';
    const sources = this.sourcesByPool.get(pool) ?? this.sourcesByPool.get('default')!;
    const site = dests.find((d) => d.ok)?.site?.key;
    const n = this.rotation.get(pool) ?? 0;
    this.rotation.set(pool, n + 1);
    let suspended: EgressSource | null = null;
    for (let i = 0; i < sources.length; i++) {
      const s = sources[(n + i) % sources.length]!;
      if (s.name === skip || passOver?.(s.name)) continue;
      if (needs.length && !this.deps.warmup!.fits(s.name, needs)) continue;
      if (!site || this.backoff.suspendedUntil(s.name, site) === null) return s;
      suspended ??= s;
    }
    return suspended; // every source with room is held back: wait on one of them
  }

  /**
   * Feeds a non-success reply to the backoff rules. A suspension moves the ready queue's waiting mail to
   * another source of its pool when there is one, and wakes the queue when it ends.
   */
  private observeReply(rq: ReadyQueue, reply: string): void {
    const action = this.backoff.observe(reply, rq.source.name, rq.site.key);
    if (!action) return;
    this.deps.log.warn({ event: 'backoff', ...action }, `backoff: ${action.action} ${action.source ?? 'every source'} -> ${action.site} until ${new Date(action.until).toISOString()}`);
    if (action.action !== 'suspend') return;
    for (const q of this.readyQueues.values()) {
      if (q.site.key !== action.site || (action.source && q.source.name !== action.source)) continue;
      for (const job of q.drain()) {
        const dest = { ok: true as const, site: q.site };
        const other = this.pickSource(job.tenant, [dest], q.source.name, this.needsOf([job], [dest]));
        if (other && this.backoff.suspendedUntil(other.name, q.site.key) === null) {
          this.unreserve(job);
          this.route(job, dest, other);
        } else q.push(job); // nowhere else to go: it waits here
      }
    }
    this.wakeAt(action.until);
  }

  /** Pumps every ready queue once `at` has passed (a suspension ended). */
  private wakeAt(at: number): void {
    const t = setTimeout(() => {
      this.wakeups.delete(t);
      for (const q of this.readyQueues.values()) this.pump(q);
    }, Math.max(0, at - Date.now()) + 5);
    t.unref();
    this.wakeups.add(t);
  }

  /** Ends a backoff action before its time (operator's decision). */
  clearBackoff(id: string): boolean {
    const cleared = this.backoff.clear(id);
    if (cleared) for (const q of this.readyQueues.values()) this.pump(q);
    return cleared;
  }

  backoffActions(): BackoffAction[] {
    return this.backoff.active();
  }

  /** Opens connections while the backlog exceeds the idle ones, up to the limit. */
  private pump(rq: ReadyQueue): void {
    if (this.backoff.suspendedUntil(rq.source.name, rq.site.key) !== null) return; // wakeAt() pumps it later
    const limit = this.settingsOf(rq).connections;
    while (!this.stopping && rq.length > rq.idle + rq.connecting && rq.connections < limit) {
      rq.connections++;
      this.track(this.runConnection(rq).finally(() => rq.connections--));
    }
  }

  private track<T>(p: Promise<T>): Promise<unknown> {
    const tracked = p.catch((err) => this.deps.log.error({ err }, 'scheduler task failed')).finally(() => this.inflight.delete(tracked));
    this.inflight.add(tracked);
    return tracked;
  }

  private async connect(rq: ReadyQueue): Promise<{ conn: OutboundConnection; mx: string } | { error: DeliveryError }> {
    const { resolver, config } = this.deps;
    const route = rq.site.route;
    const settings = this.settingsOf(rq);
    if (settings.connection_rate) {
      const wait = this.connectionRate.reserve(rq.key, settings.connection_rate);
      if (wait > 0) await sleep(wait);
    }
    // a route's own tls wins (an upstream provider's requirement); then an MTA-STS enforce policy; then shaping
    const sts = await this.deps.mtaSts?.check(rq.mtaStsDomain);
    const tls: TlsPolicy = (route?.tls as TlsPolicy | undefined) ?? sts?.tls(settings.tls) ?? settings.tls;
    let lastError = new DeliveryError('no MX host could be reached', '451 4.4.1 No MX host could be reached', null, true);
    let tried = 0;
    for (const host of rq.site.hosts) {
      const refused = sts?.refuseHost(host.name);
      if (refused) {
        tried++;
        lastError = refused;
        continue;
      }
      let addresses: string[];
      try {
        addresses = await resolver.hostAddresses(host.name);
      } catch (err) {
        lastError = new DeliveryError('MX lookup failed', `451 4.4.3 Cannot resolve MX host ${host.name}: ${(err as Error).message}`, null, true);
        continue;
      }
      for (const address of addresses) {
        if (resolver.isDown(address, host.port)) continue;
        tried++;
        try {
          const conn = await OutboundConnection.open({
            address,
            port: host.port,
            servername: host.name,
            localAddress: rq.source.address,
            ehlo: rq.source.ehlo,
            tls,
            secureContext: this.deps.tlsContext,
            auth: route?.auth,
            connectTimeoutMs: settings.connect_timeout,
            commandTimeoutMs: config.delivery.commandTimeoutMs,
            dataTimeoutMs: config.delivery.dataTimeoutMs,
          });
          const mx = `${host.name}[${address}]:${host.port}`;
          sts?.inspect(conn, mx);
          return { conn, mx };
        } catch (err) {
          lastError = err as DeliveryError;
          const refusal = sts?.tlsFailure(lastError, `${host.name}[${address}]:${host.port}`);
          if (refusal) {
            lastError = refusal; // the host answered: not down
            continue;
          }
          // a refused or silent host is skipped for a while; a host that answered (4xx/5xx greeting) is not down
          if (lastError.network) resolver.markDown(address, host.port);
        }
      }
    }
    if (!tried) lastError = new DeliveryError('all MX hosts are marked down', `451 4.4.1 All MX hosts of ${rq.site.key} are unreachable; retrying later`, null, true);
    return { error: lastError };
  }

  /** One outbound connection: connect, then send transactions until the queue is idle or the per-connection cap. */
  private async runConnection(rq: ReadyQueue): Promise<void> {
    rq.connecting++;
    const connected = await this.connect(rq).finally(() => rq.connecting--);
    if ('error' in connected) {
      // nothing in this ready queue can go out now: defer it all with the reason. A refusal while setting up
      // the connection (5xx greeting, STARTTLS or AUTH refused) is about the path, not the recipients, so
      // it defers too, as Postfix does; max_age ends it if it never clears
      const err = connected.error;
      if (err.code !== null) this.observeReply(rq, err.response);
      for (const job of rq.drain()) this.finish(job, job.rcpts.map((r) => ({ i: r.i, result: 'deferred', response: err.response, source: rq.source.name })), 'connect');
      return;
    }
    const { conn, mx } = connected;
    this.connections.add(conn);
    const siteLabel = rq.site.key;
    this.deps.metrics.openConnections.inc({ site: siteLabel });
    let sent = 0;
    // the previous transaction's outcome may still be committing while this one is on the wire, but no
    // further: a crash repeats at most two transactions per connection
    let recording: Promise<unknown> = Promise.resolve();
    try {
      while (conn.usable && !this.stopping && sent < this.settingsOf(rq).messages_per_connection) {
        if (this.backoff.suspendedUntil(rq.source.name, rq.site.key) !== null) break;
        const settings = this.settingsOf(rq);
        let batch = rq.take(settings.recipients_per_transaction);
        if (!batch) {
          rq.idle++;
          const arrived = await rq.waitForJob(settings.idle_timeout);
          rq.idle--;
          if (!arrived || !conn.usable) break;
          batch = rq.take(settings.recipients_per_transaction);
          if (!batch) continue;
        }
        // a backoff throttle replaces the configured rate while it runs
        const rate = this.backoff.throttle(rq.source.name, rq.site.key) ?? settings.rate;
        if (rate) {
          // evenly spaced sends for this source → site, whichever connection sends them
          const wait = this.messageRate.reserve(rq.key, rate);
          if (wait > 0) await sleep(wait);
        }
        sent++;
        const { keepGoing, recorded } = await this.transaction(conn, rq, batch, mx);
        await recording;
        recording = recorded;
        if (!keepGoing) break;
      }
    } finally {
      await recording;
      this.deps.metrics.openConnections.dec({ site: siteLabel });
      this.connections.delete(conn);
      conn.quit();
    }
    if (rq.length) this.pump(rq);
  }

  /**
   * Sends one message to the batch's recipients. `keepGoing` is false when the connection should not be
   * reused; `recorded` settles once the outcomes are committed to the spool.
   */
  private async transaction(conn: OutboundConnection, rq: ReadyQueue, batch: Job[], mx: string): Promise<{ keepGoing: boolean; recorded: Promise<unknown> }> {
    const first = batch[0]!;
    const body = this.deps.spool.body(first.msgId);
    // a personalised message (tracking tokens, List-Unsubscribe) has a copy per recipient instead of one body
    const copies = body ? null : this.personalCopies(first.msgId, batch);
    const source = rq.source.name;
    if (!body && !copies?.size) {
      // every recipient already has a final result: nothing to send, drop the stale entry
      for (const job of batch) {
        this.unreserve(job);
        this.track(this.deps.spool.discard(job).then(() => {
          this.release(job);
          this.queuedRecipients -= job.rcpts.length;
        }));
      }
      return { keepGoing: true, recorded: Promise.resolve() };
    }
    const recipients = batch.flatMap((j) => j.rcpts.map((r) => ({ job: j, r })));
    const outcomes = new Map<Job, Outcome[]>(batch.map((j) => [j, []]));
    const record = (job: Job, o: Outcome) => outcomes.get(job)!.push(o);
    // with VERP each recipient has its own envelope sender (and X-Tern-Ref), so its own transaction; a
    // message sent with a null sender keeps it and its recipients share one
    const verp = this.deps.bounces?.verp && first.sender !== '' ? this.deps.bounces.verp : null;
    const envelopes = verp || copies ? recipients.map((x) => [x]) : [recipients];
    for (const job of batch) this.countSent(job);
    let keepGoing = true;
    for (const group of envelopes) {
      // the connection went away: the rest were not tried and stay queued without an attempt counted
      if (!conn.usable) break;
      let sender = first.sender;
      const data = copies ? copies.get(group[0]!.r.i) : body!;
      if (!data) {
        for (const { job, r } of group) record(job, { i: r.i, result: 'failed', response: '554 5.3.0 This recipient\'s copy of the message is missing from the spool', source });
        continue;
      }
      let content: Buffer | Buffer[] = data;
      if (verp) {
        const i = group[0]!.r.i;
        sender = verp.encode(first.msgId, i, this.bounceDomainOf(first.tenant));
        content = [Buffer.from(`X-Tern-Ref: ${verp.ref(first.msgId, i)}\r\n`, 'latin1'), data];
      }
      const utf8 = /[^\x00-\x7f]/.test(sender) || group.some(({ r }) => /[^\x00-\x7f]/.test(r.to));
      try {
        const size = Array.isArray(content) ? content[0]!.length + data.length : data.length;
        const result = await conn.send(sender, group.map(({ r }) => r.to), content, { utf8, size });
        const accepted = new Set(result.accepted.map((a) => a.toLowerCase()));
        for (const { job, r } of group) {
          const refusal = result.rejected.get(r.to);
          if (refusal) record(job, { i: r.i, result: this.judge(rq, refusal.code, refusal.response), response: refusal.response, mx, source });
          else if (accepted.has(r.to.toLowerCase())) record(job, { i: r.i, result: 'delivered', response: result.response, mx, source });
          else record(job, { i: r.i, result: 'deferred', response: '451 4.4.0 No reply for this recipient', mx, source });
        }
        if (result.accepted.length === 0 && result.rejected.size) await conn.reset().catch(() => conn.destroy());
      } catch (err) {
        const e = err as DeliveryError;
        const result = e.network ? 'deferred' : this.judge(rq, e.code, e.response);
        for (const { job, r } of group) record(job, { i: r.i, result, response: e.response, mx, source });
        if (e.network || e.code === 421) {
          keepGoing = false;
          break;
        }
        await conn.reset().catch(() => conn.destroy());
        keepGoing = conn.usable;
      }
    }
    const recorded = batch.map((job) => this.finish(job, outcomes.get(job)!, rq.site.key));
    return { keepGoing, recorded: Promise.all(recorded) };
  }

  /** The recipients' own copies of a personalised message, by recipient index. */
  private personalCopies(msgId: string, batch: Job[]): Map<number, Buffer> {
    const copies = new Map<number, Buffer>();
    for (const job of batch)
      for (const r of job.rcpts) {
        const copy = this.deps.spool.personalBody(msgId, r.i);
        if (copy) copies.set(r.i, copy);
      }
    return copies;
  }

  /** The bounce domain of a tenant's VERP envelope senders. */
  private bounceDomainOf(tenant: string): string {
    return (this.deps.tenants?.routing(tenant) ?? this.deps.config.tenants[tenant])?.bounce_domain?.toLowerCase() ?? this.deps.config.bounce.domain;
  }

  /** The result of a remote refusal, after the backoff rules have seen it. */
  private judge(rq: ReadyQueue, code: number | null, reply: string): Outcome['result'] {
    const result = resultFor(code);
    if (result === 'delivered') return result;
    this.observeReply(rq, reply);
    return result === 'deferred' && this.backoff.failRule(reply) ? 'failed' : result;
  }

  /** Records outcomes; frees the job's memory slot once the spool has committed them. */
  private finish(job: Job, outcomes: Outcome[], site: string): Promise<unknown> {
    this.unreserve(job);
    const doomed = this.failAfter.get(jobKeyString(job.key));
    if (doomed !== undefined) {
      // the operator failed this mail while it was on the wire: a deferral becomes that failure
      this.failAfter.delete(jobKeyString(job.key));
      outcomes = outcomes.map((o) => (o.result === 'deferred' ? { ...o, result: 'failed', response: `${doomed} (the attempt in progress got: ${o.response})` } : o));
    }
    const rules = this.deps.bounces?.rules;
    if (rules)
      outcomes = outcomes.map((o) => {
        if (o.result === 'delivered') return o;
        const c = classifyResponse(rules, { text: o.response });
        // the classifier has the last word: a reply its rules call hard (a dead address) is final, even as a 4xx
        const result = o.result === 'deferred' && c.hard ? 'failed' : o.result;
        return { ...o, result, category: c.category, hard: c.hard, action: c.action };
      });
    for (const o of outcomes) this.deps.metrics.deliveries.inc({ result: o.result, site });
    const started = performance.now();
    return this.track(
      this.deps.spool.complete(job, outcomes, doomed === undefined ? {} : { by: 'operator' }).then((next) => {
        this.deps.metrics.resultCommitSeconds.observe((performance.now() - started) / 1000);
        this.release(job);
        this.queuedRecipients -= job.rcpts.length - (next?.rcpts.length ?? 0);
        this.deps.metrics.queueDepth.set({ tier: 'spool' }, this.queuedRecipients);
        if (next && next.key[0] <= Date.now() && !this.backlog && !this.stopping) this.admit([next]);
        else if (next) this.rewind(next.key);
        else if (this.backlog) this.requestScan();
      }),
    );
  }

  private hold(job: Job): void {
    this.inMemory.add(jobKeyString(job.key));
    this.memRecipients += job.rcpts.length;
    this.memByDomain.set(job.domain, (this.memByDomain.get(job.domain) ?? 0) + job.rcpts.length);
  }

  private release(job: Job): void {
    if (!this.inMemory.delete(jobKeyString(job.key))) return;
    this.memRecipients -= job.rcpts.length;
    const left = (this.memByDomain.get(job.domain) ?? job.rcpts.length) - job.rcpts.length;
    if (left > 0) this.memByDomain.set(job.domain, left);
    else this.memByDomain.delete(job.domain);
    const skipped = this.skipped.get(job.domain);
    if (skipped && left <= this.deps.config.delivery.memoryQueuePerDomain / 2) {
      this.skipped.delete(job.domain);
      this.rewind(skipped);
    }
  }

  /** Whether the job's domain may take more of the memory tier (one job always fits an empty domain). */
  private domainHasRoom(job: Job): boolean {
    const held = this.memByDomain.get(job.domain) ?? 0;
    return held === 0 || held + job.rcpts.length <= this.deps.config.delivery.memoryQueuePerDomain;
  }

  /** Ready queues and scheduled queues with their depths (for metrics and the admin API). */
  snapshot(): { ready: Array<{ key: string; source: string; site: string; recipients: number; jobs: number; connections: number }>; resolving: Record<string, number>; inMemory: number; queuedRecipients: number } {
    return {
      ready: [...this.readyQueues.values()].map((rq) => ({ key: rq.key, source: rq.source.name, site: rq.site.key, recipients: rq.recipients, jobs: rq.length, connections: rq.connections })),
      resolving: Object.fromEntries(this.scheduled),
      inMemory: this.memRecipients,
      queuedRecipients: this.queuedRecipients,
    };
  }

  // ── Operator holds and actions (src/mta/queue-admin.ts drives these) ──

  /** A hold started: the mail it covers leaves the ready queues (transactions on the wire finish). */
  holdStarted(): void {
    const holds = this.deps.holds;
    for (const rq of this.readyQueues.values()) {
      const pulled = rq.remove((job) => holds.blocking(job) !== undefined || holds.blocking(job, rq.source.name) !== undefined);
      for (const job of pulled) this.route(job, { ok: true, site: rq.site }, rq.source); // back to the spool, or to another source
    }
  }

  /** Holds ended: read the spool from the start again, so that the mail they kept back is picked up now. */
  holdsEnded(): void {
    this.cursor = null;
    this.backlog = true;
    this.requestScan();
  }

  /**
   * Takes schedule entries out of the scheduler's hands for an operator action: entries only in the spool
   * are reserved (the scanner passes over them), queued ones leave their ready queue. Entries being resolved
   * or on the wire are returned as `busy`. Give the claimed ones back with `unclaim()`.
   */
  claim(jobs: Job[]): { claimed: Job[]; busy: Job[] } {
    const claimed: Job[] = [];
    const wanted = new Map<string, Job>();
    for (const job of jobs) {
      const k = jobKeyString(job.key);
      if (this.inMemory.has(k)) wanted.set(k, job);
      else {
        this.hold(job);
        claimed.push(job);
      }
    }
    if (wanted.size) for (const rq of this.readyQueues.values()) claimed.push(...rq.remove((j) => wanted.delete(jobKeyString(j.key))));
    return { claimed, busy: [...wanted.values()] };
  }

  /** Gives claimed entries back; `removed` recipients left the queue for good (failed). */
  unclaim(jobs: Job[], removed: number): void {
    for (const job of jobs) this.release(job);
    this.queuedRecipients -= removed;
    this.deps.metrics.queueDepth.set({ tier: 'spool' }, this.queuedRecipients);
  }

  /** Entries the operator failed while they were busy: their attempt finishes, and a deferral becomes this failure. */
  failAfterAttempt(jobs: Job[], response: string): void {
    for (const job of jobs) this.failAfter.set(jobKeyString(job.key), response);
  }

  /** Entries made due now behind the scanner (retry now): read them promptly. */
  rescheduled(jobs: Job[]): void {
    for (const job of jobs) this.rewind(job.key);
  }

  /** Fails a job held in memory without an attempt (operator's decision reached it while resolving). */
  private failNow(job: Job, response: string): void {
    this.track(this.deps.spool.fail([job], response).then(() => this.unclaim([job], job.rcpts.length)));
  }

  /** Every ready queue with what is queued in it and what limits it now (for the admin API). */
  readyQueueDetails() {
    return [...this.readyQueues.values()].map((rq) => {
      let oldestCreatedAt: number | null = null;
      const tenants = new Set<string>();
      const campaigns = new Set<string>();
      const domains = new Set<string>();
      for (const job of rq.queued()) {
        if (oldestCreatedAt === null || job.createdAt < oldestCreatedAt) oldestCreatedAt = job.createdAt;
        tenants.add(job.tenant);
        campaigns.add(job.campaign);
        domains.add(job.domain);
      }
      return {
        key: rq.key,
        source: rq.source.name,
        site: rq.site.key,
        shapedDomain: rq.shapedDomain,
        recipients: rq.recipients,
        jobs: rq.length,
        connections: rq.connections,
        oldestCreatedAt,
        tenants,
        campaigns,
        domains,
        settings: this.settingsOf(rq),
        suspendedUntil: this.backoff.suspendedUntil(rq.source.name, rq.site.key),
        throttle: this.backoff.throttle(rq.source.name, rq.site.key),
      };
    });
  }

  /** Stops taking work, closes idle connections and waits (bounded) for open transactions to finish. */
  async stop(graceMs = 10_000): Promise<void> {
    this.stopping = true;
    if (this.timer) clearTimeout(this.timer);
    for (const t of this.wakeups) clearTimeout(t);
    const deadline = new Promise((r) => setTimeout(r, graceMs).unref());
    for (const rq of this.readyQueues.values()) rq.wakeAll(); // idle connections see `stopping` and quit
    await Promise.race([Promise.allSettled([...this.inflight]), deadline]);
    for (const c of this.connections) c.destroy();
  }
}

function resultFor(code: number | null): Outcome['result'] {
  if (code !== null && code >= 200 && code < 300) return 'delivered';
  return code !== null && code >= 500 ? 'failed' : 'deferred';
}
