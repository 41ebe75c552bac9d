/**
 * Recording opens, clicks and unsubscribes: events in the outbox, and a small per-recipient state that says
 * whether a hit is the first of its kind (unique) and how many there were (total).
 *
 * Opens and clicks are many and cheap: they are buffered and written in one transaction every `flushMs`
 * (50 ms), never waiting for an fsync. A `kill -9` loses at most the hits of the last flush interval plus
 * the commit that was not yet fsynced (~100 ms of tracking events); a redirect is never held back by a disk.
 * An unsubscribe is different: the suppression and its event are fsynced before the page says it is done.
 *
 *   tracking.state   [queue id, rcpt index, kind, link, machine 0|1] → {first, last, count}
 *
 * The key starts with the queue id, which starts with its creation time, so old state is pruned by range.
 */
import type { Database } from 'lmdb';
import type { Store } from '../core/store.js';
import type { SuppressionList } from '../bounce/suppression.js';
import { newMessageId } from '../mta/spool.js';
import type { DecodedToken } from './tokens.js';

export interface HitRecord {
  token: DecodedToken;
  at: number;
  machine: boolean;
  reason?: string;
  userAgent: string;
  ip: string;
}

export interface Tally {
  first: number;
  last: number;
  count: number;
}

type StateKey = [msgId: string, rcptIndex: number, kind: string, link: number, machine: 0 | 1];

export interface RecipientActivity {
  rcptIndex: number;
  kind: 'open' | 'click' | 'unsubscribe';
  link: number | null;
  machine: boolean;
  tally: Tally;
}

export interface TrackingEventsOptions {
  /** how long hits wait to be written together */
  flushMs?: number;
  /** hits kept in memory at most while the store is slow; beyond that new hits are counted as dropped */
  maxBuffered?: number;
  /** a group commit failed (its hits are lost) */
  onError?: (err: Error) => void;
}

export class TrackingEvents {
  private readonly state: Database<Tally, StateKey>;
  private buffer: HitRecord[] = [];
  private timer: NodeJS.Timeout | null = null;
  private writing: Promise<void> | null = null;
  private readonly flushMs: number;
  private readonly maxBuffered: number;
  private readonly onError: (err: Error) => void;
  /** hits not recorded because the buffer was full */
  dropped = 0;

  constructor(
    private readonly store: Store,
    private readonly suppressions: SuppressionList,
    opts: TrackingEventsOptions = {},
  ) {
    this.state = store.db('tracking.state');
    this.flushMs = opts.flushMs ?? 50;
    this.maxBuffered = opts.maxBuffered ?? 200_000;
    this.onError = opts.onError ?? (() => {});
  }

  private schedule(): void {
    this.timer ??= setTimeout(() => this.flush().catch(this.onError), this.flushMs);
  }

  /** Records an open or a click (a trap click is a click with no link) in the next group commit. */
  record(hit: HitRecord): void {
    if (this.buffer.length >= this.maxBuffered) {
      this.dropped++;
      return;
    }
    this.buffer.push(hit);
    this.schedule();
  }

  /** Writes the buffered hits now; resolves once they are committed (not fsynced). */
  async flush(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    while (this.writing) await this.writing;
    if (!this.buffer.length) return;
    const batch = this.buffer;
    this.buffer = [];
    this.writing = this.write(batch).finally(() => {
      this.writing = null;
      if (this.buffer.length) this.schedule();
    });
    await this.writing;
  }

  private async write(batch: HitRecord[]): Promise<void> {
    await this.store.transact((tx) => {
      const touched = new Map<string, Tally>();
      for (const h of batch) {
        const t = h.token;
        const kind = t.kind === 'open' ? 'open' : 'click';
        const link = t.kind === 'click' ? t.link : t.kind === 'trap' ? -1 : 0;
        const key: StateKey = [t.msgId, t.rcptIndex, kind, link, h.machine ? 1 : 0];
        const id = key.join('\0');
        const prev = touched.get(id) ?? this.state.get(key);
        const tally: Tally = { first: prev?.first ?? h.at, last: h.at, count: (prev?.count ?? 0) + 1 };
        touched.set(id, tally);
        this.state.put(key, tally);
        tx.event(kind === 'open' ? 'opened' : 'clicked', {
          at: h.at,
          tenant: t.tenant,
          campaign: t.campaign,
          queue_id: t.msgId,
          rcpt: t.rcpt,
          ...(kind === 'click' ? { url: t.kind === 'click' ? t.url : null, link: t.kind === 'click' ? t.link : null } : {}),
          machine: h.machine,
          reason: h.reason,
          unique: !prev,
          user_agent: h.userAgent,
          ip: h.ip,
        });
      }
    });
  }

  /**
   * Suppresses the token's recipient for its tenant and records `unsubscribed`; resolves once both are
   * fsynced. Returns false when the address was already suppressed (the event is recorded all the same).
   * `method`: `one-click` and `page` from the tracking listener, `mailto` from the inbound listener (a message
   * to List-Unsubscribe's mailto address; no user agent, `ip` is the sending MTA's, `mail_from` its sender).
   */
  async unsubscribe(t: DecodedToken, meta: { method: 'one-click' | 'page' | 'mailto'; userAgent: string | null; ip: string; mailFrom?: string | null; at?: number }): Promise<boolean> {
    const at = meta.at ?? Date.now();
    const added = await this.store.transact((tx) => {
      const key: StateKey = [t.msgId, t.rcptIndex, 'unsubscribe', 0, 0];
      const prev = this.state.get(key);
      this.state.put(key, { first: prev?.first ?? at, last: at, count: (prev?.count ?? 0) + 1 });
      const suppressed = this.suppressions.addIn(tx, t.tenant, t.rcpt, { reason: 'unsubscribe', detail: t.campaign === '-' ? null : t.campaign, queue_id: t.msgId, at });
      tx.event('unsubscribed', { at, tenant: t.tenant, campaign: t.campaign, queue_id: t.msgId, rcpt: t.rcpt, method: meta.method, unique: !prev, user_agent: meta.userAgent, ip: meta.ip, ...(meta.method === 'mailto' ? { mail_from: meta.mailFrom ?? '' } : {}) });
      return suppressed;
    });
    await this.store.durable();
    return added;
  }

  /** Opens, clicks and unsubscribes of one message's recipients: first, last and total of each. */
  activity(msgId: string): RecipientActivity[] {
    const out: RecipientActivity[] = [];
    for (const { key, value } of this.state.getRange({ start: [msgId], end: [msgId + '\0'] })) {
      if (!Array.isArray(key) || key[0] !== msgId) continue;
      out.push({ rcptIndex: key[1], kind: key[2] as RecipientActivity['kind'], link: key[2] === 'click' ? key[3] : null, machine: key[4] === 1, tally: value });
    }
    return out;
  }

  /** Forgets the state of messages accepted before `before` (epoch ms); returns how many entries went. */
  async prune(before: number, batch = 10_000): Promise<number> {
    const end: [string] = [newMessageId(before).slice(0, 9)];
    let removed = 0;
    for (;;) {
      const keys: StateKey[] = [];
      for (const key of this.state.getKeys({ end, limit: batch, snapshot: false })) if (Array.isArray(key)) keys.push(key);
      if (!keys.length) return removed;
      await this.store.root.transaction(() => keys.forEach((k) => this.state.remove(k)));
      removed += keys.length;
      if (keys.length < batch) return removed;
    }
  }

  async close(): Promise<void> {
    await this.flush();
  }
}
