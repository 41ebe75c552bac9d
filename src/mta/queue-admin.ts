/**
 * Queue administration: what the operator sees of the queues and does to them (issue #3). Listing reads the
 * spool's in-memory counters and the scheduler's ready queues, never the spool itself; holds live in
 * `holds.ts`; "fail" and "retry now" walk the spool's schedule index (bounded steps, one action at a time)
 * and change entries through the spool, with their events in the same transactions.
 */
import type { Config } from '../core/config.js';
import type { Logger } from '../core/log.js';
import type { Store } from '../core/store.js';
import { isValidDomain } from './address.js';
import { describeSelector, sameSelector, selectorOf, selects, SELECTOR_KEYS, type Hold, type Holds, type Selector } from './holds.js';
import type { Scheduler } from './queues.js';
import { describeSettings } from './shaping.js';
import { jobKeyString, type Job, type ScheduleKey, type Spool } from './spool.js';

/** schedule entries one step of "fail" or "retry" reads, and about how many recipients it changes in one transaction */
const WALK_STEP = 5000;
const CHANGE_BATCH = 500;

export class QueueInputError extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
  }
}

export interface ListOptions {
  filter: Selector;
  limit: number;
  cursor?: string;
}

export class QueueAdmin {
  private timer: NodeJS.Timeout | null = null;
  /** actions that walk the spool run one at a time, so two never claim the same entry */
  private serial: Promise<unknown> = Promise.resolve();

  constructor(private readonly deps: { config: Config; spool: Spool; scheduler: Scheduler; holds: Holds; store: Store; log: Logger; tenants?: { get(id: string): unknown }; pools?: { sourcesByPool(): Record<string, Array<{ name: string }>> } }) {}

