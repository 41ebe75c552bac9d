/** The live stream of events (Server-Sent Events) over real sockets. */
import http from 'node:http';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestNode, tempDir } from './support/node.js';
import { Store } from '../src/core/store.js';
import { EventStreams } from '../src/events/stream.js';
import { filterOf } from '../src/events/types.js';
import { publicEvent } from '../src/events/webhooks.js';
import type { TernNode } from '../src/node.js';

const ADMIN = 'admin-token-0123456789';
const HOST = 'node.tern.test';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface SseMessage {
  id?: string;
  data?: string;
  comment?: string;
}

interface SseClient {
  status: number;
  headers: http.IncomingHttpHeaders;
  messages: SseMessage[];
  /** the data of each message, parsed */
  events(): Array<{ id: string; seq: number; type: string; tenant?: string; [k: string]: unknown }>;
  waitFor(pred: (c: SseClient) => boolean, what?: string): Promise<void>;
  close(): void;
  closed: Promise<void>;
  body: string;
}

function sse(port: number, path: string, headers: Record<string, string> = { authorization: `Bearer ${ADMIN}` }): Promise<SseClient> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, headers }, (res) => {
      let buffer = '';
      let closedResolve!: () => void;
      const client: SseClient = {
        status: res.statusCode ?? 0,
        headers: res.headers,
        messages: [],
        body: '',
        events: () => client.messages.filter((m) => m.data !== undefined).map((m) => JSON.parse(m.data!)),
        async waitFor(pred, what = 'the expected events') {
          const until = Date.now() + 15_000;
          while (!pred(client)) {
            if (Date.now() > until) throw new Error(`${what} did not arrive (got ${JSON.stringify(client.messages).slice(0, 500)})`);
            await sleep(20);
          }
        },
        close: () => req.destroy(),
        closed: new Promise<void>((r) => (closedResolve = r)),
      };
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        client.body += chunk;
        buffer += chunk;
        let i;
        while ((i = buffer.indexOf('\n\n')) !== -1) {
          const block = buffer.slice(0, i);
          buffer = buffer.slice(i + 2);
          const m: SseMessage = {};
          for (const line of block.split('\n')) {
            if (line.startsWith(':')) m.comment = (m.comment ? `${m.comment}\n` : '') + line.slice(1).trim();
            else if (line.startsWith('id: ')) m.id = line.slice(4);
            else if (line.startsWith('data: ')) m.data = (m.data ? `${m.data}\n` : '') + line.slice(6);
          }
          client.messages.push(m);
        }
      });
      res.on('close', () => closedResolve());
      res.on('error', () => closedResolve());
      resolve(client);
    });
    req.on('error', reject);
  });
}

