/**
 * The durable spool. Each body is stored once; each recipient has its own state record; the schedule is an
 * index ordered by due time whose entries carry everything the scheduler needs (so a restart rebuilds the
 * queues from the index alone, without reading bodies).
 *
 * Sub-databases (owned here; other modules call these functions):
 *   spool.messages   msgId → MessageRecord
 *   spool.bodies     msgId → raw bytes (signed, CRLF, ready to send)
 *                    [msgId, i] → recipient i's own copy, for a personalised message (tracking tokens,
 *                    List-Unsubscribe): then there is no msgId entry, and each copy goes when its recipient is final
 *   spool.recipients [msgId, i] → StoredRecipient (a RecipientRecord without what can be derived: see below)
 *   spool.schedule   [dueAt, msgId, domain, firstIndex] → ScheduleEntry   (one per message × domain group)
 *   spool.attempts   [msgId, domain, at] → AttemptDetails: the reply, MX and source of one attempt that
 *                    several recipients share (one transaction's 451 to 100 recipients is stored once; their
 *                    history steps say `shared` instead of repeating it)
 *
 * A message has at most one schedule entry per domain at a time, due at the `nextAt` of that domain's
 * queued recipients: so one message's entries are found from its recipient records, without a scan.
 */
import crypto from 'node:crypto';
import type { Database } from 'lmdb';
import type { Store, Tx } from '../core/store.js';
import { domainOf } from './address.js';
import { nextAttempt, type RetryPolicy } from './retry.js';
import { ScheduledQueues, queueName } from './queue-stats.js';

export { queueName };

export type ScheduleKey = [dueAt: number, msgId: string, domain: string, first: number];

export interface MessageRecord {
  tenant: string;
  campaign: string;
  sender: string;
  size: number;
  createdAt: number;
  messageId: string;
  recipients: number;
  /** recipients without a final result yet; the body is deleted when this reaches 0 */
  pending: number;
  /** each recipient has its own body ([msgId, i] in spool.bodies) */
  personal?: true;
}

export type RecipientStatus = 'queued' | 'delivered' | 'failed' | 'expired';

export interface RecipientRecord {
  to: string;
  status: RecipientStatus;
  attempts: number;
  nextAt: number | null;
  last: string | null;
  queue: string;
  updatedAt: number;
  /** the latest attempts and operator actions, oldest first, at most HISTORY_LIMIT */
  history?: HistoryEntry[];
}

/** One step in a recipient's life, kept with its state so that inspecting a message reads no events. */
export interface HistoryEntry {
  at: number;
  /** bounced, dsn_delayed, complained, autoreply: a report that came back later (src/bounce/ingest.ts) */
  type: 'deferred' | 'delivered' | 'failed' | 'expired' | 'retried' | 'postponed' | 'bounced' | 'dsn_delayed' | 'complained' | 'autoreply';
  /** the attempt it records (attempts made so far, for operator actions) */
  attempt: number;
  response?: string;
  mx?: string;
  source?: string;
  /** set for actions that were not delivery attempts: the operator's, or warmup holding mail for a day */
  by?: 'operator' | 'warmup';
  /** stored steps only: response, mx and source are in spool.attempts, shared with the other recipients of the attempt */
  shared?: true;
}

/** What the recipients of one attempt share (see spool.attempts). */
type AttemptDetails = Pick<HistoryEntry, 'response' | 'mx' | 'source'>;

export const HISTORY_LIMIT = 10;

/**
 * A recipient record as stored. A million queued recipients each have one, so it holds nothing that can be
 * derived: `queue` comes from the message record and the address's domain, `updatedAt` is the latest history
 * step's time (or the message's creation), and `last` is stored only when it is not the latest step's reply.
 * Records written before this layout still carry `queue`, `updatedAt` and `last`; they are read as they are.
 */
