/**
 * Tracking on a node: the keys that sign tokens (shared with the preparation threads), the machine-activity
 * rules, the events recorder and the tracking listener, wired from the config.
 */
import fs from 'node:fs';
import { Counter, type Registry } from 'prom-client';
import type { Config } from '../core/config.js';
import type { Logger } from '../core/log.js';
import type { Store } from '../core/store.js';
import type { SuppressionList } from '../bounce/suppression.js';
import { MachineAgents } from './agents.js';
import { TrackingEvents } from './events.js';
import { TrackingServer } from './server.js';
import { TrackingTokens, loadTrackingKeys } from './tokens.js';

/** Event types recorded for every open and click: logged at debug, not info (see node.ts). */
export const TRACKING_HITS = new Set(['opened', 'clicked']);

export interface Tracking {
  /** signing key first */
  keys: Buffer[];
  tokens: TrackingTokens;
  events: TrackingEvents;
  server: TrackingServer;
  close(): Promise<void>;
}

export function startTracking(config: Config, store: Store, suppressions: SuppressionList, log: Logger, registry?: Registry): Tracking {
  const t = config.tracking;
  const baseUrl = t.baseUrl!;
  if (!baseUrl.startsWith('https:')) log.warn({ base_url: baseUrl }, 'tracking.base_url is not https: mailbox providers ignore one-click unsubscribe (RFC 8058) without it');
  const keys = loadTrackingKeys(config.dataDir, t.keyFiles);
  const tokens = new TrackingTokens(keys);
  const events = new TrackingEvents(store, suppressions, { onError: (err) => log.error({ err: err.message }, 'tracking: events could not be written') });
  new Counter({
    name: 'tern_tracking_events_dropped_total',
    help: 'opens and clicks answered but not recorded because the store fell behind (the buffer was full)',
    registers: registry ? [registry] : [],
    collect() {
      this.reset();
      this.inc(events.dropped);
    },
  });
  const listener = t.listener;
  const basePath = new URL(baseUrl).pathname.replace(/\/+$/, '');
  const server = new TrackingServer({
    tokens,
    agents: MachineAgents.load(t.agentsFile),
    events,
    scannerWindowMs: t.scannerWindowMs,
    host: listener.host,
    port: listener.port,
    // read at start: an unreadable file stops the node with its name, not the first request
    tls: listener.tls ? { cert: fs.readFileSync(listener.tls.cert, 'utf8'), key: fs.readFileSync(listener.tls.key, 'utf8') } : undefined,
    trustedProxies: listener.trusted_proxies,
    basePath: basePath || undefined,
    log,
    registry,
  });
  // a click within the scanner window after delivery is a scanner's: remember deliveries that long
  const onEvents = (batch: Array<{ type: string; [k: string]: unknown }>) => {
    for (const e of batch) if (e.type === 'delivered') server.noteDelivered(e.queue_id as string, e.rcpt as string, e.at as number);
  };
  store.on('events', onEvents);
  return {
    keys,
    tokens,
    events,
    server,
    async close() {
      store.off('events', onEvents);
      await server.close();
      await events.close();
    },
  };
}
