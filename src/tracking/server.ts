/**
 * The tracking listener: what recipients' mail programs and browsers reach.
 *
 *   GET  /o/TOKEN   the 1×1 pixel (never cached) — records `opened`
 *   GET  /c/TOKEN   302 to the URL the token signs — records `clicked` (the trap link: 200, machine)
 *   GET  /u/TOKEN   a small page with an unsubscribe button; changes nothing (scanners follow GETs)
 *   POST /u/TOKEN   RFC 8058 one-click (or the page's button): suppresses the address at once
 *   GET  /healthz   200, for load balancers
 *
 * A malformed token gets 400, a forged or altered one (or one of another kind) 404, and nothing is recorded.
 * It is a plain node:http server rather than fastify: four routes without bodies or schemas, on the path
 * every open and click takes, where fastify's per-request machinery cost 15–25 % of the throughput of an
 * empty route on this project's benchmark machine (bench/RESULTS.md).
 */
import http from 'node:http';
import https from 'node:https';
import type { Socket } from 'node:net';
import { Counter, type Registry } from 'prom-client';
import type { Logger } from '../core/log.js';
import { NetworkList, normalizeAddress, parseCidr } from '../core/net.js';
import { judgeHit, type MachineAgents } from './agents.js';
import type { TrackingEvents } from './events.js';
import type { DecodedToken, TrackingTokens } from './tokens.js';

export interface TrackingServerOptions {
  tokens: TrackingTokens;
  agents: MachineAgents;
  events: TrackingEvents;
  /** a click sooner than this after delivery is a scanner's */
  scannerWindowMs: number;
  host: string;
  port: number;
  tls?: { key: string; cert: string };
  /** proxies whose X-Forwarded-For is believed (CIDRs) */
  trustedProxies: string[];
  /** the path of `tracking.base_url` ("/t" for https://example.com/t): taken off request paths that have it */
  basePath?: string;
  log: Logger;
  registry?: Registry;
  clock?: () => number;
}

/** A transparent 1×1 GIF (42 bytes). */
export const PIXEL = Buffer.from('R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7', 'base64');

const NO_STORE = 'no-store, no-cache, must-revalidate, private, max-age=0';
const PIXEL_HEADERS = { 'content-type': 'image/gif', 'content-length': String(PIXEL.length), 'cache-control': NO_STORE, pragma: 'no-cache', expires: '0' };
const AFTER_TRAP_MS = 60_000;
const MAX_POST_BODY = 4096;

/** Remembers recent deliveries and trap hits (only as long as they can matter), by queue id and recipient. */
class RecentTimes {
  private readonly times = new Map<string, { at: number; ip?: string }>();
  private readonly sweeper: NodeJS.Timeout;
  constructor(private readonly keepMs: number, private readonly max = 500_000) {
    this.sweeper = setInterval(() => this.sweep(), Math.max(1000, keepMs)).unref();
  }
  set(key: string, at: number, ip?: string): void {
    if (!this.keepMs || this.times.size >= this.max) return;
    this.times.set(key, { at, ip });
  }
  get(key: string, now: number): { at: number; ip?: string } | undefined {
    const t = this.times.get(key);
    return t && now - t.at < this.keepMs ? t : undefined;
  }
  private sweep(): void {
    const cutoff = Date.now() - this.keepMs;
    for (const [k, v] of this.times) if (v.at < cutoff) this.times.delete(k);
  }
  close(): void {
    clearInterval(this.sweeper);
  }
}

const html = (title: string, body: string) =>
  `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><meta name="robots" content="noindex"><title>${title}</title>` +
  `<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#222}button{font-size:1rem;padding:.6rem 1.2rem;cursor:pointer}</style></head><body>${body}</body></html>`;

export class TrackingServer {
  readonly server: http.Server;
  private readonly trusted: NetworkList;
  private readonly deliveries: RecentTimes;
  private readonly traps = new RecentTimes(AFTER_TRAP_MS);
  private readonly clock: () => number;
  private readonly requests: Counter<'kind' | 'result'>;
  private readonly counted = new Map<string, { inc(): void }>();
  private readonly sockets = new Set<Socket>();