interface StoredRecipient {
  to: string;
  status: RecipientStatus;
  attempts: number;
  nextAt: number | null;
  history?: HistoryEntry[];
  last?: string | null;
  queue?: string;
  updatedAt?: number;
}

/**
 * The stored form of a recipient's state. `latestReply` is the reply its latest history step stands for
 * (the step's own response, or the shared one): `last` is stored only when it differs.
 */
function compact(state: Pick<RecipientRecord, 'to' | 'status' | 'attempts' | 'nextAt' | 'last' | 'history'>, latestReply: string | null): StoredRecipient {
  const rec: StoredRecipient = { to: state.to, status: state.status, attempts: state.attempts, nextAt: state.nextAt };
  if (state.history?.length) rec.history = state.history;
  if (state.last !== latestReply) rec.last = state.last;
  return rec;
}

interface ScheduleEntry {
  tenant: string;
  campaign: string;
  sender: string;
  createdAt: number;
  size: number;
  rcpts: JobRecipient[];
}

export interface JobRecipient {
  i: number;
  to: string;
  attempts: number;
}

/** Recipients of one message for one domain, due at `key[0]`: the unit the scheduler moves around. */
export interface Job extends ScheduleEntry {
  key: ScheduleKey;
  msgId: string;
  domain: string;
}

export interface Outcome {
  i: number;
  result: 'delivered' | 'deferred' | 'failed';
  /** the remote reply or our own explanation */
  response: string;
  /** the MX host or route that answered */
  mx?: string;
  source?: string;
  /** the bounce classifier's reading of a refusal (see src/bounce/classify.ts) */
  category?: string;
  hard?: boolean;
  action?: 'suppress' | 'count' | 'none';
}

/** A recipient that got a final result other than delivered: what the bounce handling acts on. */
export interface FinalFailure {
  tenant: string;
  campaign: string;
  rcpt: string;
  queue_id: string;
  status: 'failed' | 'expired';
  category: string | null;
  hard: boolean;
  action: 'suppress' | 'count' | 'none';
}

export interface AcceptInput {
  /** from newMessageId(); made here when absent */
  msgId?: string;
  tenant: string;
  campaign?: string;
  sender: string;
  recipients: string[];
  body: Uint8Array;
  /** one body per recipient, in `recipients` order (a personalised message); `body` is then one of them */
  bodies?: Uint8Array[];
  messageId: string;
  listener: string;
  client?: string;
  user?: string;
  /** recipients dropped at acceptance because the tenant's suppression list holds them (not spooled) */
  suppressed?: Array<{ to: string; reason: string; detail: string | null }>;
  /** the HTTP call's tags and metadata, carried by the accepted event */
  tags?: string[];
  metadata?: Record<string, string>;
}

export const jobKeyString = (k: ScheduleKey) => `${k[0]}|${k[1]}|${k[2]}|${k[3]}`;

let idCounter = crypto.randomInt(0, 36 ** 4);
/** set once per process: ids made by two processes (or before and after a restart) never collide */
const processTag = crypto.randomBytes(3).toString('base64url');
/** Time-ordered, unique message ids: 9 chars of ms time, 4 of counter, 4 of process tag. */
export function newMessageId(now = Date.now()): string {
  idCounter = (idCounter + 1) % 36 ** 4;
  return now.toString(36).padStart(9, '0') + idCounter.toString(36).padStart(4, '0') + processTag;
}

export class Spool {
  private readonly messages: Database<MessageRecord, string>;
  private readonly bodies: Database<Buffer, string | [string, number]>;
  private readonly recipients: Database<StoredRecipient, [string, number]>;
  private readonly schedule: Database<ScheduleEntry, ScheduleKey>;
  private readonly attempts: Database<AttemptDetails, [string, string, number]>;
  /** depth of every scheduled queue, updated as each change commits (one pass over the index at start) */
  readonly queues = new ScheduledQueues();

