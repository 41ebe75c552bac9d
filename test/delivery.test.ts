/**
 * The delivery core over real sockets: SMTP submission → spool → MX lookup on a real DNS server → delivery
 * to a real sink from the configured source IP, DKIM-signed.
 */
import dns from 'node:dns';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import nodemailer from 'nodemailer';
import { dkimVerify } from 'mailauth/lib/dkim/verify.js';
import { startSink, type Sink } from '../bench/sink.js';
import { startDnsServer, type DnsServer } from './support/dns-server.js';
import { startTestNode, tempDir } from './support/node.js';
import { rawSmtp } from './support/smtp.js';
import { generateDkimKey } from '../src/mta/dkim.js';
import type { TernNode } from '../src/node.js';

let sink: Sink;
let dnsServer: DnsServer;
let node: TernNode;
let keyDir: string;

function transport(opts: Record<string, unknown> = {}) {
  return nodemailer.createTransport({ host: '127.0.0.1', port: node.ports.submission, auth: { user: 'tenant1', pass: 'secret-1' }, ignoreTLS: true, ...opts });
}

const waitForEvent = async (n: TernNode, pred: (e: { type: string; [k: string]: unknown }) => boolean, timeoutMs = 15_000) => {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const found = n.store.events(0, 100_000).filter(pred);
    if (found.length) return found;
    if (Date.now() > until) throw new Error('event did not appear in time');
    await new Promise((r) => setTimeout(r, 50));
  }
};

beforeAll(async () => {
  keyDir = tempDir('tern-dkim-');
  const rsa = generateDkimKey({ domain: 'sender.tern.test', selector: 'rsa1', type: 'rsa', bits: 2048, dir: keyDir });
  const ed = generateDkimKey({ domain: 'sender.tern.test', selector: 'ed1', type: 'ed25519', dir: keyDir });
  sink = await startSink({
    keep: true,
    idHeader: 'Message-ID',
    decide: (ctx) => {
      if (ctx.stage !== 'rcpt') return undefined;
      const to = ctx.to!.at(-1)!;
      if (to.startsWith('refused')) return '550 5.1.1 No such user here';
      if (to.startsWith('gone450')) return '450 4.1.1 User unknown in local recipient table';
      if (to.startsWith('soft450')) return '450 4.2.0 Mailbox busy, try again';
      return undefined;
    },
  });
  dnsServer = await startDnsServer({
    records: [
      { type: 'MX', name: 'sink.tern.test', priority: 10, exchange: 'mx.sink.tern.test' },
      { type: 'A', name: 'mx.sink.tern.test', address: '127.0.0.1' },
      // a domain whose first MX refuses connections: delivery must move on to the second
      { type: 'MX', name: 'fallback.tern.test', priority: 5, exchange: 'dead.fallback.tern.test' },
      { type: 'MX', name: 'fallback.tern.test', priority: 20, exchange: 'mx.sink.tern.test' },
      { type: 'A', name: 'dead.fallback.tern.test', address: '127.0.0.9' },
      // two domains on one MX set are one site
      { type: 'MX', name: 'alias.tern.test', priority: 10, exchange: 'mx.sink.tern.test' },
      { type: 'MX', name: 'nullmx.tern.test', priority: 0, exchange: '.' },
      { type: 'TXT', name: 'rsa1._domainkey.sender.tern.test', data: rsa.txt },
      { type: 'TXT', name: 'ed1._domainkey.sender.tern.test', data: ed.txt },
    ],
    zones: ['tern.test'],
  });
  node = await startTestNode({
    dns: { servers: [dnsServer.address] },
    delivery: { smtp_port: sink.port, mx_down_for: '1m' },
    relay: { trusted_networks: ['127.0.0.3/32'] },
    pools: { default: { sources: [{ name: 'src2', address: '127.0.0.2', ehlo: 'src2.tern.test' }] } },
    dkim: { keys: [
      { domain: 'sender.tern.test', selector: 'rsa1', key_file: rsa.keyFile },
      { domain: 'sender.tern.test', selector: 'ed1', key_file: ed.keyFile },
    ] },
  });
});