  /** Records the end of holds that ran out while the node was down, and watches for the next end. */
  async start(): Promise<void> {
    await this.expireHolds();
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  /**
   * Checks and normalises a selector (domain lower-cased); throws QueueInputError with what to do.
   * `source` is refused where it means nothing (fail, retry: queued mail is not tied to a source).
   */
  selector(input: Selector, opts: { source: boolean }): Selector {
    const sel = selectorOf(input);
    if (!Object.keys(sel).length)
      throw new QueueInputError('no_selector', `Name the mail to act on with at least one of ${opts.source ? 'tenant, campaign, domain or source' : 'tenant, campaign or domain'}, e.g. {"domain": "example.com"}`);
    const { config } = this.deps;
    if (sel.tenant !== undefined && !config.tenants[sel.tenant] && !this.deps.tenants?.get(sel.tenant))
      throw new QueueInputError('unknown_tenant', `No tenant is named "${sel.tenant}"; the tenants are ${Object.keys(config.tenants).join(', ')}`);
    if (sel.domain !== undefined) {
      sel.domain = sel.domain.toLowerCase();
      if (!isValidDomain(sel.domain, true)) throw new QueueInputError('invalid_domain', `"${sel.domain}" is not a domain name; give it like "example.com"`);
    }
    if (sel.source !== undefined) {
      if (!opts.source) throw new QueueInputError('invalid_selector', 'Queued mail is not tied to an egress source until it is sent: select it by tenant, campaign or domain (suspend a source to move its mail to other sources)');
      // the file's pools and those made through the control API
      const pools = this.deps.pools?.sourcesByPool() ?? Object.fromEntries(Object.entries(config.pools).map(([n, p]) => [n, p.sources]));
      const sources = Object.values(pools).flatMap((list) => list.map((s) => s.name));
      if (!sources.includes(sel.source)) throw new QueueInputError('unknown_source', `No egress source is named "${sel.source}"; the sources are ${sources.join(', ')}`);
    }
    return sel;
  }

  /** Scheduled and ready queues, sorted by name, `limit` of each after the cursor's positions. */
  list({ filter, limit, cursor }: ListOptions) {
    const now = Date.now();
    const pos = decodeCursor(cursor);
    const holds = this.deps.holds.list(now);
    const sourceless = holds.filter((h) => h.source === undefined);
    const domain = filter.domain?.toLowerCase();
    const scheduledAll = filter.source !== undefined ? [] : this.deps.spool.queues.list((q) => selects({ ...filter, domain }, q));
    const scheduledPage = scheduledAll.filter((q) => pos.s === undefined || q.name > pos.s).slice(0, limit);
    const scheduled = scheduledPage.map((q) => ({
      queue: q.name,
      tenant: q.tenant,
      campaign: q.campaign,
      domain: q.domain,
      recipients: q.recipients,
      messages: q.messages,
      oldest_created_at: q.oldestCreatedAt,
      oldest_age_s: Math.max(0, Math.round((now - q.oldestCreatedAt) / 1000)),
      next_due_at: q.nextDueAt,
      held: sourceless.filter((h) => selects(h, q)).map(holdSummary),
    }));
    const readyAll = this.deps.scheduler
      .readyQueueDetails()
      .filter(
        (rq) =>
          (filter.source === undefined || rq.source === filter.source) &&
          (filter.tenant === undefined || rq.tenants.has(filter.tenant)) &&
          (filter.campaign === undefined || rq.campaigns.has(filter.campaign)) &&
          (domain === undefined || rq.domains.has(domain) || rq.shapedDomain === domain),
      )
      .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    const readyPage = readyAll.filter((rq) => pos.r === undefined || rq.key > pos.r).slice(0, limit);
    const ready = readyPage.map((rq) => ({
      queue: rq.key,
      source: rq.source,
      site: rq.site,
      domain: rq.shapedDomain,
      recipients: rq.recipients,
      messages: rq.jobs,
      connections: rq.connections,
      oldest_created_at: rq.oldestCreatedAt,
      oldest_age_s: rq.oldestCreatedAt === null ? null : Math.max(0, Math.round((now - rq.oldestCreatedAt) / 1000)),
      limits: describeSettings(rq.settings),
      suspended_until: rq.suspendedUntil,
      throttle: rq.throttle?.text ?? null,
      held: holds.filter((h) => h.source === rq.source).map(holdSummary),
    }));
    const moreScheduled = scheduledPage.length > 0 && scheduledAll.at(-1)!.name !== scheduledPage.at(-1)!.name;
    const moreReady = readyPage.length > 0 && readyAll.at(-1)!.key !== readyPage.at(-1)!.key;
    return {
      scheduled,
      ready,
      totals: {
        scheduled_queues: scheduledAll.length,
        scheduled_recipients: scheduledAll.reduce((n, q) => n + q.recipients, 0),
        ready_queues: readyAll.length,
        ready_recipients: readyAll.reduce((n, q) => n + q.recipients, 0),
        queued_recipients: this.deps.spool.queues.recipients,
      },
      next_cursor: moreScheduled || moreReady ? encodeCursor({ s: scheduledPage.at(-1)?.name ?? pos.s, r: readyPage.at(-1)?.key ?? pos.r }) : null,
    };
  }

  /** Operator holds in force, and the backoff actions running (they hold mail back too). */
  suspensions() {
    return { holds: this.deps.holds.list().map(holdView), backoff: this.deps.scheduler.backoffActions() };
  }

  /** Starts a hold; the mail it covers leaves the ready queues at once. */
  async suspend(sel: Selector, reason: string, durationMs: number | null): Promise<Hold> {
    const hold = await this.deps.holds.add(sel, reason, durationMs);
    this.deps.log.info({ hold: hold.id, ...selectorOf(hold), reason, until: hold.until }, `queue: suspended ${describeSelector(hold)}`);
    this.deps.scheduler.holdStarted();
    this.armExpiry();
    return hold;
  }

  /** Ends the hold `id`, or every hold with exactly selector `sel`; resolves with those ended (none: []). */
  async resume(target: { id: string } | { selector: Selector }): Promise<Hold[]> {
    const ids = 'id' in target ? [target.id] : this.deps.holds.list().filter((h) => sameSelector(h, target.selector)).map((h) => h.id);
    const ended = await this.deps.holds.remove(ids);
    if (!ended.length) return [];
    for (const h of ended) this.deps.log.info({ hold: h.id, ...selectorOf(h) }, `queue: resumed ${describeSelector(h)}`);
    this.deps.scheduler.holdsEnded();
    this.armExpiry();
    return ended;
  }

  /**
   * Gives every queued recipient `sel` selects a final `failed` result (`554 5.0.0 Failed by operator: …`),
   * held mail included. Recipients on the wire (or being routed) at that moment finish their attempt: if it
   * is deferred, it becomes this failure; if delivered, it stays delivered. They are counted as `in_flight`.
   */
  async fail(sel: Selector, reason: string): Promise<{ failed: number; in_flight: number }> {
    const response = `554 5.0.0 Failed by operator: ${reason}`;
    return this.exclusive(async () => {
      let failed = 0;
      let inFlight = 0;
      await this.walk(sel, async (jobs) => {
        const { claimed, busy } = this.deps.scheduler.claim(jobs);
        this.deps.scheduler.failAfterAttempt(busy, response);
        inFlight += recipientsOf(busy);
        try {
          await this.deps.spool.fail(claimed, response);
        } catch (err) {
          this.deps.scheduler.unclaim(claimed, 0);
          throw err;
        }
        this.deps.scheduler.unclaim(claimed, recipientsOf(claimed));
        failed += recipientsOf(claimed);
      });
      await this.record('queue_failed', { ...sel, reason, recipients: failed, in_flight: inFlight });
      this.deps.log.info({ ...sel, reason, failed, in_flight: inFlight }, `queue: failed ${failed} recipients (${describeSelector(sel)})`);
      return { failed, in_flight: inFlight };
    });
  }

  /**
   * Makes the queued recipients `sel` (or one message) selects due now, without counting an attempt. Held
   * mail stays held (resume it instead); mail already due or on the wire is left as it is.
   */
  async retry(target: { selector: Selector } | { messageId: string }): Promise<{ retried: number; already_due: number; held: number; in_flight: number }> {
    return this.exclusive(async () => {
      const counts = { retried: 0, already_due: 0, held: 0, in_flight: 0 };
      const moved = new Set<string>(); // entries made due now are met again further on in the walk
      const step = async (jobs: Job[]) => {
        const now = Date.now();
        const later: Job[] = [];
        for (const job of jobs) {
          if (moved.has(jobKeyString(job.key))) continue;
          if (this.deps.holds.blocking(job, undefined, now)) counts.held += job.rcpts.length;
          else if (job.key[0] <= now) counts.already_due += job.rcpts.length;
          else later.push(job);
        }
        const { claimed, busy } = this.deps.scheduler.claim(later);
        counts.in_flight += recipientsOf(busy);
        let due: Job[];
        try {
          due = await this.deps.spool.reschedule(claimed, Date.now());
        } finally {
          this.deps.scheduler.unclaim(claimed, 0);
        }
        for (const job of due) moved.add(jobKeyString(job.key));
        this.deps.scheduler.rescheduled(due);
        counts.retried += recipientsOf(due);
      };
      if ('messageId' in target) {
        if (!this.deps.spool.message(target.messageId)) throw new QueueInputError('not_found', `No message has queue id ${target.messageId}`);
        await step(this.deps.spool.jobsOf(target.messageId));
      } else await this.walk(target.selector, step);
      const what = 'messageId' in target ? { queue_id: target.messageId } : target.selector;
      await this.record('queue_retried', { ...what, recipients: counts.retried, already_due: counts.already_due, held: counts.held });
      this.deps.log.info({ ...what, ...counts }, `queue: retry now: ${counts.retried} recipients`);
      return counts;
    });
  }

  /** One message: its record, each recipient's state and history, the holds keeping it back. Null if unknown. */
  message(id: string) {
    const { spool, holds } = this.deps;
    const m = spool.message(id);
    if (!m) return null;
    const recipients = spool.recipientStates(id).map((r) => {
      const domain = r.to.slice(r.to.lastIndexOf('@') + 1).toLowerCase();
      const mail = { tenant: m.tenant, campaign: m.campaign, domain };
      const held = r.status === 'queued' ? holds.list().filter((h) => h.source === undefined && selects(h, mail)).map(holdSummary) : [];
      return { rcpt: r.to, status: r.status, attempts: r.attempts, next_at: r.nextAt, last_reply: r.last, queue: r.queue, updated_at: r.updatedAt, held, history: r.history ?? [] };
    });
    const history = [
      { at: m.createdAt, type: 'accepted', rcpt: null as string | null, recipients: m.recipients },
      ...recipients.flatMap((r) => r.history.map((h) => ({ ...h, rcpt: r.rcpt }))),
    ].sort((a, b) => a.at - b.at);
    return {
      queue_id: id,
      message_id: m.messageId,
      tenant: m.tenant,
      campaign: m.campaign,
      sender: m.sender,
      size: m.size,
      created_at: m.createdAt,
      pending: m.pending,
      recipients,
      history,
    };
  }

  /** Calls `step` with the schedule entries `sel` selects, a batch at a time, in due order. */
  private async walk(sel: Selector, step: (jobs: Job[]) => Promise<void>): Promise<void> {
    let after: ScheduleKey | null = null;
    for (;;) {
      const batch: Job[] = [];
      let recipients = 0;
      let examined = 0;
      let done = true;
      for (const job of this.deps.spool.due(after, Number.MAX_SAFE_INTEGER)) {
        after = job.key;
        if (selects(sel, job)) {
          batch.push(job);
          recipients += job.rcpts.length;
        }
        if (recipients >= CHANGE_BATCH || ++examined >= WALK_STEP) {
          done = false;
          break;
        }
      }
      if (batch.length) await step(batch);
      if (done) return;
      await new Promise((r) => setImmediate(r)); // let deliveries and requests run between steps
    }
  }

  private exclusive<T>(action: () => Promise<T>): Promise<T> {
    const run = this.serial.then(action, action);
    this.serial = run.catch(() => {});
    return run;
  }

  private async record(type: string, fields: Record<string, unknown>): Promise<void> {
    await this.deps.store.transact((tx) => tx.event(type, fields));
    await this.deps.store.durable();
  }

  private async expireHolds(): Promise<void> {
    try {
      const ended = await this.deps.holds.expire();
      for (const h of ended) this.deps.log.info({ hold: h.id, ...selectorOf(h) }, `queue: hold on ${describeSelector(h)} ended`);
      if (ended.length) this.deps.scheduler.holdsEnded();
    } catch (err) {
      this.deps.log.error({ err }, 'queue: recording the end of holds failed; retrying');
    }
    this.armExpiry();
  }

  /** Wakes up when the next hold ends (at most a day ahead: timers cannot wait longer than ~24 days). */
  private armExpiry(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const next = this.deps.holds.nextExpiry();
    if (next === null) return;
    this.timer = setTimeout(() => void this.expireHolds(), Math.min(86_400_000, Math.max(0, next - Date.now()) + 5));
    this.timer.unref();
  }
}

const recipientsOf = (jobs: Job[]) => jobs.reduce((n, j) => n + j.rcpts.length, 0);

const holdSummary = (h: Hold) => ({ id: h.id, reason: h.reason, until: h.until });

/** A hold as the API shows it: every selector key present (null when not set). */
export function holdView(h: Hold) {
  const sel = Object.fromEntries(SELECTOR_KEYS.map((k) => [k, h[k] ?? null]));
  return { id: h.id, ...sel, reason: h.reason, since: h.since, until: h.until };
}

function encodeCursor(pos: { s?: string; r?: string }): string {
  return Buffer.from(JSON.stringify(pos)).toString('base64url');
}

function decodeCursor(cursor: string | undefined): { s?: string; r?: string } {
  if (!cursor) return {};
  try {
    const pos = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
    if (pos && typeof pos === 'object' && (pos.s === undefined || typeof pos.s === 'string') && (pos.r === undefined || typeof pos.r === 'string')) return pos;
  } catch {
    // fall through
  }
  throw new QueueInputError('invalid_cursor', 'The cursor is not one this node gave out; pass next_cursor from the previous page unchanged');
}