  /** called inside the transaction that records a final failure, so what it writes commits with it */
  onFinalFailure: ((tx: Tx, failure: FinalFailure) => void) | null = null;
  private readonly accepting = new Set<string>();

  constructor(private readonly store: Store, private readonly retry: RetryPolicy) {
    this.messages = store.db('spool.messages');
    this.bodies = store.db('spool.bodies', { encoding: 'binary' });
    this.recipients = store.db('spool.recipients');
    // an entry for a message to many recipients at one domain lists them all: compressed when over 1 KB
    this.schedule = store.db('spool.schedule', { compressed: true });
    this.attempts = store.db('spool.attempts');
    for (const job of this.due(null, Number.MAX_SAFE_INTEGER)) this.queues.add(job);
  }

  /**
   * Stores a message for its recipients and resolves once it is durable (fsynced): only then may the client
   * be told 250. Concurrent calls share one transaction and one fsync.
   */
  async accept(input: AcceptInput): Promise<{ msgId: string; jobs: Job[] }> {
    const now = Date.now();
    const msgId = input.msgId ?? newMessageId(now);
    this.accepting.add(msgId);
    try {
      return await this.acceptIn(input, msgId, now);
    } finally {
      this.accepting.delete(msgId);
    }
  }

  private async acceptIn(input: AcceptInput, msgId: string, now: number): Promise<{ msgId: string; jobs: Job[] }> {
    const campaign = input.campaign ?? '-';
    const groups = new Map<string, JobRecipient[]>();
    input.recipients.forEach((to, i) => {
      const d = domainOf(to);
      const list = groups.get(d);
      if (list) list.push({ i, to, attempts: 0 });
      else groups.set(d, [{ i, to, attempts: 0 }]);
    });
    const jobs: Job[] = [];
    for (const [domain, rcpts] of groups) {
      jobs.push({
        key: [now, msgId, domain, rcpts[0]!.i],
        msgId,
        domain,
        tenant: input.tenant,
        campaign,
        sender: input.sender,
        createdAt: now,
        size: input.body.byteLength,
        rcpts,
      });
    }
    await this.store.transact((tx) => {
      tx.event('accepted', {
        at: now, // the event's time is the state change's time
        queue_id: msgId,
        message_id: input.messageId,
        tenant: input.tenant,
        campaign,
        sender: input.sender,
        recipients: input.recipients,
        size: input.body.byteLength,
        listener: input.listener,
        client: input.client,
        user: input.user,
        ...(input.tags?.length ? { tags: input.tags } : {}),
        ...(input.metadata && Object.keys(input.metadata).length ? { metadata: input.metadata } : {}),
      });
      for (const s of input.suppressed ?? [])
        tx.event('suppressed', { at: now, queue_id: msgId, tenant: input.tenant, campaign, rcpt: s.to, reason: s.reason, detail: s.detail });
      // every recipient suppressed: the events say what happened, there is nothing to keep
      if (!jobs.length) return;
      this.messages.put(msgId, {
        tenant: input.tenant,
        campaign,
        sender: input.sender,
        size: input.body.byteLength,
        createdAt: now,
        messageId: input.messageId,
        recipients: input.recipients.length,
        pending: input.recipients.length,
        ...(input.bodies ? { personal: true as const } : {}),
      });
      if (input.bodies) input.bodies.forEach((b, i) => this.bodies.put([msgId, i], Buffer.from(b.buffer, b.byteOffset, b.byteLength)));
      else this.bodies.put(msgId, Buffer.from(input.body.buffer, input.body.byteOffset, input.body.byteLength));
      for (const job of jobs) {
        for (const r of job.rcpts) this.recipients.put([msgId, r.i], { to: r.to, status: 'queued', attempts: 0, nextAt: now });
        this.schedule.put(job.key, entryOf(job));
      }
    });
    for (const job of jobs) this.queues.add(job);
    await this.store.durable();
    return { msgId, jobs };
  }

