/**
 * Tracking end to end over real sockets: SMTP submission → per-recipient preparation (tracked links, pixel,
 * List-Unsubscribe, DKIM) → delivery to a real sink → a real HTTP client following the links through the
 * tracking listener to a landing server → events; one-click unsubscribe → suppression.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import nodemailer from 'nodemailer';
import { simpleParser } from 'mailparser';
import { Parser } from 'htmlparser2';
import { dkimVerify } from 'mailauth/lib/dkim/verify.js';
import { startSink, type Sink } from '../bench/sink.js';
import { freePort, startTestNode, tempDir, eventsWhere, waitForEvents as waitForEventsIn } from './support/node.js';
import { generateDkimKey } from '../src/mta/dkim.js';
import { TrackingTokens } from '../src/tracking/tokens.js';
import { PIXEL } from '../src/tracking/server.js';
import type { TernNode } from '../src/node.js';
import type { TernEvent } from '../src/core/store.js';

const SAFARI = 'Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15';

let sink: Sink;
let node: TernNode;
let landing: http.Server;
let landed: string[] = [];
let L: string; // the landing server's origin
let base: string; // tracking base URL
let dkimTxt: string;

const transport = () => nodemailer.createTransport({ host: '127.0.0.1', port: node.ports.submission, auth: { user: 'tenant1', pass: 'secret-1' }, ignoreTLS: true });

const events = (pred: (e: TernEvent) => boolean) => eventsWhere(node.store, pred);
const waitForEvents = (pred: (e: TernEvent) => boolean, count?: number) => waitForEventsIn(node.store, pred, count);

/** The links of an HTML document in order, as a browser reads them (attributes decoded). */
function anchors(html: string): Array<{ href: string; attribs: Record<string, string> }> {
  const out: Array<{ href: string; attribs: Record<string, string> }> = [];
  const p = new Parser({ onopentag: (name, attribs) => name === 'a' && attribs.href !== undefined && out.push({ href: attribs.href, attribs }) }, { decodeEntities: true });
  p.write(html);
  p.end();
  return out;
}

/** The links a reader sees: not the hidden trap link. */
const visible = (html: string) => anchors(html).filter((a) => a.attribs['aria-hidden'] !== 'true');

function images(html: string): string[] {
  const out: string[] = [];
  const p = new Parser({ onopentag: (name, attribs) => name === 'img' && attribs.src && out.push(attribs.src) }, { decodeEntities: true });
  p.write(html);
  p.end();
  return out;
}

async function delivered(messageId: string, count = 1) {
  await sink.waitFor(() => (sink.idCounts.get(messageId) ?? 0) >= count, 15_000);
  return sink.messages.filter((m) => m.id === messageId);
}

beforeAll(async () => {
  sink = await startSink({ keep: true, idHeader: 'Message-ID' });
  landing = http.createServer((req, res) => {
    landed.push(req.url!);
    res.writeHead(200, { 'content-type': 'text/plain' }).end('landed');
  });
  await new Promise<void>((r) => landing.listen(0, '127.0.0.1', () => r()));
  L = `http://127.0.0.1:${(landing.address() as AddressInfo).port}`;
  const keyDir = tempDir('tern-dkim-');
  const rsa = generateDkimKey({ domain: 'sender.tern.test', selector: 'rsa1', type: 'rsa', bits: 2048, dir: keyDir });
  dkimTxt = rsa.txt;
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  node = await startTestNode({
    routes: [{ domain: '*.tern.test', host: '127.0.0.1', port: sink.port }],
    dkim: { keys: [{ domain: 'sender.tern.test', selector: 'rsa1', key_file: rsa.keyFile }] },
    listeners: { tracking: { host: '127.0.0.1', port } },
    tracking: { enabled: true, base_url: base, scanner_window: '3s' },
  });
});

afterAll(async () => {
  await node?.stop();
  await sink?.close();
  await new Promise((r) => landing?.close(r));
});

