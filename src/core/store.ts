/**
 * The embedded LMDB store and its events outbox. Modules open their own sub-databases through `Store.db()`
 * and change state through `Store.transact()`, which writes the events of the change in the same LMDB
 * transaction and publishes them only once that transaction is committed.
 */
import fs from 'node:fs';
import path from 'node:path';
import { EventEmitter } from 'node:events';
import { open, type Database, type RootDatabase } from 'lmdb';

const STRUCTURES = Symbol.for('structures');

export interface TernEvent {
  seq: number;
  at: number;
  type: string;
  [field: string]: unknown;
}

export interface Tx {
  /** Records an event as part of this transaction (`at` defaults to now); returns its sequence number. */
  event(type: string, fields: Record<string, unknown>): number;
}

export class Store extends EventEmitter<{ events: [TernEvent[]] }> {
  readonly root: RootDatabase;
  private readonly outbox: Database<{ at: number; type: string; [field: string]: unknown }, number>;
  /** the highest event number ever written, kept when pruning empties the outbox, so numbers are never reused */
  private readonly outboxMeta: Database<number, string>;
  private seq: number;

  constructor(dataDir: string) {
    super();
    fs.mkdirSync(dataDir, { recursive: true });
    this.root = open({ path: path.join(dataDir, 'tern.lmdb'), maxDbs: 64, mapSize: 64 * 1024 ** 3 });
    this.outbox = this.root.openDB({ name: 'events', sharedStructuresKey: STRUCTURES });
    // the last event's number (the shared-structures entry, a Symbol key, is not one)
    this.seq = 0;
    for (const last of this.outbox.getKeys({ reverse: true, limit: 2 })) {
      if (typeof last !== 'number') continue;
      this.seq = last;
      break;
    }
    this.outboxMeta = this.root.openDB({ name: 'events.meta' });
    this.seq = Math.max(this.seq, this.outboxMeta.get('last_seq') ?? 0);
  }

  /** The number of the last event written (0 before the first). */
  get lastSeq(): number {
    return this.seq;
  }

  /** Opens a sub-database; records of one shape share their field names instead of storing them each time. */
  db<V = unknown, K extends import('lmdb').Key = import('lmdb').Key>(name: string, options: { encoding?: 'msgpack' | 'binary'; dupSort?: boolean } = {}): Database<V, K> {
    const shared = options.encoding === 'binary' ? {} : { sharedStructuresKey: STRUCTURES };
    return this.root.openDB<V, K>({ name, ...shared, ...options });
  }

  /**
   * Runs `change` inside one write transaction together with the events it records. Resolves once committed
   * (visible), not once durable: call `durable()` before acknowledging anything to a client.
   */
  async transact<T>(change: (tx: Tx) => T): Promise<T> {
    const events: TernEvent[] = [];
    const result = await this.root.transaction(() => {
      const tx: Tx = {
        event: (type, fields) => {
          const e: TernEvent = { seq: ++this.seq, at: Date.now(), type, ...fields };
          events.push(e);
          const { seq, ...stored } = e;
          this.outbox.put(seq, stored, { append: true } as never); // seq only grows: pages fill completely
          return seq;
        },
      };
      return change(tx);
    });
    if (events.length) this.emit('events', events);
    return result as T;
  }

  /** Resolves when everything committed so far is fsynced; concurrent callers share one fsync. */
  durable(): Promise<void> {
    return this.root.flushed as unknown as Promise<void>;
  }

  /** Reads events after `afterSeq`, oldest first. */
  events(afterSeq = 0, limit = 1000): TernEvent[] {
    const out: TernEvent[] = [];
    for (const { key, value } of this.outbox.getRange({ start: afterSeq + 1, limit, snapshot: false })) {
      if (typeof key !== 'number') continue;
      out.push({ seq: key, ...value } as TernEvent);
    }
    return out;
  }

  /** Deletes events older than `before` (epoch ms); returns how many went. */
  async pruneEvents(before: number, batch = 10_000): Promise<number> {
    let removed = 0;
    for (;;) {
      const old: number[] = [];
      for (const { key, value } of this.outbox.getRange({ start: 1, limit: batch, snapshot: false })) {
        if (typeof key !== 'number') continue; // never the shared-structures entry
        if (value.at >= before) break;
        old.push(key);
      }
      if (!old.length) return removed;
      await this.root.transaction(() => {
        old.forEach((k) => this.outbox.remove(k));
        this.outboxMeta.put('last_seq', this.seq); // cursors held by readers must stay meaningful after a restart
      });
      removed += old.length;
      if (old.length < batch) return removed;
    }
  }

  async close(): Promise<void> {
    await this.root.flushed;
    await this.root.close();
  }
}