  body(msgId: string): Buffer | undefined {
    return this.bodies.getBinary(msgId) ?? undefined;
  }

  /** Recipient `i`'s own copy of a personalised message (see `body()` for the others). */
  personalBody(msgId: string, i: number): Buffer | undefined {
    return this.bodies.getBinary([msgId, i]) ?? undefined;
  }

  message(msgId: string): MessageRecord | undefined {
    return this.messages.get(msgId);
  }

  recipientStates(msgId: string): Array<RecipientRecord & { i: number }> {
    const out: Array<RecipientRecord & { i: number }> = [];
    const meta = this.messages.get(msgId);
    for (const { key, value } of this.recipients.getRange({ start: [msgId, 0], end: [msgId, Number.MAX_SAFE_INTEGER] }))
      out.push({ i: key[1], ...this.view(msgId, value, meta) });
    return out;
  }

  /** One recipient's state record. */
  recipientState(msgId: string, i: number): RecipientRecord | undefined {
    const rec = this.recipients.get([msgId, i]);
    return rec && this.view(msgId, rec, this.messages.get(msgId));
  }

  /** A stored recipient record with what it leaves out derived again (see StoredRecipient). */
  private view(msgId: string, rec: StoredRecipient, meta: MessageRecord | undefined): RecipientRecord {
    const { queue, updatedAt, last, history, ...state } = rec;
    const domain = domainOf(rec.to);
    const steps = history?.map((step) => this.resolve(msgId, domain, step));
    return {
      ...state,
      ...(steps ? { history: steps } : {}),
      last: last !== undefined ? last : (steps?.at(-1)?.response ?? null),
      queue: queue ?? queueName(meta?.tenant ?? '?', meta?.campaign ?? '-', domain),
      updatedAt: updatedAt ?? steps?.at(-1)?.at ?? meta?.createdAt ?? 0,
    };
  }

  /** A history step as it happened: a shared step gets its reply, MX and source back. */
  private resolve(msgId: string, domain: string, step: HistoryEntry): HistoryEntry {
    if (!step.shared) return step;
    const { shared: _, ...rest } = step;
    return { ...rest, ...this.attempts.get([msgId, domain, step.at]) };
  }

  /** The last reply a stored record stands for (see StoredRecipient). */
  private lastOf(msgId: string, rec: StoredRecipient): string | null {
    if (rec.last !== undefined) return rec.last;
    const step = rec.history?.at(-1);
    if (!step) return null;
    return (step.shared ? this.resolve(msgId, domainOf(rec.to), step) : step).response ?? null;
  }

  /**
   * Notes a report that came back about a recipient (DSN, complaint, auto-reply) in its history; a bounce
   * also becomes its last reply. Its status stays what the delivery attempt made it. Call it inside
   * `store.transact`, next to the report's event.
   */
  noteReportIn(msgId: string, i: number, step: { at: number; type: 'bounced' | 'dsn_delayed' | 'complained' | 'autoreply'; response?: string; mx?: string }): boolean {
    const rec = this.recipients.get([msgId, i]);
    if (!rec) return false;
    const history = withStep(rec.history, { ...step, attempt: rec.attempts });
    this.recipients.put([msgId, i], compact({ ...rec, last: step.type === 'bounced' && step.response ? step.response : this.lastOf(msgId, rec), history }, step.response ?? null));
    return true;
  }

  /** Scheduled entries due by `until`, in due order, starting after `after` (exclusive). */
  *due(after: ScheduleKey | null, until: number): Generator<Job> {
    // typed bounds (and the guard) keep the shared-structures entry, a Symbol key, out of the scan
    const range = this.schedule.getRange({ start: after ?? [0], end: [until + 1], snapshot: false });
    for (const { key, value } of range) {
      if (!Array.isArray(key)) continue;
      if (after && key[0] === after[0] && key[1] === after[1] && key[2] === after[2] && key[3] === after[3]) continue;
      yield { key, msgId: key[1], domain: key[2], ...value };
    }
  }

