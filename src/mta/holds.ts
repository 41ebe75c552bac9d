/**
 * Operator holds: "do not send this mail until resumed (or until a time)". A hold selects mail by tenant,
 * campaign and domain (every named part must match); with a `source` it only keeps that egress source
 * from carrying the mail, which then leaves from another source of the pool, or waits.
 *
 * Holds are persisted (sub-database `queue.holds`, owned here) with their `queue_suspended` /
 * `queue_resumed` events in the same transaction, so they survive restarts; they end on their own at
 * `until`. Held mail stays in the spool untouched: no attempt is counted and no retry time consumed.
 */
import crypto from 'node:crypto';
import type { Database } from 'lmdb';
import type { Store } from '../core/store.js';

export interface Selector {
  tenant?: string;
  campaign?: string;
  domain?: string;
  source?: string;
}

export const SELECTOR_KEYS = ['tenant', 'campaign', 'domain', 'source'] as const;

export interface Hold extends Selector {
  id: string;
  reason: string;
  since: number;
  /** null: until resumed */
  until: number | null;
}

/** The parts of queued mail a selector looks at. */
export interface MailParts {
  tenant: string;
  campaign: string;
  domain: string;
}

/** Whether `sel`'s tenant, campaign and domain (those it names) all match `mail`. */
export function selects(sel: Selector, mail: MailParts): boolean {
  return (sel.tenant === undefined || sel.tenant === mail.tenant) && (sel.campaign === undefined || sel.campaign === mail.campaign) && (sel.domain === undefined || sel.domain === mail.domain);
}

/** The selector's parts, without the undefined ones (for events, logs and equality). */
export function selectorOf(x: Selector): Selector {
  const out: Selector = {};
  for (const k of SELECTOR_KEYS) if (x[k] !== undefined) out[k] = x[k];
  return out;
}

export function sameSelector(a: Selector, b: Selector): boolean {
  return SELECTOR_KEYS.every((k) => a[k] === b[k]);
}

/** "domain=example.com tenant=acme" */
export function describeSelector(sel: Selector): string {
  return SELECTOR_KEYS.filter((k) => sel[k] !== undefined).map((k) => `${k}=${sel[k]}`).join(' ');
}

export class Holds {
  private readonly db: Database<Hold, string>;
  private readonly active = new Map<string, Hold>();

  constructor(private readonly store: Store) {
    this.db = store.db('queue.holds');
    for (const { key, value } of this.db.getRange({})) if (typeof key === 'string') this.active.set(key, value);
  }

  /** Holds in force, oldest first (ended ones are left for `expire()` to record). */
  list(now = Date.now()): Hold[] {
    return [...this.active.values()].filter((h) => h.until === null || h.until > now).sort((a, b) => a.since - b.since || (a.id < b.id ? -1 : 1));
  }

  get(id: string): Hold | undefined {
    return this.active.get(id);
  }

  /**
   * The hold that keeps `mail` back: without `source`, a hold naming no source (the mail must wait);
   * with `source`, a hold naming that source (the mail may leave from another one).
   */
  blocking(mail: MailParts, source?: string, now = Date.now()): Hold | undefined {
    if (!this.active.size) return undefined;
    for (const h of this.active.values()) {
      if (h.source !== source || (h.until !== null && h.until <= now)) continue;
      if (selects(h, mail)) return h;
    }
    return undefined;
  }

  /** Whether any hold names an egress source (only then must a source choice be checked). */
  get namesSources(): boolean {
    for (const h of this.active.values()) if (h.source !== undefined) return true;
    return false;
  }

  /** Starts a hold; resolves once it is durable. */
  async add(sel: Selector, reason: string, durationMs: number | null, now = Date.now()): Promise<Hold> {
    const hold: Hold = { id: crypto.randomBytes(6).toString('hex'), ...selectorOf(sel), reason, since: now, until: durationMs === null ? null : now + durationMs };
    await this.store.transact((tx) => {
      this.db.put(hold.id, hold);
      tx.event('queue_suspended', { at: now, hold: hold.id, ...selectorOf(hold), reason, until: hold.until ?? undefined });
    });
    await this.store.durable();
    this.active.set(hold.id, hold);
    return hold;
  }

  /** Ends holds before their time (operator's decision); resolves with those that were in force. */
  async remove(ids: string[], now = Date.now()): Promise<Hold[]> {
    const gone = ids.map((id) => this.active.get(id)).filter((h): h is Hold => h !== undefined);
    if (!gone.length) return [];
    await this.store.transact((tx) => {
      for (const h of gone) {
        this.db.remove(h.id);
        tx.event('queue_resumed', { at: now, hold: h.id, ...selectorOf(h), reason: h.reason, by: 'operator' });
      }
    });
    await this.store.durable();
    for (const h of gone) this.active.delete(h.id);
    return gone;
  }

  /** Records the end of holds whose time is up; returns them. */
  async expire(now = Date.now()): Promise<Hold[]> {
    const ended = [...this.active.values()].filter((h) => h.until !== null && h.until <= now);
    if (!ended.length) return [];
    await this.store.transact((tx) => {
      for (const h of ended) {
        this.db.remove(h.id);
        tx.event('queue_resumed', { at: now, hold: h.id, ...selectorOf(h), reason: h.reason, expired: true });
      }
    });
    for (const h of ended) this.active.delete(h.id);
    return ended;
  }

  /** When the next hold ends, if any hold has an end. */
  nextExpiry(): number | null {
    let next: number | null = null;
    for (const h of this.active.values()) if (h.until !== null && (next === null || h.until < next)) next = h.until;
    return next;
  }
}
