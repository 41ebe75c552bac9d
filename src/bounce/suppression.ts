/**
 * Per-tenant suppression lists. An address lands here at once on a hard bounce, a complaint or an
 * unsubscribe, or after `softLimit` soft bounces within `softWindowMs`; mail to it is then dropped at
 * acceptance with a `suppressed` event. Writes happen inside the caller's transaction, next to the event
 * that caused them, so a suppression and its cause are committed together.
 *
 *   suppressions   [tenant, address] → SuppressionEntry
 *   soft_bounces   [tenant, address] → recent soft bounce times (within the window)
 */
import type { Database } from 'lmdb';
import type { Store, Tx } from '../core/store.js';

export type SuppressionReason = 'hard_bounce' | 'bounce' | 'soft_bounces' | 'complaint' | 'unsubscribe' | 'manual';

export interface SuppressionEntry {
  reason: SuppressionReason;
  /** bounce category, complaint feedback type, … */
  detail: string | null;
  /** the queue id of the message that caused it, when known */
  queue_id: string | null;
  /** the event that caused it (`bounced`, `complained`, …) and its sequence number in the outbox, when known */
  source?: { event: string; seq: number };
  at: number;
}

export interface SuppressionListOptions {
  softLimit: number;
  softWindowMs: number;
}

/** Addresses compare case-insensitively: receivers treat local parts that way in practice. */
export const normalizeRecipient = (address: string) => address.trim().toLowerCase();

export class SuppressionList {
  private readonly entries: Database<SuppressionEntry, [string, string]>;
  private readonly soft: Database<number[], [string, string]>;

  constructor(
    private readonly store: Store,
    private readonly opts: SuppressionListOptions,
  ) {
    this.entries = store.db('suppressions');
    this.soft = store.db('soft_bounces');
  }

  get(tenant: string, address: string): SuppressionEntry | undefined {
    return this.entries.get([tenant, normalizeRecipient(address)]);
  }

  /** Suppresses inside a transaction; an address already suppressed keeps its first cause. Returns true when added. */
  addIn(tx: Tx, tenant: string, address: string, entry: Omit<SuppressionEntry, 'at'> & { at?: number }): boolean {
    const key: [string, string] = [tenant, normalizeRecipient(address)];
    if (this.entries.get(key)) return false;
    const at = entry.at ?? Date.now();
    this.entries.put(key, { ...entry, at });
    this.soft.remove(key);
    tx.event('suppression_added', { at, tenant, rcpt: key[1], reason: entry.reason, detail: entry.detail, queue_id: entry.queue_id ?? undefined, source_event: entry.source?.event, source_seq: entry.source?.seq });
    return true;
  }

  /**
   * Counts a soft bounce inside a transaction; suppresses once `softLimit` fall within the window.
   * Returns true when this bounce suppressed the address.
   */
  softBounceIn(tx: Tx, tenant: string, address: string, detail: string | null, queueId: string | null, at = Date.now(), source?: SuppressionEntry['source']): boolean {
    const key: [string, string] = [tenant, normalizeRecipient(address)];
    if (this.entries.get(key)) return false;
    const recent = (this.soft.get(key) ?? []).filter((t) => t > at - this.opts.softWindowMs);
    recent.push(at);
    if (recent.length >= this.opts.softLimit) return this.addIn(tx, tenant, address, { reason: 'soft_bounces', detail, queue_id: queueId, at, source });
    this.soft.put(key, recent.slice(-this.opts.softLimit));
    return false;
  }

  async add(tenant: string, address: string, entry: Omit<SuppressionEntry, 'at'>): Promise<boolean> {
    return this.store.transact((tx) => this.addIn(tx, tenant, address, entry));
  }

  async remove(tenant: string, address: string): Promise<boolean> {
    return this.store.transact((tx) => this.removeIn(tx, tenant, address));
  }

  /** Lifts a suppression inside a transaction (the control API records its audit entry in the same one). */
  removeIn(tx: Tx, tenant: string, address: string): boolean {
    const key: [string, string] = [tenant, normalizeRecipient(address)];
    if (!this.entries.get(key)) return false;
    this.entries.remove(key);
    this.soft.remove(key);
    tx.event('suppression_removed', { tenant, rcpt: key[1] });
    return true;
  }

  /** One tenant's entries in address order, `limit` at a time after `after`. */
  list(tenant: string, after: string | null = null, limit = 100): Array<SuppressionEntry & { address: string }> {
    const out: Array<SuppressionEntry & { address: string }> = [];
    for (const { key, value } of this.entries.getRange({ start: [tenant, after ?? ''], end: [tenant, '\uffff'], snapshot: false })) {
      if (!Array.isArray(key) || (after !== null && key[1] === after)) continue;
      out.push({ address: key[1], ...value });
      if (out.length >= limit) break;
    }
    return out;
  }
}
