/** A webhook receiver for tests: a real node:http server on loopback that records every request. */
import http from 'node:http';
import https from 'node:https';
import type { TLSSocket } from 'node:tls';
import type { AddressInfo } from 'node:net';

export interface ReceivedRequest {
  at: number;
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  /** the raw body, exactly as received (signatures are over these bytes) */
  body: string;
  /** what the receiver answered */
  status: number;
  /** the TLS server name (SNI) the client asked for, on an https receiver */
  servername: string | null;
}

export interface ReceivedEvent {
  id: string;
  seq: number;
  type: string;
  at: number;
  [field: string]: unknown;
}

export interface Receiver {
  port: number;
  url: string;
  requests: ReceivedRequest[];
  /** the events of the requests answered 2xx, in the order they arrived */
  events(): ReceivedEvent[];
  /** how the next requests are answered: a status (and headers), default 200 */
  answer: { status: number; headers?: Record<string, string> };
  /** stops listening and drops open connections: senders get "connection refused" */
  down(): Promise<void>;
  /** listens again on the same port */
  up(): Promise<void>;
  /** resolves once `pred` holds (checked after each request and every 50 ms) */
  waitFor(pred: (r: Receiver) => boolean, timeoutMs?: number, what?: string): Promise<void>;
  close(): Promise<void>;
}

/** `tls`: serve https with this certificate. */
export async function startReceiver(host = '127.0.0.1', port = 0, tls?: { key: string; cert: string }): Promise<Receiver> {
  let server: http.Server | null = null;
  const r: Receiver = {
    port,
    url: '',
    requests: [],
    answer: { status: 200 },
    events() {
      return r.requests.filter((q) => q.status >= 200 && q.status < 300).flatMap((q) => (JSON.parse(q.body) as { events: ReceivedEvent[] }).events);
    },
    async down() {
      if (!server) return;
      const s = server;
      server = null;
      s.closeAllConnections();
      await new Promise<void>((resolve) => s.close(() => resolve()));
    },
    async up() {
      if (server) return;
      const handle: http.RequestListener = (req, res) => {
        const chunks: Buffer[] = [];
        req.on('data', (c: Buffer) => chunks.push(c));
        req.on('end', () => {
          const { status, headers } = r.answer;
          const servername = tls ? ((req.socket as TLSSocket).servername || null) : null;
          r.requests.push({ at: Date.now(), method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks).toString('utf8'), status, servername });
          res.writeHead(status, { 'content-type': 'text/plain', ...headers });
          res.end(status >= 200 && status < 300 ? 'ok' : `answer ${status}`);
        });
      };
      const s = tls ? https.createServer(tls, handle) : http.createServer(handle);
      await new Promise<void>((resolve, reject) => {
        s.once('error', reject);
        s.listen(r.port, host, () => resolve());
      });
      r.port = (s.address() as AddressInfo).port;
      r.url = `${tls ? 'https' : 'http'}://${host}:${r.port}/hook`;
      server = s;
    },
    async waitFor(pred, timeoutMs = 20_000, what = 'the expected webhook requests') {
      const until = Date.now() + timeoutMs;
      while (!pred(r)) {
        if (Date.now() > until) throw new Error(`receiver on port ${r.port}: ${what} did not arrive in time (${r.requests.length} requests so far)`);
        await new Promise((res) => setTimeout(res, 50));
      }
    },
    close: () => r.down(),
  };
  await r.up();
  return r;
}
