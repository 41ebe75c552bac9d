/**
 * The durable spool. Each body is stored once; each recipient has its own state record; the schedule is an
 * index ordered by due time whose entries carry everything the scheduler needs (so a restart rebuilds the
 * queues from the index alone, without reading bodies).
 *
 * Sub-databases (owned here; other modules call these functions):
 *   spool.messages   msgId → MessageRecord
 *   spool.bodies     msgId → raw bytes (signed, CRLF, ready to send)
 *   spool.recipients [msgId, i] → RecipientRecord
 *   spool.schedule   [dueAt, msgId, domain, firstIndex] → ScheduleEntry   (one per message × domain group)
 */
import crypto from 'node:crypto';
import type { Database } from 'lmdb';
import type { Store, Tx } from '../core/store.js';
import { domainOf } from './address.js';
import { nextAttempt, type RetryPolicy } from './retry.js';

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
}

export interface AcceptInput {
  /** from newMessageId(); made here when absent */
  msgId?: string;
  tenant: string;
  campaign?: string;
  sender: string;
  recipients: string[];
  body: Uint8Array;
  messageId: string;
  listener: string;
  client?: string;
  user?: string;
}

export const queueName = (tenant: string, campaign: string, domain: string) => `${tenant}:${campaign}@${domain}`;
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
  private readonly bodies: Database<Buffer, string>;
  private readonly recipients: Database<RecipientRecord, [string, number]>;
  private readonly schedule: Database<ScheduleEntry, ScheduleKey>;

  constructor(private readonly store: Store, private readonly retry: RetryPolicy) {
    this.messages = store.db('spool.messages');
    this.bodies = store.db('spool.bodies', { encoding: 'binary' });
    this.recipients = store.db('spool.recipients');
    this.schedule = store.db('spool.schedule');
  }

  /**
   * Stores a message for its recipients and resolves once it is durable (fsynced): only then may the client
   * be told 250. Concurrent calls share one transaction and one fsync.
   */
  async accept(input: AcceptInput): Promise<{ msgId: string; jobs: Job[] }> {
    const now = Date.now();
    const msgId = input.msgId ?? newMessageId(now);
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
      this.messages.put(msgId, {
        tenant: input.tenant,
        campaign,
        sender: input.sender,
        size: input.body.byteLength,
        createdAt: now,
        messageId: input.messageId,
        recipients: input.recipients.length,
        pending: input.recipients.length,
      });
      this.bodies.put(msgId, Buffer.from(input.body.buffer, input.body.byteOffset, input.body.byteLength));
      for (const job of jobs) {
        const queue = queueName(job.tenant, campaign, job.domain);
        for (const r of job.rcpts)
          this.recipients.put([msgId, r.i], { to: r.to, status: 'queued', attempts: 0, nextAt: now, last: null, queue, updatedAt: now });
        this.schedule.put(job.key, entryOf(job));
      }
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
      });
    });
    await this.store.durable();
    return { msgId, jobs };
  }

  body(msgId: string): Buffer | undefined {
    return this.bodies.getBinary(msgId) ?? undefined;
  }

  message(msgId: string): MessageRecord | undefined {
    return this.messages.get(msgId);
  }

  recipientStates(msgId: string): Array<RecipientRecord & { i: number }> {
    const out: Array<RecipientRecord & { i: number }> = [];
    for (const { key, value } of this.recipients.getRange({ start: [msgId, 0], end: [msgId, Number.MAX_SAFE_INTEGER] }))
      out.push({ i: key[1], ...value });
    return out;
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
  nextDue(): number | null {
    for (const first of this.schedule.getKeys({ start: [0], limit: 1 })) if (Array.isArray(first)) return first[0];
    return null;
  }

  scheduledCount(): number {
    return this.schedule.getCount({ start: [0] });
  }

  /**
   * Records the outcome of an attempt for a job's recipients. Delivered and failed are final; deferred ones
   * are rescheduled by the retry policy or expire. Returns the rescheduled job, if any.
   */
  async complete(job: Job, outcomes: Outcome[], extra: Record<string, unknown> = {}): Promise<Job | null> {
    return this.store.transact((tx) => this.completeIn(tx, job, outcomes, extra));
  }

  private completeIn(tx: Tx, job: Job, outcomes: Outcome[], extra: Record<string, unknown>): Job | null {
    const now = Date.now();
    const byIndex = new Map(outcomes.map((o) => [o.i, o]));
    const queue = queueName(job.tenant, job.campaign, job.domain);
    const again: JobRecipient[] = [];
    let finals = 0;
    let decision: ReturnType<typeof nextAttempt> | null = null;
    for (const r of job.rcpts) {
      const o = byIndex.get(r.i);
      if (!o) {
        again.push(r); // not attempted (e.g. the connection went away first): keep it, attempt not counted
        continue;
      }
      const attempts = r.attempts + 1;
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
      if (status !== 'queued') finals++;
      this.recipients.put([job.msgId, r.i], { to: r.to, status, attempts, nextAt, last: o.response, queue, updatedAt: now });
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
        ...extra,
      });
    }
    this.schedule.remove(job.key);
    if (finals) {
      const meta = this.messages.get(job.msgId);
      if (meta) {
        meta.pending -= finals;
        this.messages.put(job.msgId, meta);
        if (meta.pending <= 0) this.bodies.remove(job.msgId);
      }
    }
    if (!again.length) return null;
    const dueAt = decision && !decision.expire ? decision.at : now;
    const next: Job = { ...job, key: [dueAt, job.msgId, job.domain, again[0]!.i], rcpts: again };
    this.schedule.put(next.key, entryOf(next));
    return next;
  }

  /** Scheduled entries due exactly between `from` and `until` (inclusive), in due order. */
  *dueBetween(from: number, until: number): Generator<Job> {
    for (const { key, value } of this.schedule.getRange({ start: [from], end: [until + 1], snapshot: false })) {
      if (!Array.isArray(key)) continue;
      yield { key, msgId: key[1], domain: key[2], ...value };
    }
  }

  /**
   * Moves a job to a new due time without counting an attempt (mail held back by the node itself, e.g.
   * waiting for a warmup day). Returns the new schedule key.
   */
  async postpone(job: Job, dueAt: number): Promise<ScheduleKey> {
    const key: ScheduleKey = [dueAt, job.msgId, job.domain, job.key[3]];
    await this.store.transact(() => {
      this.schedule.remove(job.key);
      this.schedule.put(key, entryOf(job));
      for (const r of job.rcpts) {
        const rec = this.recipients.get([job.msgId, r.i]);
        if (rec && rec.status === 'queued') this.recipients.put([job.msgId, r.i], { ...rec, nextAt: dueAt, updatedAt: Date.now() });
      }
    });
    return key;
  }

  /** Drops a schedule entry whose message is already finished (its body is gone). */
  async discard(job: Job): Promise<void> {
    await this.store.transact(() => this.schedule.remove(job.key));
  }

  /** Deletes finished messages (and their recipient records) created before `before`. */
  async pruneFinished(before: number, batch = 5000): Promise<number> {
    const done: string[] = [];
    for (const { key, value } of this.messages.getRange({ start: '', limit: batch, snapshot: false })) {
      if (typeof key !== 'string') continue;
      if (value.createdAt >= before) break;
      if (value.pending <= 0) done.push(key);
    }
    if (!done.length) return 0;
    await this.store.root.transaction(() => {
      for (const id of done) {
        this.messages.remove(id);
        for (const k of this.recipients.getKeys({ start: [id, 0], end: [id, Number.MAX_SAFE_INTEGER] })) this.recipients.remove(k);
      }
    });
    return done.length;
  }
}

function entryOf(job: Job): ScheduleEntry {
  return { tenant: job.tenant, campaign: job.campaign, sender: job.sender, createdAt: job.createdAt, size: job.size, rcpts: job.rcpts };
}