describe('GET /api/v1/events/stream', () => {
  let node: TernNode;
  const inject = (tenant: string | null, type: string, n: number) =>
    node.store.transact((tx) => tx.event(type, tenant ? { tenant, n } : { source: 'default', n }));

  beforeAll(async () => {
    node = await startTestNode({
      hostname: HOST,
      control: { admin_token: ADMIN },
      tenants: { default: { pool: 'default' }, acme: { pool: 'default' }, beta: { pool: 'default' } },
    });
  });
  afterAll(async () => {
    await node?.stop();
  });

  it('checks the credential and the query', async () => {
    const port = node.ports.control;
    const noToken = await sse(port, '/api/v1/events/stream?tenant=acme', {});
    expect(noToken.status).toBe(401);
    const cases: Array<[string, number, RegExp]> = [
      ['/api/v1/events/stream', 400, /tenant=/],
      ['/api/v1/events/stream?tenant=acme&types=delivered,deliverd', 400, /"deliverd" is not an event type/],
      ['/api/v1/events/stream?tenant=acme&types=warmup_advanced', 400, /concerns the node/],
      ['/api/v1/events/stream?tenant=acme&since=-1', 400, /whole number/],
    ];
    for (const [path, status, message] of cases) {
      const c = await sse(port, path);
      await c.closed;
      expect(c.status).toBe(status);
      expect(JSON.parse(c.body).error.message).toMatch(message);
    }
  });

  it("streams a tenant's events live, only that tenant's, each with its seq as the SSE id", async () => {
    const c = await sse(node.ports.control, '/api/v1/events/stream?tenant=acme');
    expect(c.status).toBe(200);
    expect(c.headers['content-type']).toMatch(/^text\/event-stream/);
    await c.waitFor((x) => x.messages.length > 0, 'the opening comment');
    const before = node.store.lastSeq;
    await inject('acme', 'delivered', 1);
    await inject('beta', 'delivered', 2);
    await inject(null, 'warmup_advanced', 3);
    await inject('acme', 'opened', 4);
    await c.waitFor((x) => x.events().length >= 2);
    await sleep(100);
    const expected = node.store.events(before).filter((e) => e.tenant === 'acme').map((e) => JSON.parse(JSON.stringify(publicEvent(e, HOST))));
    expect(c.events()).toEqual(expected);
    expect(c.messages.filter((m) => m.data).map((m) => Number(m.id))).toEqual(expected.map((e) => e.seq));
    c.close();
  });

  it('resumes after a reconnect with Last-Event-ID, then carries on live', async () => {
    const first = await sse(node.ports.control, '/api/v1/events/stream?tenant=acme&types=delivered,failed');
    await first.waitFor((x) => x.messages.length > 0);
    await inject('acme', 'delivered', 10);
    await first.waitFor((x) => x.events().length === 1);
    const lastId = first.messages.filter((m) => m.id).at(-1)!.id!;
    first.close();
    await first.closed;

    await inject('acme', 'failed', 11);
    await inject('acme', 'opened', 12); // not asked for
    await inject('acme', 'delivered', 13);
    const again = await sse(node.ports.control, '/api/v1/events/stream?tenant=acme&types=delivered,failed', { authorization: `Bearer ${ADMIN}`, 'last-event-id': lastId });
    await again.waitFor((x) => x.events().length === 2, 'the missed events');
    expect(again.events().map((e) => [e.type, e.n])).toEqual([['failed', 11], ['delivered', 13]]);
    await inject('acme', 'delivered', 14);
    await again.waitFor((x) => x.events().length === 3, 'the live event');
    expect(again.events().at(-1)).toMatchObject({ type: 'delivered', n: 14 });
    const seqs = again.events().map((e) => e.seq);
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
    again.close();
  });

  it('starts from ?since, and gives every tenant and node events to tenant=*', async () => {
    const from = node.store.lastSeq;
    await inject('beta', 'clicked', 20);
    await inject(null, 'warmup_held', 21);
    const c = await sse(node.ports.control, `/api/v1/events/stream?tenant=*&since=${from}`);
    await c.waitFor((x) => x.events().length === 2);
    expect(c.events().map((e) => e.type)).toEqual(['clicked', 'warmup_held']);
    c.close();
  });

  it('ends open streams when the node stops', async () => {
    const dataDir = tempDir();
    const other = await startTestNode({ control: { admin_token: ADMIN } }, { dataDir });
    const c = await sse(other.ports.control, '/api/v1/events/stream?tenant=default');
    await c.waitFor((x) => x.messages.length > 0);
    const t0 = Date.now();
    await other.stop();
    await c.closed;
    expect(Date.now() - t0).toBeLessThan(5000);
  });
});

describe('EventStreams', () => {
  let store: Store;
  let streams: EventStreams;
  let server: http.Server;
  let port: number;

  beforeAll(async () => {
    store = new Store(tempDir());
    streams = new EventStreams({ store, node: 'n', heartbeatMs: 100, drainTimeoutMs: 500 });
    server = http.createServer((req, res) => {
      const since = new URL(req.url!, 'http://x').searchParams.get('since');
      void streams.serve(res, filterOf('acme', ['*']), since === null ? null : Number(since));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    port = (server.address() as net.AddressInfo).port;
  });
  afterAll(async () => {
    streams.closeAll();
    await new Promise((r) => server.close(r));
    await store.close();
  });

  it('sends heartbeats on a quiet stream', async () => {
    const c = await sse(port, '/');
    await c.waitFor((x) => x.messages.filter((m) => m.comment === 'heartbeat').length >= 2, 'two heartbeats');
    c.close();
  });

  it('disconnects a client that stops reading', async () => {
    const padding = 'x'.repeat(2000);
    // a backlog far larger than the socket buffers
    for (let i = 0; i < 20; i++) await store.transact((tx) => { for (let j = 0; j < 500; j++) tx.event('delivered', { tenant: 'acme', padding }); });
    const socket = net.connect(port, '127.0.0.1');
    await new Promise((r) => socket.once('connect', r));
    socket.write('GET /?since=0 HTTP/1.1\r\nhost: x\r\n\r\n');
    socket.pause(); // never reads
    await sleep(200);
    expect(streams.count).toBe(1);
    // (a paused socket does not see the close until it reads: watch the server side)
    const until = Date.now() + 10_000;
    while (streams.count > 0) {
      if (Date.now() > until) throw new Error('the slow client was not disconnected');
      await sleep(50);
    }
    socket.destroy();
  });
});
