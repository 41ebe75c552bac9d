/**
 * The embedded LMDB store and its events outbox. Modules open their own sub-databases through `Store.db()`
 * and change state through `Store.transact()`, which writes the events of the change in the same LMDB
 * transaction and publishes them only once that transaction is committed.
 *
 * Outbox records, keyed by event number: one event (`{at, type, ...fields}`), or a run of events of one
 * transaction that differ only in `rcpt` (a message's recipients at one site deferred or delivered together),
 * stored once as `{...the shared fields, [RCPTS]: [rcpt, …]}` under the number of the run's LAST event, so
 * that a range read from any number finds the record that holds it. 100 recipients deferred together take
 * one record instead of 100 (the spool of a node with a million deferred recipients is ~40 % smaller).
 * `events()` gives them back one by one; nothing outside this file sees the difference.
 */
import fs from 'node:fs';
import path from 'node:path';
import { EventEmitter } from 'node:events';
import { open, type Database, type RootDatabase } from 'lmdb';

const STRUCTURES = Symbol.for('structures');
/**
 * LZ4 for values over 1 KB. A value stored without it reads back the same once it is on (lmdb-js marks a
 * compressed value by a first byte >= 250, which no msgpack record or map starts with), so a data directory
 * from before it was turned on stays readable.
 */
const COMPRESSION = { threshold: 1000 };
/** the field of a stored run that lists its events' recipients (see the top of this file) */
const RCPTS = '_rcpts';
type StoredEvent = { at: number; type: string; [field: string]: unknown };

/** Whether `b` belongs to the run that `a` starts: same type, same fields, same values, except `seq` and `rcpt`. */
function sameButRecipient(a: TernEvent, b: TernEvent): boolean {
  if (a.type !== b.type || typeof a.rcpt !== 'string' || typeof b.rcpt !== 'string') return false;
  const keys = Object.keys(a);
  if (keys.length !== Object.keys(b).length) return false;
  for (const k of keys) {
    if (k === 'rcpt' || k === 'seq') continue;
    const v = a[k];
    if (v !== b[k] || (typeof v === 'object' && v !== null)) return false; // only plain values are compared
  }
  return true;
}

/** The events a stored record holds (one, or a run), with their numbers. */
function unpack(key: number, value: StoredEvent): TernEvent[] {
  const rcpts = value[RCPTS];
  if (!Array.isArray(rcpts)) return [{ seq: key, ...value } as TernEvent];
  const { [RCPTS]: _, ...shared } = value;
  const first = key - rcpts.length + 1;
  return rcpts.map((rcpt, n) => ({ seq: first + n, ...shared, rcpt }) as TernEvent);
}

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
  private readonly outbox: Database<StoredEvent, number>;
  /** the highest event number ever written, kept when pruning empties the outbox, so numbers are never reused */
  private readonly outboxMeta: Database<number, string>;
  private seq: number;

  constructor(dataDir: string) {
    super();
    fs.mkdirSync(dataDir, { recursive: true });
    this.root = open({ path: path.join(dataDir, 'tern.lmdb'), maxDbs: 64, mapSize: 64 * 1024 ** 3 });
    // records over 1 KB (an accepted event listing many recipients, a run of them) are LZ4-compressed: a list of
    // addresses at one domain shrinks 4-6×; smaller ones, the common case, are stored as they are
    this.outbox = this.root.openDB({ name: 'events', sharedStructuresKey: STRUCTURES, compression: COMPRESSION });
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

  /**
   * Opens a sub-database; records of one shape share their field names instead of storing them each time.
   * `compressed`: values over 1 KB are LZ4-compressed (for large records that repeat themselves, such as lists
   * of addresses); it can be turned on for an existing database, never off again.
   */
  db<V = unknown, K extends import('lmdb').Key = import('lmdb').Key>(name: string, options: { encoding?: 'msgpack' | 'binary'; dupSort?: boolean; compressed?: boolean } = {}): Database<V, K> {
    const { compressed, ...rest } = options;
    const shared = rest.encoding === 'binary' ? {} : { sharedStructuresKey: STRUCTURES };
    return this.root.openDB<V, K>({ name, ...shared, ...rest, ...(compressed ? { compression: COMPRESSION } : {}) });
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
          for (const k of Object.keys(e)) if (e[k] === undefined) delete e[k]; // as msgpack would store it
          events.push(e);
          return e.seq;
        },
      };
      const out = change(tx);
      this.writeEvents(events);
      return out;
    });
    if (events.length) this.emit('events', events);
    return result as T;
  }

  /** Writes a transaction's events, runs of them (see the top of this file) as one record each. */
  private writeEvents(events: TernEvent[]): void {
    // seq only grows: `append` fills every page completely
    const put = (seq: number, value: StoredEvent) => this.outbox.put(seq, value, { append: true } as never);
    for (let i = 0; i < events.length; ) {
      const { seq, ...first } = events[i]!;
      let j = i + 1;
      while (j < events.length && sameButRecipient(events[i]!, events[j]!)) j++;
      if (j - i === 1) put(seq, first);
      else {
        const { rcpt: _, ...shared } = first;
        put(events[j - 1]!.seq, { ...shared, [RCPTS]: events.slice(i, j).map((e) => e.rcpt) });
      }
      i = j;
    }
  }

  /** Resolves when everything committed so far is fsynced; concurrent callers share one fsync. */
  durable(): Promise<void> {
    return this.root.flushed as unknown as Promise<void>;
  }

  /** Reads events after `afterSeq`, oldest first. */
  events(afterSeq = 0, limit = 1000): TernEvent[] {
    const out: TernEvent[] = [];
    // a record holds events up to its key: the first one at or after afterSeq + 1 holds the next event
    for (const { key, value } of this.outbox.getRange({ start: afterSeq + 1, snapshot: false })) {
      if (typeof key !== 'number') continue;
      for (const e of unpack(key, value)) if (e.seq > afterSeq && out.length < limit) out.push(e);
      if (out.length >= limit) break;
    }
    return out;
  }

  /** Deletes events older than `before` (epoch ms); returns how many went. */
  async pruneEvents(before: number, batch = 10_000): Promise<number> {
    let removed = 0;
    for (;;) {
      const old: number[] = [];
      let events = 0;
      for (const { key, value } of this.outbox.getRange({ start: 1, limit: batch, snapshot: false })) {
        if (typeof key !== 'number') continue; // never the shared-structures entry
        if (value.at >= before) break;
        old.push(key);
        events += Array.isArray(value[RCPTS]) ? value[RCPTS].length : 1;
      }
      if (!old.length) return removed;
      await this.root.transaction(() => {
        old.forEach((k) => this.outbox.remove(k));
        this.outboxMeta.put('last_seq', this.seq); // cursors held by readers must stay meaningful after a restart
      });
      removed += events;
      if (old.length < batch) return removed;
    }
  }

  async close(): Promise<void> {
    await this.root.flushed;
    await this.root.close();
  }
}
