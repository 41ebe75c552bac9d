/**
 * Depth of each scheduled queue (tenant:campaign@domain), kept in memory and updated by the spool as it
 * commits each change, so that listing the queues never reads the spool. Memory grows with the number of
 * queues and of distinct minutes/10-second slots in use, not with the number of recipients.
 */
/** A scheduled queue's name, as operators see it. */
export const queueName = (tenant: string, campaign: string, domain: string) => `${tenant}:${campaign}@${domain}`;

/** What the spool tells about each change: a schedule entry of one message for one domain. */
export interface ScheduledMail {
  key: readonly [dueAt: number, ...rest: unknown[]];
  tenant: string;
  campaign: string;
  domain: string;
  createdAt: number;
  rcpts: readonly unknown[];
}

export interface ScheduledQueueStats {
  name: string;
  tenant: string;
  campaign: string;
  domain: string;
  recipients: number;
  /** one schedule entry per message and domain, so this is also the number of messages */
  messages: number;
  /** acceptance time of the oldest message, rounded down to the minute */
  oldestCreatedAt: number;
  /** earliest due time, rounded down to 10 seconds */
  nextDueAt: number;
}

const CREATED_SLOT = 60_000;
const DUE_SLOT = 10_000;

/** A multiset of times in fixed slots that answers "earliest" without keeping every value. */
export class SlottedMin {
  private readonly counts = new Map<number, number>();
  private min = Infinity;
  private stale = false;

  constructor(private readonly slotMs: number) {}

  add(t: number): void {
    const slot = Math.floor(t / this.slotMs) * this.slotMs;
    this.counts.set(slot, (this.counts.get(slot) ?? 0) + 1);
    if (!this.stale && slot < this.min) this.min = slot;
  }

  remove(t: number): void {
    const slot = Math.floor(t / this.slotMs) * this.slotMs;
    const n = this.counts.get(slot);
    if (n === undefined) return;
    if (n > 1) this.counts.set(slot, n - 1);
    else {
      this.counts.delete(slot);
      if (slot === this.min) this.stale = true;
    }
  }

  earliest(): number | null {
    if (this.stale) {
      this.min = Infinity;
      for (const slot of this.counts.keys()) if (slot < this.min) this.min = slot;
      this.stale = false;
    }
    return this.min === Infinity ? null : this.min;
  }
}

class QueueTally {
  recipients = 0;
  messages = 0;
  readonly created = new SlottedMin(CREATED_SLOT);
  readonly due = new SlottedMin(DUE_SLOT);
  constructor(readonly tenant: string, readonly campaign: string, readonly domain: string) {}
}

export class ScheduledQueues {
  private readonly queues = new Map<string, QueueTally>();
  private total = 0;

  add(mail: ScheduledMail): void {
    const name = queueName(mail.tenant, mail.campaign, mail.domain);
    let q = this.queues.get(name);
    if (!q) {
      q = new QueueTally(mail.tenant, mail.campaign, mail.domain);
      this.queues.set(name, q);
    }
    q.recipients += mail.rcpts.length;
    q.messages++;
    q.created.add(mail.createdAt);
    q.due.add(mail.key[0]);
    this.total += mail.rcpts.length;
  }

  remove(mail: ScheduledMail): void {
    const name = queueName(mail.tenant, mail.campaign, mail.domain);
    const q = this.queues.get(name);
    if (!q) return;
    q.recipients -= mail.rcpts.length;
    q.messages--;
    q.created.remove(mail.createdAt);
    q.due.remove(mail.key[0]);
    this.total -= mail.rcpts.length;
    if (q.messages <= 0) this.queues.delete(name);
  }

  /** Queued recipients over all queues. */
  get recipients(): number {
    return this.total;
  }

  get size(): number {
    return this.queues.size;
  }

  /** Every queue `keep` selects, sorted by name. */
  list(keep: (q: { tenant: string; campaign: string; domain: string }) => boolean = () => true): ScheduledQueueStats[] {
    const out: ScheduledQueueStats[] = [];
    for (const [name, q] of this.queues) {
      if (!keep(q)) continue;
      out.push({
        name,
        tenant: q.tenant,
        campaign: q.campaign,
        domain: q.domain,
        recipients: q.recipients,
        messages: q.messages,
        oldestCreatedAt: q.created.earliest()!,
        nextDueAt: q.due.earliest()!,
      });
    }
    return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }
}
