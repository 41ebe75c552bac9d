/**
 * The live stream: a tenant's events as Server-Sent Events, for dashboards. Each client follows the outbox
 * from where it asked (`since`, or `Last-Event-ID` when its EventSource reconnects), then live. Every event is
 * sent as `id: <seq>` + `data: <the event as JSON>`, so a reconnecting client resumes without gaps.
 *
 * A client reads from the outbox at its own pace: nothing is queued for it in memory beyond one socket
 * buffer. A client that does not take what was written within `drainTimeoutMs` is disconnected (it may
 * reconnect with Last-Event-ID and carry on).
 */
import type { ServerResponse } from 'node:http';
import type { Store } from '../core/store.js';
import { OutboxFollower } from './follower.js';
import { matchesFilter, type EventFilter } from './types.js';
import { publicEvent } from './webhooks.js';

export interface StreamOptions {
  store: Store;
  /** the node's name (event ids are `<node>:<seq>`) */
  node: string;
  /** a comment line this often keeps proxies and load balancers from closing a quiet stream */
  heartbeatMs?: number;
  /** a client that leaves written data unread this long is disconnected */
  drainTimeoutMs?: number;
  maxClients?: number;
}

/** events written per socket write */
const EVENTS_PER_WRITE = 200;

export class EventStreams {
  private readonly clients = new Set<() => void>();
  private readonly heartbeatMs: number;
  private readonly drainTimeoutMs: number;
  readonly maxClients: number;

  constructor(private readonly opts: StreamOptions) {
    this.heartbeatMs = opts.heartbeatMs ?? 15_000;
    this.drainTimeoutMs = opts.drainTimeoutMs ?? 30_000;
    this.maxClients = opts.maxClients ?? 100;
  }

  get count(): number {
    return this.clients.size;
  }

  /**
   * Streams the events matching `filter` after event `after` (null: from now on) on `res` until the client
   * goes away. The caller has checked the request and the client count.
   */
  serve(res: ServerResponse, filter: EventFilter, after: number | null): Promise<void> {
    const { store, node } = this.opts;
    const start = after === null ? store.lastSeq : Math.min(after, store.lastSeq);
    const follower = new OutboxFollower(store, start, (e) => matchesFilter(filter, e));
    let open = true;
    const end = () => {
      if (!open) return;
      open = false;
      follower.close();
      res.destroy();
    };
    this.clients.add(end);
    res.on('close', end);
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      connection: 'keep-alive',
      'x-accel-buffering': 'no', // nginx: pass events through as they come
    });
    res.write(`retry: 2000\n: events after ${start}${after !== null && after > start ? ` (asked for after ${after}, past the last event)` : ''}\n\n`);
    const heartbeat = setInterval(() => open && res.write(': heartbeat\n\n'), this.heartbeatMs);

    const pump = async () => {
      while (open) {
        const { events, missing } = follower.read(EVENTS_PER_WRITE);
        if (missing) res.write(`: ${missing} events were pruned (events.retention) before they could be sent\n\n`);
        if (!events.length) {
          if (follower.idle) await follower.wait();
          else await new Promise((r) => setImmediate(r));
          continue;
        }
        const text = events.map((e) => `id: ${e.seq}\ndata: ${JSON.stringify(publicEvent(e, node))}\n\n`).join('');
        if (!res.write(text) && !(await drained(res, this.drainTimeoutMs))) end();
      }
    };
    return pump().finally(() => {
      clearInterval(heartbeat);
      this.clients.delete(end);
      end();
    });
  }

  /** Ends every stream (the control listener is closing). */
  closeAll(): void {
    for (const end of [...this.clients]) end();
  }
}

/** Resolves true once the socket buffer drained, false after `ms` or when the socket closes first. */
function drained(res: ServerResponse, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const done = (ok: boolean) => {
      clearTimeout(timer);
      res.off('drain', onDrain);
      res.off('close', onClose);
      resolve(ok);
    };
    const onDrain = () => done(true);
    const onClose = () => done(false);
    const timer = setTimeout(() => done(false), ms);
    res.on('drain', onDrain);
    res.on('close', onClose);
  });
}
