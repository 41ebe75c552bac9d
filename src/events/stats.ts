/**
 * Sending statistics: per-recipient counters kept from the events outbox by one follower with a durable
 * cursor, in LMDB aggregates per tenant, UTC day and dimension. A request reads the aggregates of its days,
 * never the outbox; rates are computed on read.
 *
 *   events.stats         [tenant, day, dimension, value] → Counts     dimension: day (value ""), domain, campaign
 *   events.stats_cursor  "cursor" → the last event counted (written in the same transaction as the counts)
 *
 * Opens and clicks count only those not flagged as a machine's (privacy proxies, link scanners); the unique
 * ones are the first human open/click of a recipient's message.
 */
import type { Database } from 'lmdb';
import type { Store, TernEvent } from '../core/store.js';
import type { Logger } from '../core/log.js';
import { OutboxFollower } from './follower.js';

export const COUNTERS = ['accepted', 'delivered', 'deferred', 'bounced', 'failed', 'complained', 'suppressed', 'opened', 'unique_opened', 'clicked', 'unique_clicked', 'unsubscribed'] as const;
export type Counter = (typeof COUNTERS)[number];
export type Counts = Partial<Record<Counter, number>>;
export type Dimension = 'day' | 'domain' | 'campaign';

const dayOf = (at: number) => new Date(at).toISOString().slice(0, 10);
const domainOf = (rcpt: string) => rcpt.slice(rcpt.lastIndexOf('@') + 1).toLowerCase();

/** What one event adds: [counter, recipient] pairs (an accepted event counts each of its recipients). */
export function countsOf(e: TernEvent): Array<[Counter, string]> {
  const rcpt = typeof e.rcpt === 'string' ? e.rcpt : '';
  switch (e.type) {
    case 'accepted':
      return Array.isArray(e.recipients) ? (e.recipients as string[]).map((r) => ['accepted', r]) : [];
    case 'delivered':
    case 'deferred':
    case 'bounced':
    case 'failed':
    case 'complained':
    case 'suppressed':
    case 'unsubscribed':
      return [[e.type, rcpt]];
    case 'expired':
      return [['failed', rcpt]];
    case 'opened':
    case 'clicked':
      if (e.machine) return [];
      return e.unique ? [[e.type, rcpt], [e.type === 'opened' ? 'unique_opened' : 'unique_clicked', rcpt]] : [[e.type, rcpt]];
    default:
      return [];
  }
}

export interface Rates {
  delivery_rate: number | null;
  bounce_rate: number | null;
  complaint_rate: number | null;
  open_rate: number | null;
  click_rate: number | null;
}

const ratio = (n: number, d: number) => (d > 0 ? Math.round((n / d) * 10_000) / 10_000 : null);

/** delivery, bounce (synchronous failures and DSNs) per accepted; complaints, unique opens and clicks per delivered */
export function ratesOf(c: Counts): Rates {
  const accepted = c.accepted ?? 0;
  const delivered = c.delivered ?? 0;
  return {
    delivery_rate: ratio(delivered, accepted),
    bounce_rate: ratio((c.bounced ?? 0) + (c.failed ?? 0), accepted),
    complaint_rate: ratio(c.complained ?? 0, delivered),
    open_rate: ratio(c.unique_opened ?? 0, delivered),
    click_rate: ratio(c.unique_clicked ?? 0, delivered),
  };
}

export function addCounts(into: Counts, from: Counts): Counts {
  for (const k of COUNTERS) if (from[k]) into[k] = (into[k] ?? 0) + from[k]!;
  return into;
}

const BATCH = 2000;
/**
 * Counting waits this long after it is woken, so that a busy node counts thousands of events in one transaction
 * rather than a few in each of hundreds (a request calls catchUp() and sees its own sends at once regardless).
 */
const GATHER_MS = 250;

export class SendingStats {
  private readonly aggregates: Database<Counts, [string, string, string, string]>;
  private readonly cursorDb: Database<number, string>;
  private follower: OutboxFollower | null = null;
  private running: Promise<void> | null = null;
  private stopped = false;

  constructor(
    private readonly store: Store,
    private readonly log?: Logger,
  ) {
    this.aggregates = store.db('events.stats');
    this.cursorDb = store.db('events.stats_cursor');
  }

  /** Follows the outbox from the durable cursor (a new node starts at the end: there is nothing to count yet). */
  start(): void {
    let cursor = this.cursorDb.get('cursor') ?? 0;
    if (cursor > this.store.lastSeq) cursor = this.store.lastSeq; // a data directory replaced under the cursor
    this.follower = new OutboxFollower(this.store, cursor, (e) => typeof e.tenant === 'string' && countsOf(e).length > 0);
    this.running = this.loop();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.follower?.close();
    await this.running?.catch(() => {});
  }

  private async loop(): Promise<void> {
    while (!this.stopped) {
      try {
        await this.catchUp();
      } catch (err) {
        this.log?.error({ err }, 'stats: counting events failed; retrying');
        await new Promise((r) => setTimeout(r, 1000));
      }
      await this.follower!.wait(60_000);
      if (!this.stopped) await new Promise((r) => setTimeout(r, GATHER_MS));
    }
  }

  private pending: Promise<void> = Promise.resolve();

  /** Counts every event committed so far (a reader calls it first to see its own latest sends). */
  catchUp(): Promise<void> {
    const next = this.pending.then(() => this.countAll());
    this.pending = next.catch(() => {});
    return next;
  }

  private async countAll(): Promise<void> {
    const f = this.follower;
    if (!f) return;
    while (!this.stopped) {
      const before = f.position;
      const { events } = f.read(BATCH);
      const position = f.position;
      if (position === before) return;
      const add = new Map<string, { key: [string, string, string, string]; counts: Counts }>();
      const bump = (key: [string, string, string, string], counter: Counter) => {
        const id = key.join('\0');
        let entry = add.get(id);
        if (!entry) add.set(id, (entry = { key, counts: {} }));
        entry.counts[counter] = (entry.counts[counter] ?? 0) + 1;
      };
      for (const e of events) {
        const tenant = e.tenant as string;
        const day = dayOf(e.at);
        const campaign = typeof e.campaign === 'string' ? e.campaign : '-';
        for (const [counter, rcpt] of countsOf(e)) {
          bump([tenant, day, 'day', ''], counter);
          bump([tenant, day, 'domain', domainOf(rcpt)], counter);
          bump([tenant, day, 'campaign', campaign], counter);
        }
      }
      await this.store.transact(() => {
        for (const { key, counts } of add.values()) this.aggregates.put(key, addCounts({ ...(this.aggregates.get(key) ?? {}) }, counts));
        this.cursorDb.put('cursor', position);
      });
      if (f.idle) return;
    }
  }

  /** Counts of `tenant` from day `from` to day `to` (YYYY-MM-DD, inclusive), by day, domain or campaign. */
  read(tenant: string, from: string, to: string, by: Dimension): Map<string, Counts> {
    const out = new Map<string, Counts>();
    const dim = by === 'day' ? 'day' : by;
    for (const { key, value } of this.aggregates.getRange({ start: [tenant, from], end: [tenant, `${to}\uffff`], snapshot: false })) {
      const [, day, d, v] = key as [string, string, string, string];
      if (d !== dim) continue;
      const group = by === 'day' ? day : v;
      out.set(group, addCounts(out.get(group) ?? {}, value));
    }
    return out;
  }
}
