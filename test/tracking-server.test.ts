/**
 * The tracking listener on its own (real sockets): TLS, proxies, a base URL with a path, methods; and a
 * node killed with SIGKILL: opens and clicks older than the group-commit window survive, an unsubscribe that
 * was answered always does.
 */
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import fc from 'fast-check';
import { Parser } from 'htmlparser2';
import { prepareMessage } from '../src/mta/prepare.js';
import { Store } from '../src/core/store.js';
import { tlsMaterial } from '../src/core/tls.js';
import { SuppressionList } from '../src/bounce/suppression.js';
import { MachineAgents } from '../src/tracking/agents.js';
import { TrackingEvents } from '../src/tracking/events.js';
import { TrackingServer } from '../src/tracking/server.js';
import { TrackingTokens } from '../src/tracking/tokens.js';
import { SHIPPED_TRACKING_AGENTS_FILE } from '../src/core/config.js';
import { newMessageId } from '../src/mta/spool.js';
import { freePort, spawnNode, tempDir, testConfigDoc, writeYaml } from './support/node.js';

const tokens = new TrackingTokens([Buffer.alloc(32, 1)]);
const who = { msgId: newMessageId(), rcptIndex: 0, rcpt: 'r@example.org', tenant: 'acme', campaign: '-', sentAt: 0 };

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

