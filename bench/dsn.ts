/**
 * The `dsn` scenario: bounces read and classified per second, the way the inbound listener will do it —
 * each message through BounceParser (a parsing thread with a deadline), then classifyReport() and VERP
 * attribution on the calling thread. The corpus is the committed bounce fixtures (DSNs and plain-text bounces
 * of twelve MTAs and providers), cycled. One JSON line out.
 *
 *   npx tsx bench/dsn.ts [--count 20000] [--threads 1] [--concurrency 64] [--returned-kb 0] [--no-compare]
 *
 * --returned-kb N makes every message carry N KB more of returned original (most MTAs return the whole
 * message; the fixtures return only a few lines).
 *
 * Also measured, for comparison (unless --no-compare): the same parse on the calling thread (no worker), the
 * classifier alone on the corpus' diagnostics, and mailparser 3.14 (keepDeliveryStatus) on the same corpus.
 *
 * Then (unless --no-ingest) DSNs *ingested*: parsed, classified, attributed to real spool messages and
 * stored (events, suppressions, recipient history committed and fsynced, as the inbound listener does before
 * its 250), per second. A node runs in this process (TernNode.start, spool on disk in --dir); it spools
 * messages of 100 recipients for a held domain (so nothing is attempted) and each DSN is about one distinct
 * recipient, sent back to its VERP address: 60 % user unknown (hard: bounce + suppression), 20 % mailbox
 * full (soft: bounce + soft count), 10 % policy block, 10 % delayed. Two ways in:
 *   direct  ingestReport() called with --concurrency in flight (the node's parser: 2 threads)
 *   smtp    over SMTP to the node's inbound listener, --connections clients each sending one DSN after another
 *
 *   [--ingest-count 10000] [--connections 8] [--dir /tmp] [--no-ingest]
 */
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadBounceRules, SHIPPED_BOUNCE_RULES_FILE, classifyResponse } from '../src/bounce/classify.js';
import { parseReport } from '../src/bounce/parse.js';
import { BounceParser } from '../src/bounce/parse-pool.js';
import { attributeReport, classifyReport } from '../src/bounce/report.js';
import { VerpCodec } from '../src/bounce/verp.js';
import os from 'node:os';
import { pino } from 'pino';
import { buildConfig } from '../src/core/config.js';
import { TernNode } from '../src/node.js';
import { ingestReport } from '../src/bounce/ingest.js';
import { buildDsn, ReportClient, type DsnRecipient } from './reports.js';
import { machine } from './relay.js';

const { values } = parseArgs({
  options: {
    count: { type: 'string', default: '20000' },
    threads: { type: 'string', default: '1' },
    concurrency: { type: 'string', default: '64' },
    'returned-kb': { type: 'string', default: '0' },
    'no-compare': { type: 'boolean', default: false },
    'ingest-count': { type: 'string', default: '10000' },
    connections: { type: 'string', default: '8' },
    dir: { type: 'string', default: os.tmpdir() },
    'no-ingest': { type: 'boolean', default: false },
  },
});
const count = Number(values.count);
const threads = Number(values.threads);
const concurrency = Number(values.concurrency);
const returnedKb = Number(values['returned-kb']);
const ingestCount = Number(values['ingest-count']);
const connections = Number(values.connections);

/** Lines of a returned message body, inserted before the closing delimiter (or at the end of a plain-text bounce). */
function withReturnedBody(raw: Buffer, kb: number): Buffer {
  if (kb <= 0) return raw;
  const text = raw.toString('latin1');
  const filler = 'Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore.\n'.repeat(Math.ceil((kb * 1024) / 100));
  const closing = /\n--[^\n]+--\s*$/.exec(text);
  const at = closing ? closing.index + 1 : text.length;
  return Buffer.from(text.slice(0, at) + filler + text.slice(at), 'latin1');
}

const dir = path.resolve(import.meta.dirname, '..', 'test', 'fixtures', 'bounces');
const rules = loadBounceRules(SHIPPED_BOUNCE_RULES_FILE);
const codec = new VerpCodec([Buffer.from('tern-bounce-fixtures-test-key-01')]);
// every fixture that is a bounce (RFC 3464 or an MTA's own words): the realistic inbound mix
const corpus = fs
  .readdirSync(dir)
  .filter((f) => f.endsWith('.eml') && !f.startsWith('hostile-'))
  .map((f) => fs.readFileSync(path.join(dir, f)))
  .filter((raw) => parseReport(raw).kind === 'dsn')
  .map((raw) => withReturnedBody(raw, returnedKb));
const meanSize = Math.round(corpus.reduce((n, r) => n + r.length, 0) / corpus.length);

const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