  constructor(private readonly opts: TrackingServerOptions) {
    this.trusted = new NetworkList(opts.trustedProxies.map(parseCidr));
    this.deliveries = new RecentTimes(opts.scannerWindowMs);
    this.clock = opts.clock ?? Date.now;
    this.requests = new Counter({
      name: 'tern_tracking_requests_total',
      help: 'requests to the tracking listener: kind open, click, trap or unsubscribe; result human, machine or rejected',
      labelNames: ['kind', 'result'],
      registers: opts.registry ? [opts.registry] : [],
    });
    const handler = (req: http.IncomingMessage, res: http.ServerResponse) => this.handle(req, res);
    this.server = opts.tls ? https.createServer({ key: opts.tls.key, cert: opts.tls.cert }, handler) : http.createServer(handler);
    this.server.keepAliveTimeout = 10_000;
    this.server.on('connection', (s: Socket) => {
      this.sockets.add(s);
      s.once('close', () => this.sockets.delete(s));
    });
  }

  listen(): Promise<number> {
    const { host, port } = this.opts;
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => reject(new Error(`listeners.tracking: cannot listen on ${host}:${port}: ${err.message}`));
      this.server.once('error', onError);
      this.server.listen(port, host, () => {
        this.server.removeListener('error', onError);
        resolve((this.server.address() as { port: number }).port);
      });
    });
  }

  async close(): Promise<void> {
    this.deliveries.close();
    this.traps.close();
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      for (const s of this.sockets) s.destroy(); // idle keep-alive connections would hold close() open
    });
  }

  /** Counts a request (label children are made once: a lookup by labels on every request is measurable). */
  private count(kind: string, result: 'human' | 'machine' | 'rejected'): void {
    const key = `${kind}:${result}`;
    let child = this.counted.get(key);
    if (!child) this.counted.set(key, (child = this.requests.labels(kind, result)));
    child.inc();
  }

  /** A recipient's copy was delivered now: a click within the scanner window after this is a scanner's. */
  noteDelivered(queueId: string, rcpt: string, at: number): void {
    this.deliveries.set(`${queueId}\0${rcpt.toLowerCase()}`, at);
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    let path = q < 0 ? url : url.slice(0, q);
    const prefix = this.opts.basePath;
    if (prefix && path.startsWith(prefix + '/')) path = path.slice(prefix.length);
    const route = path.slice(0, 3);
    const method = req.method ?? 'GET';
    if (path === '/healthz') return void res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
    if ((route !== '/o/' && route !== '/c/' && route !== '/u/') || path.indexOf('/', 3) >= 0) return this.fail(res, 404, 'Not found');
    const readOnly = method === 'GET' || method === 'HEAD';
    if (!readOnly && !(route === '/u/' && method === 'POST')) {
      res.setHeader('allow', route === '/u/' ? 'GET, HEAD, POST' : 'GET, HEAD');
      return this.fail(res, 405, 'Method not allowed');
    }
    const verified = this.opts.tokens.verify(path.slice(3));
    const kindOfRoute = route === '/o/' ? 'open' : route === '/c/' ? 'click' : 'unsubscribe';
    if (!verified.ok) {
      this.count(kindOfRoute, 'rejected');
      return this.fail(res, verified.reason === 'malformed' ? 400 : 404, verified.reason === 'malformed' ? 'Bad link' : 'Unknown link');
    }
    const token = verified.token;
    const fits = route === '/o/' ? token.kind === 'open' : route === '/c/' ? token.kind === 'click' || token.kind === 'trap' : token.kind === 'unsubscribe';
    if (!fits) {
      this.count(kindOfRoute, 'rejected');
      return this.fail(res, 404, 'Unknown link');
    }
    if (token.kind === 'unsubscribe') return method === 'POST' ? this.unsubscribe(req, res, token) : this.unsubscribePage(res, method);
    this.hit(req, res, token, method);
  }

  /** An open or a click: judged, recorded in the next group commit, answered at once. */
  private hit(req: http.IncomingMessage, res: http.ServerResponse, token: DecodedToken, method: string): void {
    const now = this.clock();
    const ip = this.clientAddress(req);
    const userAgent = req.headers['user-agent'] ?? '';
    const who = `${token.msgId}\0${token.rcptIndex}`;
    const isTrap = token.kind === 'trap';
    const trapped = !isTrap && token.kind === 'click' ? this.traps.get(who, now) : undefined;
    const verdict = judgeHit(this.opts.agents, {
      kind: token.kind === 'open' ? 'open' : 'click',
      userAgent,
      ip,
      method,
      trap: isTrap,
      trapHit: trapped !== undefined && trapped.ip === ip,
      now,
      deliveredAt: this.deliveries.get(`${token.msgId}\0${token.rcpt.toLowerCase()}`, now)?.at ?? token.sentAt,
      scannerWindowMs: this.opts.scannerWindowMs,
    });
    if (isTrap) this.traps.set(who, now, ip);
    this.opts.events.record({ token, at: now, machine: verdict.machine, reason: verdict.reason, userAgent, ip });
    this.count(token.kind, verdict.machine ? 'machine' : 'human');
    if (token.kind === 'click') {
      // the destination is the signed URL, and only that: no open redirect
      res.writeHead(302, { location: token.url, 'cache-control': NO_STORE, 'referrer-policy': 'no-referrer', 'content-length': '0' }).end();
    } else if (token.kind === 'open') res.writeHead(200, PIXEL_HEADERS).end(method === 'HEAD' ? undefined : PIXEL);
    else res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': NO_STORE }).end('');
  }

  /** The unsubscribe page: a button, no state change (link scanners and prefetchers follow GETs). */
  private unsubscribePage(res: http.ServerResponse, method: string): void {
    const page = html(
      'Unsubscribe',
      `<h1>Unsubscribe</h1><p>Stop receiving these emails at this address?</p>` +
        // no action: the form posts back to the URL it was served from, whatever proxy path that went through
        `<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click"><input type="hidden" name="from" value="page">` +
        `<button type="submit">Unsubscribe</button></form>`,
    );
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': NO_STORE, 'x-robots-tag': 'noindex', 'referrer-policy': 'no-referrer' });
    res.end(method === 'HEAD' ? undefined : page);
  }

  /** RFC 8058 one-click or the page's button: suppressed and fsynced before the answer. */
  private unsubscribe(req: http.IncomingMessage, res: http.ServerResponse, token: DecodedToken): void {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size <= MAX_POST_BODY) chunks.push(c);
    });
    req.on('end', () => {
      if (size > MAX_POST_BODY) return this.fail(res, 413, 'Request too large');
      const body = new URLSearchParams(Buffer.concat(chunks).toString('latin1'));
      const method = body.get('from') === 'page' ? 'page' : 'one-click';
      this.opts.events
        .unsubscribe(token, { method, userAgent: req.headers['user-agent'] ?? '', ip: this.clientAddress(req), at: this.clock() })
        .then(
          () => {
            this.count('unsubscribe', 'human');
            res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': NO_STORE });
            res.end(html('Unsubscribed', '<h1>You are unsubscribed</h1><p>You will not receive these emails at this address any more.</p>'));
          },
          (err: Error) => {
            this.opts.log.error({ err: err.message, queue_id: token.msgId }, 'tracking: unsubscribe could not be stored');
            this.fail(res, 503, 'Please try again in a moment');
          },
        );
    });
    req.on('error', () => res.destroy());
  }

  /** The client's address: the socket's, or the last untrusted one of X-Forwarded-For behind a trusted proxy. */
  private clientAddress(req: http.IncomingMessage): string {
    let ip = normalizeAddress(req.socket.remoteAddress);
    if (!this.trusted.size || !this.trusted.contains(ip)) return ip;
    const forwarded = req.headers['x-forwarded-for'];
    if (typeof forwarded !== 'string') return ip;
    const hops = forwarded.split(',');
    for (let i = hops.length - 1; i >= 0; i--) {
      ip = normalizeAddress(hops[i]!.trim());
      if (!this.trusted.contains(ip)) return ip;
    }
    return ip;
  }

  private fail(res: http.ServerResponse, status: number, text: string): void {
    res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'cache-control': NO_STORE }).end(text + '\n');
  }
}