function request(url: string, opts: { method?: string; headers?: Record<string, string>; body?: string } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const lib = u.protocol === 'https:' ? https : http;
    const req = lib.request(u, { method: opts.method ?? 'GET', headers: opts.headers, rejectUnauthorized: false, agent: false }, (res) => {
      let body = '';
      res.setEncoding('latin1');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

describe('tracking listener', () => {
  let store: Store;
  let events: TrackingEvents;
  let server: TrackingServer;
  let base: string;

  beforeAll(async () => {
    const dir = tempDir();
    store = new Store(dir);
    events = new TrackingEvents(store, new SuppressionList(store, { softLimit: 5, softWindowMs: 1000 }), { flushMs: 10 });
    const tls = await tlsMaterial(dir, 'track.tern.test');
    server = new TrackingServer({
      tokens,
      agents: MachineAgents.load(SHIPPED_TRACKING_AGENTS_FILE),
      events,
      scannerWindowMs: 0,
      host: '127.0.0.1',
      port: 0,
      tls: { key: tls.key, cert: tls.cert },
      trustedProxies: ['127.0.0.0/8'],
      basePath: '/t',
      log: pino({ level: 'silent' }),
    });
    base = `https://127.0.0.1:${await server.listen()}`;
  });

  afterAll(async () => {
    await server?.close();
    await events?.close();
    await store?.close();
  });

  it('answers over TLS, under the base URL path or without it (behind a proxy that strips it)', async () => {
    const open = tokens.open(who);
    expect((await request(`${base}/t/o/${open}`)).status).toBe(200);
    expect((await request(`${base}/o/${open}`)).status).toBe(200);
    expect((await request(`${base}/healthz`)).body).toBe('ok\n');
    expect((await request(`${base}/t/o/${open}/extra`)).status).toBe(404);
  });

  it('takes the client address from X-Forwarded-For behind a trusted proxy', async () => {
    await request(`${base}/o/${tokens.open({ ...who, rcptIndex: 1 })}`, { headers: { 'x-forwarded-for': '17.1.2.3, 127.0.0.5', 'user-agent': 'Mozilla/5.0 (iPhone)' } });
    await events.flush();
    expect(store.events().find((e) => e.type === 'opened' && e.ip === '17.1.2.3')).toMatchObject({ machine: true, reason: 'apple_mpp' });
  });

  it('refuses other methods, answers HEAD without a body, and flags it', async () => {
    const click = tokens.click({ ...who, rcptIndex: 2, link: 0, url: 'https://example.com/' });
    const post = await request(`${base}/c/${click}`, { method: 'POST' });
    expect(post.status).toBe(405);
    expect(post.headers.allow).toBe('GET, HEAD');
    const head = await request(`${base}/c/${click}`, { method: 'HEAD', headers: { 'user-agent': 'Mozilla/5.0 (Windows NT 10.0) Chrome/131.0' } });
    expect(head.status).toBe(302);
    expect(head.headers.location).toBe('https://example.com/');
    await events.flush();
    expect(store.events().filter((e) => e.type === 'clicked' && e.rcpt === 'r@example.org').at(-1)).toMatchObject({ machine: true, reason: 'head_request' });
  });

  it('redirects every rewritten link, followed over HTTP, to exactly the URL its HTML means (property)', async () => {
    const part = fc.string({ unit: fc.constantFrom(...'aZ09-._~!$\'()*+,;=:@ %äé日/?#'.split(''), '&', '&amp;', '&#38;', '%2F', '%e2%82%ac', '&quot;'), maxLength: 40 });
    let followed = 0;
    await fc.assert(
      fc.asyncProperty(fc.constantFrom('https://example.com/', 'http://bücher.example:8080/', 'HTTPS://Shop.Example.org/a/'), part, async (origin, rest) => {
        const html = `<html><body><a class="b" href="${origin}${rest}">go</a></body></html>`;
        const raw = Buffer.from(`From: a@example.com\r\nTo: b@example.org\r\nContent-Type: text/html; charset=utf-8\r\n\r\n${html}\r\n`, 'utf8');
        const prepared = prepareMessage(
          { raw, hostname: 'h', id: who.msgId, utf8: true, tenant: 'acme', feedbackSenderId: 'f', tracking: { baseUrl: `${base}/t`, track: true, unsubscribeTransactional: true, trapLink: false, mailDomain: 'b.example', recipients: ['b@example.org'] } },
          () => [],
          tokens,
        );
        if (!prepared.ok) throw new Error(prepared.reason);
        // what the HTML means, read by a real parser from the original, and what was sent
        const hrefs = (doc: string) => {
          const out: string[] = [];
          const p = new Parser({ onopentag: (name, a) => name === 'a' && a.href !== undefined && out.push(a.href) }, { decodeEntities: true });
          p.end(doc);
          return out;
        };
        const [meant] = hrefs(html);
        let expected: string | null = null;
        try {
          expected = new URL(meant!.trim()).href;
        } catch {
          // not a URL at all: not tracked
        }
        const [sent] = hrefs(Buffer.from(prepared.personal?.[0] ?? prepared.message).toString('utf8'));
        if (expected === null || !sent!.startsWith(`${base}/t/c/`)) {
          expect(sent).toBe(meant);
          return;
        }
        const r = await request(sent!);
        expect(r.status).toBe(302);
        expect(r.headers.location).toBe(expected);
        followed++;
      }),
      { numRuns: 150 },
    );
    expect(followed).toBeGreaterThan(100); // the property is about links that were rewritten
  });

  it('sends the pixel with no-cache headers, and refuses an oversized unsubscribe request', async () => {
    const r = await request(`${base}/o/${tokens.open(who)}`);
    expect(r.headers).toMatchObject({ 'content-type': 'image/gif', 'cache-control': expect.stringMatching(/no-store/), pragma: 'no-cache', expires: '0' });
    const unsub = await request(`${base}/u/${tokens.unsubscribe(who)}`, { method: 'POST', body: 'x'.repeat(5000) });
    expect(unsub.status).toBe(413);
  });
});

describe('a node killed with SIGKILL', () => {
  it('keeps the hits older than the group-commit window, and every unsubscribe it answered', { timeout: 120_000 }, async () => {
    const dir = tempDir('tern-tracking-crash-');
    const ports = { submission: await freePort(), control: await freePort(), tracking: await freePort() };
    const keyFile = path.join(dir, 'tracking.key');
    const key = Buffer.alloc(32, 9);
    fs.writeFileSync(keyFile, key.toString('hex'));
    const config = writeYaml(
      path.join(dir, 'tern.yaml'),
      testConfigDoc(path.join(dir, 'data'), {
        listeners: { submission: { port: ports.submission }, control: { port: ports.control }, tracking: { port: ports.tracking } },
        tracking: { enabled: true, base_url: `http://127.0.0.1:${ports.tracking}`, keys: [keyFile], scanner_window: '0s' },
      }),
    );
    const child = await spawnNode(config, ports);
    const t = new TrackingTokens([key]);
    const msgId = newMessageId();
    const hits = 300;
    for (let i = 0; i < hits; i++) expect((await request(`http://127.0.0.1:${ports.tracking}/o/${t.open({ ...who, msgId, rcptIndex: i })}`)).status).toBe(200);
    await new Promise((r) => setTimeout(r, 500)); // past the window: committed and fsynced
    const late = await request(`http://127.0.0.1:${ports.tracking}/o/${t.open({ ...who, msgId, rcptIndex: hits })}`);
    expect(late.status).toBe(200);
    const unsub = await request(`http://127.0.0.1:${ports.tracking}/u/${t.unsubscribe({ ...who, msgId, rcpt: 'gone@example.org' })}`, { method: 'POST', body: 'List-Unsubscribe=One-Click' });
    expect(unsub.status).toBe(200);
    child.proc.kill('SIGKILL'); // at once: the late open may be lost, the unsubscribe may not
    await child.exited;

    const store = new Store(path.join(dir, 'data'));
    try {
      const opened = store.events(0, 10_000).filter((e) => e.type === 'opened' && e.queue_id === msgId).length;
      expect(opened).toBeGreaterThanOrEqual(hits);
      expect(store.events(0, 10_000).filter((e) => e.type === 'unsubscribed' && e.rcpt === 'gone@example.org')).toHaveLength(1);
      expect(new SuppressionList(store, { softLimit: 5, softWindowMs: 1000 }).get('acme', 'gone@example.org')).toMatchObject({ reason: 'unsubscribe' });
    } finally {
      await store.close();
    }
  });
});