afterAll(async () => {
  await node?.stop();
  await sink?.close();
  await dnsServer?.close();
});

describe('submission with AUTH', () => {
  it('delivers exactly once, from the configured source IP, with RSA and Ed25519 signatures that verify', async () => {
    const info = await transport().sendMail({
      from: 'Alice <alice@sender.tern.test>',
      to: 'bob@sink.tern.test',
      subject: 'Hello over Tern',
      text: 'Trailing spaces   \nand\ttabs survive relaxed canonicalization.\n',
      messageId: '<auth-1@sender.tern.test>',
    });
    expect(info.response).toMatch(/^250 2\.0\.0 Ok: queued as /);
    await sink.waitFor(() => sink.idCounts.has('<auth-1@sender.tern.test>'), 15_000);
    await new Promise((r) => setTimeout(r, 300)); // a duplicate would arrive right behind
    expect(sink.idCounts.get('<auth-1@sender.tern.test>')).toBe(1);
    const msg = sink.messages.find((m) => m.id === '<auth-1@sender.tern.test>')!;
    expect(msg.remoteAddress).toBe('127.0.0.2');
    expect(msg.to).toEqual(['bob@sink.tern.test']);

    const resolver = new dns.promises.Resolver();
    resolver.setServers([dnsServer.address]);
    const verified = await dkimVerify(msg.data!, { resolver: (name: string, rr: string) => resolver.resolve(name, rr as 'TXT') });
    const results = verified.results.map((r: { selector?: string; status: { result: string } }) => `${r.selector}:${r.status.result}`);
    expect(results.sort()).toEqual(['ed1:pass', 'rsa1:pass']);
    // over-signing: h= names From once more than it occurs, and l= is never used
    const sig = msg.data!.toString('latin1').split('\r\n\r\n')[0]!.replace(/\r\n[ \t]/g, ' ');
    expect(sig).toMatch(/h=[^;]*from:from/i);
    expect(sig).not.toMatch(/;\s*l=/);

    const delivered = await waitForEvent(node, (e) => e.type === 'delivered' && e.rcpt === 'bob@sink.tern.test');
    expect(delivered[0]!.source).toBe('src2');
  });

  it('lets a client on a trusted network relay without AUTH', async () => {
    const t = nodemailer.createTransport({ host: '127.0.0.1', port: node.ports.submission, ignoreTLS: true, localAddress: '127.0.0.3' } as never);
    await t.sendMail({ from: 'ops@sender.tern.test', to: 'carol@sink.tern.test', subject: 'trusted', text: 'x', messageId: '<trusted-1@sender.tern.test>' });
    await sink.waitFor(() => sink.idCounts.get('<trusted-1@sender.tern.test>') === 1, 15_000);
  });

  it('refuses to relay for an unauthenticated client outside the trusted networks', async () => {
    const c = await rawSmtp(node.ports.submission, { localAddress: '127.0.0.4' });
    expect(await c.cmd('EHLO outsider.example')).toMatch(/^250/);
    expect(await c.cmd('MAIL FROM:<x@sender.tern.test>')).toMatch(/^250/);
    expect(await c.cmd('RCPT TO:<victim@sink.tern.test>')).toMatch(/^554 5\.7\.1 Relay access denied/);
    c.close();
  });

  it('refuses wrong credentials', async () => {
    await expect(transport({ auth: { user: 'tenant1', pass: 'wrong' } }).sendMail({ from: 'a@sender.tern.test', to: 'b@sink.tern.test', text: 'x' })).rejects.toThrow(/535/);
  });

  it('offers STARTTLS and accepts AUTH over it', async () => {
    const c = await rawSmtp(node.ports.submission);
    expect(await c.cmd('EHLO client.example')).toMatch(/STARTTLS/);
    c.close();
    const info = await transport({ requireTLS: true, ignoreTLS: false, tls: { rejectUnauthorized: false } }).sendMail({
      from: 'a@sender.tern.test', to: 'tls@sink.tern.test', text: 'over TLS', messageId: '<tls-1@sender.tern.test>',
    });
    expect(info.response).toMatch(/^250/);
    await sink.waitFor(() => sink.idCounts.get('<tls-1@sender.tern.test>') === 1, 15_000);
  });

  it('gives each recipient its own VERP envelope sender and X-Tern-Ref, on one connection', async () => {
    const before = sink.messages.length;
    const info = await transport().sendMail({
      from: 'a@sender.tern.test',
      to: ['r1@sink.tern.test', 'r2@sink.tern.test', 'r3@alias.tern.test'],
      text: 'x',
      messageId: '<batch-1@sender.tern.test>',
    });
    const qid = /queued as (\S+)/.exec(info.response)![1]!;
    await sink.waitFor(() => sink.idCounts.get('<batch-1@sender.tern.test>') === 3, 15_000);
    const copies = sink.messages.slice(before).filter((m) => m.id === '<batch-1@sender.tern.test>');
    expect(copies.map((m) => m.to)).toEqual(expect.arrayContaining([['r1@sink.tern.test'], ['r2@sink.tern.test'], ['r3@alias.tern.test']]));
    expect(new Set(copies.map((m) => m.connectionId)).size).toBe(1);
    for (const m of copies) {
      // the envelope sender is b-<token>@<bounce domain>; it and the header name this message and recipient
      expect(m.from).toMatch(/^b-[a-z2-7]+@bounces\.node\.tern\.test$/);
      const index = ['r1@sink.tern.test', 'r2@sink.tern.test', 'r3@alias.tern.test'].indexOf(m.to[0]!);
      expect(node.bounces.verp.decode(m.from)).toEqual({ msgId: qid, rcptIndex: index });
      const ref = /^X-Tern-Ref: (\S+)\r\n/.exec(m.data!.toString('latin1'))?.[1];
      expect(node.bounces.verp.decodeRef(ref!)).toEqual({ msgId: qid, rcptIndex: index });
    }
  });

  it('fails a refused recipient alone, as a classified hard bounce, and suppresses it for its tenant', async () => {
    await transport().sendMail({ from: 'a@sender.tern.test', to: ['ok1@sink.tern.test', 'refused-1@sink.tern.test'], text: 'x', messageId: '<refused-1@sender.tern.test>' });
    const failed = await waitForEvent(node, (e) => e.type === 'failed' && e.rcpt === 'refused-1@sink.tern.test');
    expect(failed[0]).toMatchObject({ category: 'userunknown', hard: true });
    expect(String(failed[0]!.response)).toMatch(/^550 5\.1\.1/);
    await waitForEvent(node, (e) => e.type === 'suppression_added' && e.rcpt === 'refused-1@sink.tern.test');
    expect(node.bounces.suppressions.get('default', 'Refused-1@sink.tern.test')).toMatchObject({ reason: 'hard_bounce', detail: 'userunknown' });
    await sink.waitFor(() => sink.idCounts.get('<refused-1@sender.tern.test>') === 1, 15_000);

    // the next message to that address drops it at acceptance; the other recipient still gets it
    const info = await transport().sendMail({ from: 'a@sender.tern.test', to: ['refused-1@sink.tern.test', 'ok2@sink.tern.test'], text: 'x', messageId: '<refused-2@sender.tern.test>' });
    const qid = /queued as (\S+)/.exec(info.response)![1]!;
    const suppressed = await waitForEvent(node, (e) => e.type === 'suppressed' && e.queue_id === qid);
    expect(suppressed[0]).toMatchObject({ rcpt: 'refused-1@sink.tern.test', reason: 'hard_bounce', detail: 'userunknown' });
    await sink.waitFor(() => sink.idCounts.get('<refused-2@sender.tern.test>') === 1, 15_000);
    expect(sink.messages.filter((m) => m.id === '<refused-2@sender.tern.test>').flatMap((m) => m.to)).toEqual(['ok2@sink.tern.test']);

    // a message for suppressed recipients only is answered 250 and stores nothing
    const only = await transport().sendMail({ from: 'a@sender.tern.test', to: 'refused-1@sink.tern.test', text: 'x' });
    const onlyId = /queued as (\S+)/.exec(only.response)![1]!;
    await waitForEvent(node, (e) => e.type === 'suppressed' && e.queue_id === onlyId);
    expect(node.spool.message(onlyId)).toBeUndefined();
  });

  it("fails at once a 4xx the operator's bounce rules call hard, instead of retrying it", async () => {
    const dir = tempDir('tern-rules-');
    const rules = path.join(dir, 'bounce-rules.yaml');
    fs.writeFileSync(rules, 'include_shipped: true\nrules:\n  - name: legacy-450-unknown\n    code: 450\n    text: user unknown\n    category: userunknown\n    hard: true\n');
    const strict = await startTestNode({ dns: { servers: [dnsServer.address] }, delivery: { smtp_port: sink.port }, bounce: { rules_file: rules } });
    try {
      await nodemailer
        .createTransport({ host: '127.0.0.1', port: strict.ports.submission, auth: { user: 'tenant1', pass: 'secret-1' }, ignoreTLS: true })
        .sendMail({ from: 'a@sender.tern.test', to: ['gone450@sink.tern.test', 'soft450@sink.tern.test'], text: 'x' });
      const failed = await waitForEvent(strict, (e) => e.type === 'failed' && e.rcpt === 'gone450@sink.tern.test');
      expect(failed[0]).toMatchObject({ category: 'userunknown', hard: true, attempts: 1 });
      // a 4xx no rule calls hard is retried as before
      const deferred = await waitForEvent(strict, (e) => e.type === 'deferred' && e.rcpt === 'soft450@sink.tern.test');
      expect(deferred[0]).toMatchObject({ hard: false });
    } finally {
      await strict.stop();
    }
  });

  it('without VERP, sends the recipients of one message on one site in one transaction', async () => {
    const plain = await startTestNode({ dns: { servers: [dnsServer.address] }, delivery: { smtp_port: sink.port }, bounce: { verp: false } });
    try {
      await nodemailer
        .createTransport({ host: '127.0.0.1', port: plain.ports.submission, auth: { user: 'tenant1', pass: 'secret-1' }, ignoreTLS: true })
        .sendMail({ from: 'a@sender.tern.test', to: ['r1@sink.tern.test', 'r2@sink.tern.test', 'r3@alias.tern.test'], text: 'x', messageId: '<batch-2@sender.tern.test>' });
      await sink.waitFor(() => sink.idCounts.has('<batch-2@sender.tern.test>'), 15_000);
      await new Promise((r) => setTimeout(r, 300));
      const copies = sink.messages.filter((m) => m.id === '<batch-2@sender.tern.test>');
      expect(copies).toHaveLength(1);
      expect(copies[0]!.from).toBe('a@sender.tern.test');
      expect(copies[0]!.to.sort()).toEqual(['r1@sink.tern.test', 'r2@sink.tern.test', 'r3@alias.tern.test']);
    } finally {
      await plain.stop();
    }
  });

  it('moves on to the next MX when the first refuses connections', async () => {
    await transport().sendMail({ from: 'a@sender.tern.test', to: 'x@fallback.tern.test', text: 'x', messageId: '<fallback-1@sender.tern.test>' });
    await sink.waitFor(() => sink.idCounts.get('<fallback-1@sender.tern.test>') === 1, 15_000);
  });

  it('fails a null-MX domain at once, without retrying', async () => {
    await transport().sendMail({ from: 'a@sender.tern.test', to: 'x@nullmx.tern.test', text: 'x' });
    const failed = await waitForEvent(node, (e) => e.type === 'failed' && e.rcpt === 'x@nullmx.tern.test');
    expect(String(failed[0]!.response)).toMatch(/^556 5\.1\.10/);
  });

  it('fails a domain that does not exist', async () => {
    await transport().sendMail({ from: 'a@sender.tern.test', to: 'x@nowhere.tern.test', text: 'x' });
    const failed = await waitForEvent(node, (e) => e.type === 'failed' && e.rcpt === 'x@nowhere.tern.test');
    expect(String(failed[0]!.response)).toMatch(/^550 5\.1\.2/);
  });
});