  /** Number of scheduled entries and the due time of the first (for metrics and idle waits). */
  nextDue(after = -1): number | null {
    for (const first of this.schedule.getKeys({ start: [after + 1], limit: 1 })) if (Array.isArray(first)) return first[0];
    return null;
  }

  /** True while a message is being accepted: committed, perhaps, but its accept() has not returned. */
  isAccepting(msgId: string): boolean {
    return this.accepting.has(msgId);
  }

  scheduledCount(): number {
    return this.schedule.getCount({ start: [0] });
  }

  /**
   * Records the outcome of an attempt for a job's recipients. Delivered and failed are final; deferred ones
   * are rescheduled by the retry policy or expire. Returns the rescheduled job, if any.
   */
  async complete(job: Job, outcomes: Outcome[], extra: Record<string, unknown> = {}): Promise<Job | null> {
    const next = await this.store.transact((tx) => this.completeIn(tx, job, outcomes, extra, true));
    this.queues.remove(job);
    if (next) this.queues.add(next);
    return next;
  }

  /**
   * `attempted` false: the outcomes are an operator's decision, not the result of a delivery attempt, so the
   * attempt count stays.
   */
  private completeIn(tx: Tx, job: Job, outcomes: Outcome[], extra: Record<string, unknown>, attempted: boolean): Job | null {
    const now = Date.now();
    const shared = this.shareDetails(job, outcomes, now);
    const byIndex = new Map(outcomes.map((o) => [o.i, o]));
    const again: JobRecipient[] = [];
    const untried: JobRecipient[] = [];
    const finals: number[] = [];
    let decision: ReturnType<typeof nextAttempt> | null = null;
    for (const r of job.rcpts) {
      const o = byIndex.get(r.i);
      if (!o) {
        again.push(r); // not attempted (e.g. the connection went away first): keep it, attempt not counted
        untried.push(r);
        continue;
      }
      const attempts = r.attempts + (attempted ? 1 : 0);
      let status: RecipientStatus;
      let type: string;
      let nextAt: number | null = null;
      if (o.result === 'deferred') {
        decision ??= nextAttempt(this.retry, attempts, job.createdAt, now);
        if (decision.expire) {
          status = 'expired';
          type = 'expired';
        } else {
          status = 'queued';
          type = 'deferred';
          nextAt = decision.at;
          again.push({ i: r.i, to: r.to, attempts });
        }
      } else {
        status = o.result;
        type = o.result;
      }
      if (status !== 'queued') finals.push(r.i);
      // a recipient that ran out of time is a soft bounce of its own kind, whatever the last reply said
      const category = status === 'expired' ? 'expired' : o.result === 'delivered' ? undefined : o.category;
      const hard = status === 'expired' ? false : o.hard;
      if ((status === 'failed' || status === 'expired') && this.onFinalFailure)
        this.onFinalFailure(tx, { tenant: job.tenant, campaign: job.campaign, rcpt: r.to, queue_id: job.msgId, status, category: category ?? null, hard: hard ?? false, action: status === 'expired' ? 'count' : (o.action ?? 'none') });
      const step: HistoryEntry = shared?.has(r.i) ? { at: now, type: type as HistoryEntry['type'], attempt: attempts, shared: true } : { at: now, type: type as HistoryEntry['type'], attempt: attempts, response: o.response, mx: o.mx, source: o.source };
      if (extra.by === 'operator') step.by = 'operator';
      const history = withStep(this.recipients.get([job.msgId, r.i])?.history, step);
      this.recipients.put([job.msgId, r.i], compact({ to: r.to, status, attempts, nextAt, last: o.response, history }, o.response));
      tx.event(type, {
        at: now,
        queue_id: job.msgId,
        tenant: job.tenant,
        campaign: job.campaign,
        rcpt: r.to,
        attempts,
        response: o.response,
        mx: o.mx,
        source: o.source,
        next_at: nextAt ?? undefined,
        ...(category ? { category, hard } : {}),
        ...extra,
      });
    }
    this.schedule.remove(job.key);
    if (finals.length) {
      const meta = this.messages.get(job.msgId);
      if (meta) {
        meta.pending -= finals.length;
        this.messages.put(job.msgId, meta);
        if (meta.personal) for (const i of finals) this.bodies.remove([job.msgId, i]);
        else if (meta.pending <= 0) this.bodies.remove(job.msgId);
      }
    }
    if (!again.length) return null;
    const dueAt = decision && !decision.expire ? decision.at : now;
    const next: Job = { ...job, key: [dueAt, job.msgId, job.domain, again[0]!.i], rcpts: again };
    this.schedule.put(next.key, entryOf(next));
    // keep "one entry per message and domain, due at its recipients' nextAt" (see the top of this file)
    for (const r of untried) {
      const rec = this.recipients.get([job.msgId, r.i]);
      if (rec) this.recipients.put([job.msgId, r.i], { ...rec, nextAt: dueAt });
    }
    return next;
  }