/** [the href as written in the HTML, the string it means (entities decoded)] */
const TRICKY: Array<[string, string]> = [];
function tricky() {
  TRICKY.length = 0;
  TRICKY.push(
    [`"${L}/search?q=shoes&amp;size=42&amp;color=red"`, `${L}/search?q=shoes&size=42&color=red`],
    [`'${L}/docs/page#section-2'`, `${L}/docs/page#section-2`],
    [`${L}/caf%C3%A9/menu?x=%2F%20y&amp;z=%26`, `${L}/caf%C3%A9/menu?x=%2F%20y&z=%26`],
    [`"${L}/päth/ünïcode?q=日本語&amp;r=ü#frag-é"`, `${L}/päth/ünïcode?q=日本語&r=ü#frag-é`],
    [`"${L}/UPPER?A=1&amp;amp;B=2&copy=3"`, `${L}/UPPER?A=1&amp;B=2&copy=3`],
    [`"  ${L}/spaces?x=1 "`, `${L}/spaces?x=1`],
  );
}

describe('tracked mail', () => {
  let qid: string;
  let html: string;
  let text: string;
  let raw: Buffer;

  it('rewrites every http(s) link of the HTML and text parts, adds the pixel and List-Unsubscribe, and signs the result', async () => {
    tricky();
    const body =
      `<html><head><title>t</title></head><body><p>Hello</p>` +
      TRICKY.map(([attr], i) => `<${i === 4 ? 'A HREF' : 'a href'}=${attr}>link ${i}</a>`).join(' ') +
      ` <a href="mailto:someone@example.com">mail</a> <a href="tel:+15550100">call</a> <a href="#top">top</a>` +
      ` <a href="${L}/unsubscribe?u=1">unsubscribe</a> <a data-tern-notrack href="${L}/private">private</a>` +
      `</body></html>`;
    const info = await transport().sendMail({
      from: 'Shop <news@sender.tern.test>',
      to: 'reader@sink.tern.test',
      subject: 'Tracked',
      text: `Visit ${L}/text/path?a=1&b=2 today, or <${L}/angle?x=1>.\nWrite to someone@example.com.\n`,
      html: body,
      messageId: '<tracked-1@sender.tern.test>',
    });
    qid = /queued as (\S+)/.exec(info.response)![1]!;
    const [m] = await delivered('<tracked-1@sender.tern.test>');
    raw = m!.data!;
    const verified = await dkimVerify(raw, { resolver: async (name: string) => (name === 'rsa1._domainkey.sender.tern.test' ? [[dkimTxt]] : Promise.reject(Object.assign(new Error('nx'), { code: 'ENOTFOUND' }))) });
    expect(verified.results.map((r: { status: { result: string } }) => r.status.result)).toEqual(['pass']);

    const parsed = await simpleParser(raw);
    html = String(parsed.html);
    text = parsed.text!;
    const links = anchors(html);
    const trap = links.filter((a) => a.attribs['aria-hidden'] === 'true');
    expect(trap).toHaveLength(1);
    const shown = links.filter((a) => a.attribs['aria-hidden'] !== 'true');
    expect(shown.slice(0, TRICKY.length).every((a) => a.href.startsWith(`${base}/c/`))).toBe(true);
    expect(shown.slice(TRICKY.length).map((a) => a.href)).toEqual(['mailto:someone@example.com', 'tel:+15550100', '#top', `${L}/unsubscribe?u=1`, `${L}/private`]);
    expect(images(html).filter((src) => src.startsWith(`${base}/o/`))).toHaveLength(1);
    expect(text).toContain(`${base}/c/`);
    expect(text).not.toContain(`${L}/text/path`);
    expect(text).toContain('someone@example.com');

    const headers = raw.toString('latin1').split('\r\n\r\n')[0]!.replace(/\r\n[ \t]+/g, ' ');
    expect(headers).toMatch(new RegExp(`^List-Unsubscribe: <${base}/u/[A-Za-z0-9_-]+>, <mailto:u-[a-z2-7]+@bounces\\.node\\.tern\\.test\\?subject=unsubscribe>$`, 'm'));
    expect(headers).toMatch(/^List-Unsubscribe-Post: List-Unsubscribe=One-Click$/m);
    // both signed, and over-signed: neither can be added or replaced after signing
    expect(raw.toString('latin1').split('\r\n\r\n')[0]!.replace(/\r\n[ \t]+/g, '')).toMatch(/h=[^;]*list-unsubscribe:list-unsubscribe:list-unsubscribe-post:list-unsubscribe-post:/i);
    const mailto = /<mailto:([^?>]+)/.exec(headers)![1]!;
    expect(node.tracking!.tokens.verifyMailto(mailto.toUpperCase())).toEqual({ msgId: qid, rcptIndex: 0, tenant: 'default' });
  });

  it('flags a click within the scanner window after delivery as machine activity', async () => {
    const link = visible(html)[0]!.href;
    const res = await fetch(link, { redirect: 'manual', headers: { 'user-agent': SAFARI } });
    expect(res.status).toBe(302);
    const [e] = await waitForEvents((e) => e.type === 'clicked' && e.queue_id === qid);
    expect(e).toMatchObject({ machine: true, reason: 'too_fast', link: 2, rcpt: 'reader@sink.tern.test', tenant: 'default', campaign: '-' });
  });

  it('sends every tracked link, followed with a real HTTP client, to exactly the URL the HTML means', async () => {
    const deliveredAt = events((e) => e.type === 'delivered' && e.queue_id === qid)[0]!.at;
    await new Promise((r) => setTimeout(r, Math.max(0, deliveredAt + 3100 - Date.now()))); // past the scanner window
    const tracked = visible(html).filter((a) => a.href.startsWith(`${base}/c/`));
    expect(tracked).toHaveLength(TRICKY.length);
    for (const [i, a] of tracked.entries()) {
      const expected = new URL(TRICKY[i]![1].trim()).href;
      const manual = await fetch(a.href, { redirect: 'manual', headers: { 'user-agent': SAFARI } });
      expect(manual.status).toBe(302);
      expect(manual.headers.get('location')).toBe(expected);
      landed = [];
      const followed = await fetch(a.href, { headers: { 'user-agent': SAFARI } });
      expect(await followed.text()).toBe('landed');
      const want = new URL(expected);
      expect(landed).toEqual([want.pathname + want.search]);
      expect(followed.url).toBe(want.href.replace(/#.*$/, ''));
    }
    // the text part's links too
    const textLinks = [...text.matchAll(new RegExp(`${base.replace(/[.:/]/g, '\\$&')}/c/[A-Za-z0-9_-]+`, 'g'))].map((m) => m[0]);
    expect(textLinks).toHaveLength(2);
    const locations = await Promise.all(textLinks.map(async (l) => (await fetch(l, { redirect: 'manual', headers: { 'user-agent': SAFARI } })).headers.get('location')));
    expect(locations).toEqual([`${L}/text/path?a=1&b=2`, `${L}/angle?x=1`]);

    const clicks = await waitForEvents((e) => e.type === 'clicked' && e.queue_id === qid && e.machine === false, TRICKY.length * 2 + 2);
    for (const [i] of TRICKY.entries()) {
      const mine = clicks.filter((c) => c.link === i + 2); // the text part comes first: its 2 links are 0 and 1
      expect(mine.map((c) => c.unique)).toEqual([true, false]);
      expect(mine[0]).toMatchObject({ url: new URL(TRICKY[i]![1].trim()).href, user_agent: SAFARI, ip: '127.0.0.1' });
    }
  });

  it('records opens from the pixel, unique per recipient, and flags an Apple MPP fetch as machine activity', async () => {
    const pixel = images(html).find((src) => src.startsWith(`${base}/o/`))!;
    const mpp = await fetch(pixel, { headers: { 'user-agent': 'Mozilla/5.0' } });
    expect(mpp.status).toBe(200);
    expect(mpp.headers.get('content-type')).toBe('image/gif');
    expect(mpp.headers.get('cache-control')).toMatch(/no-store/);
    expect(Buffer.from(await mpp.arrayBuffer())).toEqual(PIXEL);
    await fetch(pixel, { headers: { 'user-agent': SAFARI } });
    await fetch(pixel, { headers: { 'user-agent': SAFARI } });
    const opens = await waitForEvents((e) => e.type === 'opened' && e.queue_id === qid, 3);
    expect(opens.map((o) => [o.machine, o.reason ?? null, o.unique])).toEqual([
      [true, 'apple_mpp', true],
      [false, null, true],
      [false, null, false],
    ]);
    const activity = node.tracking!.events.activity(qid).filter((a) => a.kind === 'open');
    expect(activity.map((a) => [a.machine, a.tally.count])).toEqual([[false, 2], [true, 1]]);
  });

  it('flags a link scanner and the hidden trap link as machine activity', async () => {
    const [first] = visible(html);
    await fetch(first!.href, { redirect: 'manual', headers: { 'user-agent': 'Mozilla/5.0 (compatible; Mimecast URL Protect)' } });
    const trap = anchors(html).find((a) => a.attribs['aria-hidden'] === 'true')!;
    const res = await fetch(trap.href, { redirect: 'manual', headers: { 'user-agent': SAFARI } });
    expect(res.status).toBe(200);
    // the recipient's next click from the same address follows the trap: a scanner walking every link
    await fetch(first!.href, { redirect: 'manual', headers: { 'user-agent': SAFARI } });
    const machine = await waitForEvents((e) => e.type === 'clicked' && e.queue_id === qid && ['link_scanner', 'trap_link', 'after_trap_link'].includes(e.reason as string), 3);
    expect(machine.map((e) => [e.reason, e.machine, e.link])).toEqual([
      ['link_scanner', true, 2],
      ['trap_link', true, null],
      ['after_trap_link', true, 2],
    ]);
  });

  it('refuses tampered, forged and misplaced tokens with 4xx and records nothing', async () => {
    await node.tracking!.events.flush();
    const before = node.store.events(0, 100_000).length;
    const link = visible(html)[0]!.href;
    const token = link.slice(`${base}/c/`.length);
    const flipped = token.slice(0, 20) + (token[20] === 'A' ? 'B' : 'A') + token.slice(21);
    const forged = new TrackingTokens([Buffer.alloc(32, 7)]).click({ msgId: qid, rcptIndex: 0, rcpt: 'reader@sink.tern.test', tenant: 'default', campaign: '-', sentAt: Date.now(), link: 0, url: 'https://evil.example/' });
    const pixelToken = images(html).find((src) => src.startsWith(`${base}/o/`))!.slice(`${base}/o/`.length);
    const statuses = await Promise.all(
      [`${base}/c/${flipped}`, `${base}/c/${token.slice(0, -3)}`, `${base}/c/${forged}`, `${base}/c/${pixelToken}`, `${base}/o/${token}`, `${base}/u/${token}`, `${base}/c/not*a*token`, `${base}/x/${token}`].map(
        async (u) => (await fetch(u, { redirect: 'manual', headers: { 'user-agent': SAFARI } })).status,
      ),
    );
    expect(statuses.every((s) => s === 400 || s === 404)).toBe(true);
    expect(statuses[2]).toBe(404); // a well-formed token signed with another key
    await new Promise((r) => setTimeout(r, 150));
    await node.tracking!.events.flush();
    expect(node.store.events(0, 100_000)).toHaveLength(before);
  });

  it('shows a page on GET /u/, suppresses on the one-click POST, and drops the next message to that address', async () => {
    const headers = raw.toString('latin1').split('\r\n\r\n')[0]!.replace(/\r\n[ \t]+/g, ' ');
    const url = new RegExp(`<(${base}/u/[A-Za-z0-9_-]+)>`).exec(headers)![1]!;
    const page = await fetch(url, { headers: { 'user-agent': 'Mozilla/5.0 (compatible; Mimecast URL Protect)' } });
    expect(page.status).toBe(200);
    expect(await page.text()).toMatch(/<form method="post">/);
    expect(node.bounces.suppressions.get('default', 'reader@sink.tern.test')).toBeUndefined();

    const post = await fetch(url, { method: 'POST', body: 'List-Unsubscribe=One-Click', headers: { 'content-type': 'application/x-www-form-urlencoded', 'user-agent': 'Gmail' } });
    expect(post.status).toBe(200);
    // durable before the answer: the suppression is there already
    expect(node.bounces.suppressions.get('default', 'Reader@sink.tern.test')).toMatchObject({ reason: 'unsubscribe', queue_id: qid });
    expect(events((e) => e.type === 'unsubscribed' && e.queue_id === qid)).toEqual([expect.objectContaining({ rcpt: 'reader@sink.tern.test', method: 'one-click', unique: true, tenant: 'default' })]);

    const info = await transport().sendMail({ from: 'news@sender.tern.test', to: ['reader@sink.tern.test', 'other@sink.tern.test'], subject: 'again', html: `<a href="${L}/x">x</a>`, messageId: '<tracked-2@sender.tern.test>' });
    const next = /queued as (\S+)/.exec(info.response)![1]!;
    expect(events((e) => e.type === 'suppressed' && e.queue_id === next)).toEqual([expect.objectContaining({ rcpt: 'reader@sink.tern.test', reason: 'unsubscribe' })]);
    const copies = await delivered('<tracked-2@sender.tern.test>');
    expect(copies.flatMap((c) => c.to)).toEqual(['other@sink.tern.test']);
  });

  it('gives each recipient its own signed copy whose tokens name that recipient', async () => {
    const rcpts = ['one@sink.tern.test', 'two@sink.tern.test', 'three@sink.tern.test'];
    const info = await transport().sendMail({ from: 'news@sender.tern.test', to: rcpts, subject: 'each', html: `<p><a href="${L}/each">each</a></p>`, messageId: '<tracked-3@sender.tern.test>', headers: { 'X-Tern-Campaign': 'spring-sale' } });
    const id = /queued as (\S+)/.exec(info.response)![1]!;
    const copies = await delivered('<tracked-3@sender.tern.test>', 3);
    expect(copies).toHaveLength(3);
    for (const c of copies) {
      const parsed = await simpleParser(c.data!);
      const token = visible(String(parsed.html))[0]!.href.slice(`${base}/c/`.length);
      const decoded = node.tracking!.tokens.verify(token);
      expect(decoded).toMatchObject({ ok: true, token: { kind: 'click', msgId: id, rcptIndex: rcpts.indexOf(c.to[0]!), rcpt: c.to[0], campaign: 'spring-sale', url: `${L}/each` } });
      const verified = await dkimVerify(c.data!, { resolver: async () => [[dkimTxt]] });
      expect(verified.results.map((r: { status: { result: string } }) => r.status.result)).toEqual(['pass']);
    }
    // each recipient's copy leaves the spool with its recipient
    await waitForEvents((e) => e.type === 'delivered' && e.queue_id === id, 3);
    expect(rcpts.map((_, i) => node.spool.personalBody(id, i))).toEqual([undefined, undefined, undefined]);
  });

  it('leaves the links alone with X-Tern-Track: off, and still gives marketing mail its List-Unsubscribe', async () => {
    const info = await transport().sendMail({ from: 'news@sender.tern.test', to: 'plain@sink.tern.test', subject: 'off', html: `<a href="${L}/off">x</a>`, messageId: '<tracked-4@sender.tern.test>', headers: { 'X-Tern-Track': 'off' } });
    const [m] = await delivered('<tracked-4@sender.tern.test>');
    const text = m!.data!.toString('latin1');
    expect(text).toContain(`${L}/off`);
    expect(text).not.toContain(`${base}/`.replace(/\/$/, '/c/'));
    expect(text).toMatch(/^List-Unsubscribe: /m); // marketing mail always has it
    expect(text).not.toMatch(/^X-Tern-Track:/im);
    expect(info.response).toMatch(/^250/);
  });
});

describe('a node without tracking', () => {
  it('sends one untouched body for all recipients and has no tracking listener', async () => {
    const plain = await startTestNode({ routes: [{ domain: '*.tern.test', host: '127.0.0.1', port: sink.port }] });
    try {
      expect(plain.tracking).toBeNull();
      const info = await nodemailer
        .createTransport({ host: '127.0.0.1', port: plain.ports.submission, auth: { user: 'tenant1', pass: 'secret-1' }, ignoreTLS: true })
        .sendMail({ from: 'a@sender.tern.test', to: ['p1@sink.tern.test', 'p2@sink.tern.test'], html: `<a href="${L}/plain">x</a>`, messageId: '<untracked-1@sender.tern.test>' });
      const qid = /queued as (\S+)/.exec(info.response)![1]!;
      expect(plain.spool.body(qid)).toBeDefined();
      const copies = await delivered('<untracked-1@sender.tern.test>', 2);
      for (const c of copies) {
        expect(c.data!.toString('latin1')).toContain(`${L}/plain`);
        expect(c.data!.toString('latin1')).not.toMatch(/^List-Unsubscribe:/m);
      }
    } finally {
      await plain.stop();
    }
  });

  it('refuses a config that turns tracking on without a base URL, naming the key', async () => {
    await expect(startTestNode({ tracking: { enabled: true } })).rejects.toThrow(/tracking\.base_url: missing/);
  });
});