describe('bad input', () => {
  it('answers an oversized message with 552 and stores nothing', async () => {
    const small = await startTestNode({ listeners: { submission: { max_message_size: '10KB' } }, routes: [{ domain: '*.tern.test', host: '127.0.0.1', port: sink.port }] });
    try {
      const err = await nodemailer
        .createTransport({ host: '127.0.0.1', port: small.ports.submission, auth: { user: 'tenant1', pass: 'secret-1' }, ignoreTLS: true })
        .sendMail({ from: 'a@sender.tern.test', to: 'big@sink.tern.test', text: 'x'.repeat(50_000) })
        .catch((e: Error & { responseCode?: number }) => e);
      expect((err as { responseCode?: number }).responseCode).toBe(552);
      expect(small.store.events().filter((e) => e.type === 'accepted')).toHaveLength(0);
      expect(small.spool.scheduledCount()).toBe(0);
    } finally {
      await small.stop();
    }
  });

  it('refuses a message without From, with an invalid From, or with an invalid To', async () => {
    const c = await rawSmtp(node.ports.submission);
    await c.cmd('EHLO client.example');
    await c.cmd(`AUTH PLAIN ${Buffer.from('\0tenant1\0secret-1').toString('base64')}`);
    for (const headers of ['Subject: no from', 'From: not-an-address', 'From: a@sender.tern.test\r\nTo: bob@@sink.tern.test']) {
      expect(await c.cmd('MAIL FROM:<a@sender.tern.test>')).toMatch(/^250/);
      expect(await c.cmd('RCPT TO:<b@sink.tern.test>')).toMatch(/^250/);
      expect(await c.cmd('DATA')).toMatch(/^354/);
      c.write(`${headers}\r\n\r\nbody\r\n.\r\n`);
      expect(await c.reply()).toMatch(/^550 5\.6\.0 /);
    }
    expect(await c.cmd('RCPT TO:<not an address>')).toMatch(/^5/);
    c.close();
  });

  it('adds a missing Date and Message-ID', async () => {
    const c = await rawSmtp(node.ports.submission);
    await c.cmd('EHLO client.example');
    await c.cmd(`AUTH PLAIN ${Buffer.from('\0tenant1\0secret-1').toString('base64')}`);
    await c.cmd('MAIL FROM:<a@sender.tern.test>');
    await c.cmd('RCPT TO:<nodate@sink.tern.test>');
    await c.cmd('DATA');
    c.write('From: a@sender.tern.test\r\nTo: nodate@sink.tern.test\r\nSubject: bare\r\n\r\nhello\r\n.\r\n');
    expect(await c.reply()).toMatch(/^250/);
    c.close();
    await sink.waitFor(() => sink.messages.some((m) => m.to.includes('nodate@sink.tern.test')), 15_000);
    const raw = sink.messages.find((m) => m.to.includes('nodate@sink.tern.test'))!.data!.toString();
    expect(raw).toMatch(/\r\nDate: \w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d \+0000\r\n/);
    expect(raw).toMatch(/\r\nMessage-ID: <[0-9a-z]+[^>]*@node\.tern\.test>\r\n/);
  });

  describe('SMTP smuggling', () => {
    const variants: Record<string, string> = {
      'LF.LF': '\n.\n',
      'CR.CR': '\r.\r',
      'LF.CRLF': '\n.\r\n',
      'CRLF.LF': '\r\n.\n',
      'CR.CRLF': '\r.\r\n',
      'NUL': '\r\n\0.\r\n',
    };
    for (const [name, seq] of Object.entries(variants)) {
      it(`never turns ${name} inside DATA into a second message`, async () => {
        const tag = `smuggle-${name}`;
        const c = await rawSmtp(node.ports.submission);
        await c.cmd('EHLO client.example');
        await c.cmd(`AUTH PLAIN ${Buffer.from('\0tenant1\0secret-1').toString('base64')}`);
        await c.cmd('MAIL FROM:<a@sender.tern.test>');
        await c.cmd(`RCPT TO:<${tag}@sink.tern.test>`);
        expect(await c.cmd('DATA')).toMatch(/^354/);
        c.write(
          `From: a@sender.tern.test\r\nTo: ${tag}@sink.tern.test\r\nMessage-ID: <${tag}-outer@x>\r\n\r\nfirst${seq}` +
            `MAIL FROM:<evil@sender.tern.test>\r\nRCPT TO:<${tag}-hidden@sink.tern.test>\r\nDATA\r\nFrom: evil@sender.tern.test\r\nMessage-ID: <${tag}-hidden@x>\r\n\r\nsmuggled\r\n.\r\n`,
        );
        expect(await c.reply()).toMatch(/^554 5\.6\.0 /);
        // the smuggled commands were message content: no further replies come
        await new Promise((r) => setTimeout(r, 300));
        expect(c.pending()).toEqual([]);
        c.close();
        await new Promise((r) => setTimeout(r, 300));
        expect(sink.messages.some((m) => m.to.some((t) => t.startsWith(tag)))).toBe(false);
        expect(node.store.events(0, 100_000).some((e) => e.type === 'accepted' && JSON.stringify(e.recipients).includes(tag))).toBe(false);
      });
    }

    it('discards commands pipelined behind STARTTLS', async () => {
      const c = await rawSmtp(node.ports.submission);
      await c.cmd('EHLO client.example');
      c.write('STARTTLS\r\nMAIL FROM:<injected@sender.tern.test>\r\n');
      const reply = await c.reply();
      // either refused outright, or TLS starts and the injected command is never answered in clear
      if (/^220/.test(reply)) {
        await new Promise((r) => setTimeout(r, 300));
        expect(c.pending()).toEqual([]);
      } else expect(reply).toMatch(/^5/);
      c.close();
    });
  });

  it('refuses lines longer than 998 octets', async () => {
    const err = await transport()
      .sendMail({ from: 'a@sender.tern.test', to: 'long@sink.tern.test', raw: `From: a@sender.tern.test\r\nTo: long@sink.tern.test\r\n\r\n${'y'.repeat(1200)}\r\n` })
      .catch((e: Error & { responseCode?: number }) => e);
    expect((err as { responseCode?: number }).responseCode).toBe(554);
  });
});

describe('control listener', () => {
  it('serves /healthz and Prometheus /metrics', async () => {
    const health = await fetch(`http://127.0.0.1:${node.ports.control}/healthz`);
    expect(health.status).toBe(200);
    const metrics = await (await fetch(`http://127.0.0.1:${node.ports.control}/metrics`)).text();
    expect(metrics).toMatch(/tern_deliveries_total\{result="delivered",site="mx:mx\.sink\.tern\.test"\} \d+/);
    expect(metrics).toMatch(/tern_spool_commit_seconds_bucket/);
    expect(metrics).toMatch(/tern_queue_recipients\{tier="spool"\}/);
    expect(metrics).toMatch(/tern_outbound_connections/);
  });
});

it('keeps DKIM keys readable only by their owner', () => {
  for (const f of fs.readdirSync(keyDir)) expect(fs.statSync(path.join(keyDir, f)).mode & 0o077).toBe(0);
});
