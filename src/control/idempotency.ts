/**
 * Idempotency keys of HTTP sending: a tenant's key remembers the first successful answer for 24 hours, so a
 * client that retries after a lost response gets that answer back instead of a second message. The same key
 * with another request body is a conflict. Failed calls are not remembered: nothing was stored, so a retry is
 * a new attempt (after a quota reset, say).
 *
 *   control.idempotency   [tenant, key] → { hash of the request, status, answer, at }
 *
 * The answer is written right after the spool commit, not in its transaction: a crash between the two can
 * make a replay send again (at least once, as everywhere in Tern), never lose mail.
 */
import crypto from 'node:crypto';
import type { Database } from 'lmdb';
import type { Store } from '../core/store.js';

export const IDEMPOTENCY_TTL_MS = 24 * 3600_000;

interface Remembered {
  hash: string;
  status: number;
  answer: unknown;
  at: number;
}

export type Replay = { kind: 'replay'; status: number; answer: unknown } | { kind: 'conflict' } | { kind: 'new' };

export const requestHash = (body: unknown) => crypto.createHash('sha256').update(JSON.stringify(body)).digest('base64url');

export class IdempotencyKeys {
  private readonly db: Database<Remembered, [string, string]>;
  /** calls under way, so that a concurrent replay waits for the first instead of sending again */
  private readonly running = new Map<string, Promise<unknown>>();

  constructor(
    private readonly store: Store,
    private readonly clock: () => number = Date.now,
  ) {
    this.db = store.db('control.idempotency');
  }

  private lookup(tenant: string, key: string, hash: string): Replay {
    const r = this.db.get([tenant, key]);
    if (!r || this.clock() - r.at > IDEMPOTENCY_TTL_MS) return { kind: 'new' };
    return r.hash === hash ? { kind: 'replay', status: r.status, answer: r.answer } : { kind: 'conflict' };
  }

  /**
   * Runs `call` once per (tenant, key) and request: a replay gets the remembered answer; a successful (2xx)
   * answer is remembered once durable.
   */
  async once(tenant: string, key: string, body: unknown, call: () => Promise<{ status: number; answer: unknown }>): Promise<Replay | { kind: 'done'; status: number; answer: unknown }> {
    const hash = requestHash(body);
    const id = `${tenant}\0${key}`;
    while (this.running.has(id)) await this.running.get(id)!.catch(() => {});
    const seen = this.lookup(tenant, key, hash);
    if (seen.kind !== 'new') return seen;
    const run = (async () => {
      const result = await call();
      if (result.status >= 200 && result.status < 300) {
        await this.db.put([tenant, key], { hash, status: result.status, answer: result.answer, at: this.clock() });
        await this.store.durable();
      }
      return result;
    })();
    this.running.set(id, run);
    try {
      const result = await run;
      return { kind: 'done', ...result };
    } finally {
      this.running.delete(id);
    }
  }

  /** Forgets keys older than the TTL; returns how many went. */
  async prune(): Promise<number> {
    const before = this.clock() - IDEMPOTENCY_TTL_MS;
    const old: Array<[string, string]> = [];
    for (const { key, value } of this.db.getRange({ snapshot: false })) if (value.at < before) old.push(key as [string, string]);
    if (old.length) await this.store.transact(() => old.forEach((k) => this.db.remove(k)));
    return old.length;
  }
}