  /**
   * Stores the reply, MX and source that most of a job's recipients got in this attempt once, when at least
   * two got the same (see spool.attempts). Returns the indices of the recipients whose steps refer to it.
   */
  private shareDetails(job: Job, outcomes: Outcome[], now: number): Set<number> | null {
    if (outcomes.length < 2) return null;
    const groups = new Map<string, Outcome[]>();
    for (const o of outcomes) {
      const k = `${o.response}\u0000${o.mx ?? ''}\u0000${o.source ?? ''}`;
      const g = groups.get(k);
      if (g) g.push(o);
      else groups.set(k, [o]);
    }
    let best: Outcome[] = [];
    for (const g of groups.values()) if (g.length > best.length) best = g;
    if (best.length < 2) return null;
    const key: [string, string, number] = [job.msgId, job.domain, now];
    if (this.attempts.get(key)) return null; // another result for this message and domain in the same millisecond: steps keep their own
    const { response, mx, source } = best[0]!;
    this.attempts.put(key, { response, ...(mx !== undefined ? { mx } : {}), ...(source !== undefined ? { source } : {}) });
    return new Set(best.map((o) => o.i));
  }

  /** Scheduled entries due exactly between `from` and `until` (inclusive), in due order. */
  *dueBetween(from: number, until: number): Generator<Job> {
    for (const { key, value } of this.schedule.getRange({ start: [from], end: [until + 1], snapshot: false })) {
      if (!Array.isArray(key)) continue;
      yield { key, msgId: key[1], domain: key[2], ...value };
    }
  }

  /** Drops a schedule entry whose message is already finished (its body is gone). */
  async discard(job: Job): Promise<void> {
    await this.store.transact(() => this.schedule.remove(job.key));
    this.queues.remove(job);
  }

  /**
   * An operator's "fail": every recipient of `jobs` gets a final `failed` result with `response`, without an
   * attempt being counted, with its `failed` event, in one transaction.
   */
  async fail(jobs: Job[], response: string): Promise<void> {
    if (!jobs.length) return;
    await this.store.transact((tx) => {
      for (const job of jobs) this.completeIn(tx, job, job.rcpts.map((r) => ({ i: r.i, result: 'failed', response })), { by: 'operator' }, false);
    });
    for (const job of jobs) this.queues.remove(job);
  }