async function throughWorkers(n: number): Promise<{ per_s: number; p50_ms: number; p99_ms: number; cpu_ms_per_msg: number; unknown: number }> {
  const parser = new BounceParser({ threads });
  try {
    // warm the threads up (tsx start, JIT) before timing
    await Promise.all(corpus.map((raw) => parser.parse(raw)));
    const latencies: number[] = [];
    let unknown = 0;
    let next = 0;
    const cpu0 = cpuMs();
    const t0 = performance.now();
    const lane = async () => {
      while (next < n) {
        const raw = corpus[next++ % corpus.length]!;
        const start = performance.now();
        const report = classifyReport(await parser.parse(raw), rules);
        attributeReport(report, codec);
        latencies.push(performance.now() - start);
        if (report.kind !== 'dsn') unknown++;
      }
    };
    await Promise.all(Array.from({ length: concurrency }, lane));
    const seconds = (performance.now() - t0) / 1000;
    latencies.sort((a, b) => a - b);
    const pct = (p: number) => Math.round(latencies[Math.floor((latencies.length - 1) * p)]! * 100) / 100;
    // process.cpuUsage() counts every thread of the process: the parsing threads as well as this one
    return { per_s: Math.round(n / seconds), p50_ms: pct(0.5), p99_ms: pct(0.99), cpu_ms_per_msg: Math.round(((cpuMs() - cpu0) / n) * 1000) / 1000, unknown };
  } finally {
    await parser.close();
  }
}

function rate(n: number, fn: (i: number) => void): number {
  for (let i = 0; i < Math.min(n, 500); i++) fn(i); // warm-up
  const t0 = performance.now();
  for (let i = 0; i < n; i++) fn(i);
  return Math.round(n / ((performance.now() - t0) / 1000));
}

async function mailparserRate(n: number): Promise<number> {
  const { simpleParser } = await import('mailparser');
  for (const raw of corpus) await simpleParser(raw, { keepDeliveryStatus: true });
  const t0 = performance.now();
  for (let i = 0; i < n; i++) await simpleParser(corpus[i % corpus.length]!, { keepDeliveryStatus: true });
  return Math.round(n / ((performance.now() - t0) / 1000));
}

const result: Record<string, unknown> = {
  scenario: 'dsn',
  machine: machine(),
  params: { count, threads, concurrency, returned_kb: returnedKb, corpus_messages: corpus.length, corpus_mean_bytes: meanSize },
  parse_classify_attribute: await throughWorkers(count),
};
if (!values['no-compare']) {
  const diagnostics = corpus.flatMap((raw) => parseReport(raw).recipients).map((r) => ({ status: r.status, code: r.reply_code, text: r.diagnostic }));
  result.compare = {
    parse_on_calling_thread_per_s: rate(count, (i) => classifyReport(parseReport(corpus[i % corpus.length]!), rules)),
    classify_response_per_s: rate(count * 5, (i) => classifyResponse(rules, diagnostics[i % diagnostics.length]!)),
    mailparser_simpleparser_per_s: await mailparserRate(Math.min(count, 3000)),
  };
}
if (!values['no-ingest']) result.ingested = await ingested(ingestCount);
process.stdout.write(JSON.stringify(result) + '\n');

/** What came back about one recipient: the mix described at the top. */
function dsnRecipient(n: number, address: string): DsnRecipient {
  const k = n % 10;
  if (k < 6) return { address, status: '5.1.1', diagnostic: `550 5.1.1 <${address}>: Recipient address rejected: User unknown in virtual mailbox table`, remoteMta: 'mx.dsn.bench.tern.test' };
  if (k < 8) return { address, status: '5.2.2', diagnostic: '552 5.2.2 Mailbox full', remoteMta: 'mx.dsn.bench.tern.test' };
  if (k < 9) return { address, status: '5.7.1', diagnostic: '550 5.7.1 Service unavailable, client host blocked using zen.spamhaus.org', remoteMta: 'mx.dsn.bench.tern.test' };
  return { address, action: 'delayed', status: '4.4.1', diagnostic: '421 4.4.1 Connection timed out', remoteMta: 'mx.dsn.bench.tern.test' };
}

interface Lane {
  per_s: number;
  p50_ms: number;
  p99_ms: number;
  cpu_ms_per_dsn: number;
  failed: number;
}

