/**
 * Reading the events outbox from a position onwards, for one subscriber (a webhook endpoint, a live stream).
 * The outbox is the only source: a follower reads events from LMDB, and the store's 'events' signal only
 * wakes it. So a subscriber that falls behind costs no memory, and one that is caught up sees each event as
 * soon as its transaction commits.
 *
 * While caught up, events that do not match are passed over without a read (the signal carries them), and
 * those that do are kept from the signal (up to BUFFERED_MAX, in order, with no gap after the position) so
 * that the next read takes them from memory instead of reading back and decoding what was just written.
 * Events are shared between followers this way: subscribers must not change them.
 */
import type { Store, TernEvent } from '../core/store.js';

export interface FollowerRead {
  events: TernEvent[];
  /** event numbers passed over that were no longer in the outbox (pruned by retention) */
  missing: number;
}

/** One 'events' listener per store hands each commit to every follower of it (there may be hundreds). */
const followers = new WeakMap<Store, Set<OutboxFollower>>();

function follow(store: Store, f: OutboxFollower): void {
  let set = followers.get(store);
  if (!set) {
    const created = new Set<OutboxFollower>();
    followers.set(store, (set = created));
    store.on('events', (events) => {
      for (const follower of created) follower.notify(events);
    });
  }
  set.add(f);
}

/** most outbox entries one read() examines, so a long stretch of other tenants' events never blocks the loop */
const SCAN_PER_READ = 5000;
/** most signalled events a follower keeps for its next read; past that (a follower far behind) it reads the outbox */
const BUFFERED_MAX = 10_000;

export class OutboxFollower {
  /** the last event number examined */
  position: number;
  private caughtUp = false;
  private signalled = false;
  private wakeUp: (() => void) | null = null;
  private closed = false;
  /** signalled events right after the position, in order (see the top of this file) */
  private buffered: TernEvent[] = [];

  constructor(
    private readonly store: Store,
    after: number,
    private readonly match: (e: TernEvent) => boolean,
  ) {
    this.position = after;
    follow(store, this);
  }

  /** Called with each committed batch of events. */
  notify(events: TernEvent[]): void {
    if (this.caughtUp && events[0]!.seq === this.position + 1 && !events.some(this.match)) {
      this.position = events.at(-1)!.seq;
      return;
    }
    const next = (this.buffered.at(-1)?.seq ?? this.position) + 1;
    if (events[0]!.seq === next && this.buffered.length + events.length <= BUFFERED_MAX) this.buffered.push(...events);
    else this.buffered = []; // a gap, or too far behind: the next read goes to the outbox
    this.caughtUp = false;
    this.signalled = true;
    this.wake();
  }

  /** Up to `limit` matching events after the position, oldest first; moves the position past what it examined. */
  read(limit: number): FollowerRead {
    this.signalled = false;
    this.caughtUp = false; // until this read reaches the end
    const out: TernEvent[] = [];
    let missing = 0;
    let scanned = 0;
    while (out.length < limit && scanned < SCAN_PER_READ) {
      const fromMemory = this.buffered.length > 0 && this.buffered[0]!.seq === this.position + 1;
      if (!fromMemory) this.buffered = [];
      const want = Math.min(1000, SCAN_PER_READ - scanned);
      const chunk = fromMemory ? this.buffered.splice(0, want) : this.store.events(this.position, want);
      scanned += chunk.length;
      for (let i = 0; i < chunk.length; i++) {
        const e = chunk[i]!;
        if (e.seq > this.position + 1 && this.position > 0) missing += e.seq - this.position - 1;
        this.position = e.seq;
        if (this.match(e) && out.push(e) >= limit) {
          if (fromMemory) this.buffered.unshift(...chunk.slice(i + 1)); // the rest waits for the next read
          break;
        }
      }
      if (!chunk.length || this.position >= this.store.lastSeq) {
        this.caughtUp = true;
        break;
      }
    }
    return { events: out, missing };
  }

  /** Goes back to just after `seq` (a reader that took fewer of the events read than it was given). */
  rewind(seq: number): void {
    this.position = seq;
    this.caughtUp = false;
    this.buffered = [];
  }

  /** True when the last read reached the end of the outbox and nothing new has arrived since. */
  get idle(): boolean {
    return this.caughtUp && !this.signalled;
  }

  /** Resolves when there may be something new to read, after `timeoutMs`, or on interrupt()/close(). */
  wait(timeoutMs = 60_000): Promise<void> {
    if (!this.idle || this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.wake(), timeoutMs);
      this.wakeUp = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  interrupt(): void {
    this.wake();
  }

  close(): void {
    this.closed = true;
    followers.get(this.store)?.delete(this);
    this.wake();
  }

  private wake(): void {
    const w = this.wakeUp;
    this.wakeUp = null;
    w?.();
  }
}