  /** An operator's "retry now": `jobs` become due at `at`, attempts unchanged. Returns them with their new keys. */
  async reschedule(jobs: Job[], at: number, step: Pick<HistoryEntry, 'type' | 'by'> = { type: 'retried', by: 'operator' }): Promise<Job[]> {
    const moved = jobs.map((job): Job => ({ ...job, key: [at, job.msgId, job.domain, job.key[3]] }));
    if (!jobs.length) return moved;
    const now = Math.min(at, Date.now());
    await this.store.transact(() => {
      jobs.forEach((job, n) => {
        this.schedule.remove(job.key);
        this.schedule.put(moved[n]!.key, entryOf(moved[n]!));
        for (const r of job.rcpts) {
          const rec = this.recipients.get([job.msgId, r.i]);
          if (!rec) continue;
          const history = withStep(rec.history, { at: now, attempt: rec.attempts, ...step });
          this.recipients.put([job.msgId, r.i], compact({ ...rec, last: this.lastOf(job.msgId, rec), nextAt: at, history }, null));
        }
      });
    });
    for (const job of jobs) this.queues.remove(job);
    for (const job of moved) this.queues.add(job);
    return moved;
  }

  /** The schedule entries of one message: one per domain that still has queued recipients. */
  jobsOf(msgId: string): Job[] {
    const groups = new Map<string, { dueAt: number; domain: string; first: number; count: number }>();
    for (const r of this.recipientStates(msgId)) {
      if (r.status !== 'queued' || r.nextAt === null) continue;
      const domain = domainOf(r.to);
      const g = groups.get(domain);
      if (g) g.count++;
      else groups.set(domain, { dueAt: r.nextAt, domain, first: r.i, count: 1 });
    }
    const jobs: Job[] = [];
    for (const g of groups.values()) {
      const key: ScheduleKey = [g.dueAt, msgId, g.domain, g.first];
      const entry = this.schedule.get(key);
      if (entry) jobs.push({ key, msgId, domain: g.domain, ...entry });
    }
    if (jobs.length === groups.size) return jobs;
    // records written before the invariant held: look the entries up the slow way
    return [...this.due(null, Number.MAX_SAFE_INTEGER)].filter((job) => job.msgId === msgId);
  }

  /** Deletes finished messages (and their recipient records) created before `before`. */
  async pruneFinished(before: number, batch = 5000, budgetMs = 5000): Promise<number> {
    // messages still pending are passed over (not a wall: the ones behind them are pruned too), in batches,
    // for at most `budgetMs` per call, so a busy node keeps up (the cron calls this every 10 minutes)
    const until = Date.now() + budgetMs;
    let removed = 0;
    let after: string | null = null;
    for (;;) {
      const done: string[] = [];
      let seen = 0;
      let reachedNew = false;
      for (const { key, value } of this.messages.getRange({ start: after ?? '', limit: batch + 1, snapshot: false })) {
        if (typeof key !== 'string' || key === after) continue;
        if (value.createdAt >= before) {
          reachedNew = true;
          break;
        }
        seen++;
        after = key;
        if (value.pending <= 0) done.push(key);
        if (seen >= batch) break;
      }
      if (done.length)
        await this.store.root.transaction(() => {
          for (const id of done) {
            this.messages.remove(id);
            for (const k of this.recipients.getKeys({ start: [id, 0], end: [id, Number.MAX_SAFE_INTEGER] })) this.recipients.remove(k);
            for (const k of this.attempts.getKeys({ start: [id], end: [id, '\uffff'] })) this.attempts.remove(k);
          }
        });
      removed += done.length;
      if (reachedNew || seen < batch || Date.now() > until) return removed;
      await new Promise((r) => setImmediate(r));
    }
  }
}

function withStep(history: HistoryEntry[] | undefined, step: HistoryEntry): HistoryEntry[] {
  for (const k of Object.keys(step) as Array<keyof HistoryEntry>) if (step[k] === undefined) delete step[k];
  const out = history ? [...history, step] : [step];
  return out.length > HISTORY_LIMIT ? out.slice(out.length - HISTORY_LIMIT) : out;
}

function entryOf(job: Job): ScheduleEntry {
  return { tenant: job.tenant, campaign: job.campaign, sender: job.sender, createdAt: job.createdAt, size: job.size, rcpts: job.rcpts };
}