async function ingested(n: number): Promise<Record<string, unknown>> {
  const dataDir = fs.mkdtempSync(path.join(values.dir!, 'tern-bench-dsn-'));
  const config = buildConfig({
    hostname: 'node.bench.tern.test',
    data_dir: dataDir,
    log: { level: 'silent' },
    listeners: { submission: { host: '127.0.0.1', port: 0 }, control: { host: '127.0.0.1', port: 0 }, inbound: { host: '127.0.0.1', port: 0, max_connections_per_ip: Math.max(20, connections) } },
    smtp_users: [{ username: 'bench', password: 'bench-password', tenant: 'default' }],
    dkim: { workers: 1 },
  });
  const node = await TernNode.start(config, { logger: pino({ level: 'silent' }), inlinePrepare: true });
  try {
    // spool 2n recipients that stay queued (their domain is held): each DSN is about a distinct one
    const domain = 'dsn.bench.tern.test';
    await node.queueAdmin.suspend({ domain }, 'bench: nothing leaves', null);
    const perMessage = 100;
    const targets: Array<{ verp: string; address: string }> = [];
    const t0 = performance.now();
    const body = Buffer.from('From: news@sender.bench.tern.test\r\nTo: list@dsn.bench.tern.test\r\nSubject: news\r\n\r\nHello.\r\n');
    const accepts: Array<Promise<unknown>> = [];
    for (let m = 0; m < Math.ceil((2 * n) / perMessage); m++) {
      const recipients = Array.from({ length: perMessage }, (_, i) => `u${m}.${i}@${domain}`);
      accepts.push(
        node.spool.accept({ tenant: 'default', sender: 'news@sender.bench.tern.test', recipients, body, messageId: `<m${m}@bench>`, listener: 'bench' }).then(({ msgId }) => {
          recipients.forEach((address, i) => targets.push({ verp: node.bounces.verp.encode(msgId, i, config.bounce.domain), address }));
        }),
      );
      if (accepts.length >= 20) await Promise.all(accepts.splice(0));
    }
    await Promise.all(accepts);
    const spooledIn = (performance.now() - t0) / 1000;
    const dsns = targets.map((t, k) => ({ verp: t.verp, raw: withReturnedBody(Buffer.from(buildDsn({ verp: t.verp, recipients: [dsnRecipient(k, t.address)] }), 'latin1'), returnedKb) }));
    const direct = dsns.slice(0, n);
    const smtp = dsns.slice(n, 2 * n);
    const eventsBefore = node.store.events(0, 10_000_000).length;

    // direct: what the listener does after DATA, without the socket
    const parser = new BounceParser({ threads: 2 });
    const deps = { parser, rules: node.bounces.rules, verp: node.bounces.verp, suppressions: node.bounces.suppressions, spool: node.spool, store: node.store, log: node.log };
    await Promise.all(corpus.slice(0, 8).map((raw) => parser.parse(raw))); // threads up
    const directLane = await timed(direct.length, concurrency, async (k) => {
      const d = direct[k]!;
      const out = await ingestReport(d.raw, { rcptTo: [d.verp], mailFrom: '', client: '127.0.0.1' }, deps);
      return out.result === 'attributed';
    });
    await parser.close();

    // over SMTP: the inbound listener (its own parser), several connections, one transaction after another
    const clients = await Promise.all(Array.from({ length: connections }, () => ReportClient.connect(node.ports.inbound)));
    await clients[0]!.send('', [`postmaster@${config.bounce.domain}`], corpus[0]!); // start the listener's parser threads
    // each lane has its connection: one transaction at a time on it
    const smtpLane = await timed(smtp.length, connections, async (k, lane) => {
      const d = smtp[k]!;
      const r = await clients[lane]!.send('', [d.verp], d.raw);
      return r.data !== null && r.data.startsWith('250 2.0.0 Ok: dsn attributed');
    });
    await Promise.all(clients.map((x) => x.close()));

    const events = node.store.events(0, 10_000_000).slice(eventsBefore);
    const count = (type: string) => events.filter((e) => e.type === type).length;
    return {
      params: { ingest_count: n, recipients_spooled: targets.length, spooled_in_s: Math.round(spooledIn * 10) / 10, connections, concurrency, mean_dsn_bytes: Math.round(dsns.reduce((x, d) => x + d.raw.length, 0) / dsns.length), data_dir: values.dir, loadavg_start: os.loadavg().map((x) => Math.round(x * 10) / 10) },
      direct: directLane,
      smtp: smtpLane,
      events: { bounced: count('bounced'), delayed: count('delayed'), suppression_added: count('suppression_added'), other: events.length - count('bounced') - count('delayed') - count('suppression_added') - 1 },
    };
  } finally {
    await node.stop();
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
}

/** Runs `work(k, lane)` for k in [0, n) with `lanes` in flight, each lane one call at a time, and times it. */
async function timed(n: number, lanes: number, work: (k: number, lane: number) => Promise<boolean>): Promise<Lane> {
  const latencies: number[] = [];
  let failed = 0;
  let next = 0;
  const cpu0 = cpuMs();
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: lanes }, async (_, lane) => {
      while (next < n) {
        const k = next++;
        const start = performance.now();
        if (!(await work(k, lane))) failed++;
        latencies.push(performance.now() - start);
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  latencies.sort((a, b) => a - b);
  const pct = (p: number) => Math.round(latencies[Math.floor((latencies.length - 1) * p)]! * 100) / 100;
  return { per_s: Math.round(n / seconds), p50_ms: pct(0.5), p99_ms: pct(0.99), cpu_ms_per_dsn: Math.round(((cpuMs() - cpu0) / n) * 1000) / 1000, failed };
}
