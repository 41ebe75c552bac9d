/**
 * The `tracking` scenario: how many pixel and click requests per second a node's tracking listener answers,
 * with every hit judged (machine or person) and recorded as an event, and what tracking adds to preparing a
 * message at acceptance.
 *
 *   npx tsx bench/tracking.ts [--duration 15] [--rounds 3] [--connections 100] [--tokens 20000] [--log warn] [--prepare 2000] [--only prepare|pixel|click]
 *
 * 1. prepare: the preparation step on this thread (RSA-2048 DKIM), for a 1-recipient 6 KB HTML message
 *    with 20 links, untracked and tracked; µs per message.
 * 2. pixel, click: `tern start` in its own process (tracking on, events written to its store), autocannon in
 *    this one, over `--tokens` distinct valid tokens (one per recipient, as real traffic has), keep-alive
 *    connections; req/s and latency of each of `--rounds` runs (the machine is shared: the best and the median
 *    are printed). Then the node is stopped and the events in its store counted: every answered request must
 *    have its event.
 *
 * Prints one JSON line per phase.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import autocannon from 'autocannon';
import { freePort, machine, spawnTern } from './relay.js';
import { generateDkimKey, loadSigningKey } from '../src/mta/dkim.js';
import { keyLookup, prepareMessage, type PrepareInput } from '../src/mta/prepare.js';
import { newMessageId } from '../src/mta/spool.js';
import { Store } from '../src/core/store.js';
import { TrackingTokens } from '../src/tracking/tokens.js';
import type { TrackingSettings } from '../src/tracking/personalise.js';

const BROWSER = 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36';

function sampleHtmlMessage(links: number): Buffer {
  const items = Array.from({ length: links }, (_, i) => `<tr><td style="padding:8px"><a href="https://shop.example.com/products/item-${i}?utm_source=newsletter&amp;utm_medium=email&amp;utm_campaign=spring#details">Product ${i}</a> — a short description of the product that makes the line longer.</td></tr>`);
  const html = `<!doctype html><html><head><meta charset="utf-8"><title>Spring sale</title></head><body><table>\r\n${items.join('\r\n')}\r\n</table></body></html>`;
  return Buffer.from(
    `From: Shop <news@bench.tern.test>\r\nTo: reader@sink.tern.test\r\nSubject: Spring sale\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n${html}\r\n`,
    'utf8',
  );
}

function benchPrepare(count: number, dir: string) {
  const k = generateDkimKey({ domain: 'bench.tern.test', selector: 'bench', type: 'rsa', bits: 2048, dir: path.join(dir, 'dkim-prepare') });
  const lookup = keyLookup([loadSigningKey('bench.tern.test', 'bench', fs.readFileSync(k.keyFile, 'utf8'))]);
  const tokens = new TrackingTokens([crypto.randomBytes(32)]);
  const raw = sampleHtmlMessage(20);
  const tracking: TrackingSettings = { baseUrl: 'https://t.bench.tern.test', track: true, unsubscribeTransactional: true, trapLink: true, mailDomain: 'bounces.bench.tern.test', recipients: ['reader@sink.tern.test'] };
  const input = (t: TrackingSettings | null): PrepareInput => ({ raw, hostname: 'bench', id: newMessageId(), utf8: false, tenant: 'default', feedbackSenderId: 'tern', tracking: t });
  const run = (t: TrackingSettings | null) => {
    for (let i = 0; i < 50; i++) prepareMessage(input(t), lookup, tokens); // warm up
    const started = performance.now();
    let size = 0;
    for (let i = 0; i < count; i++) {
      const r = prepareMessage(input(t), lookup, tokens);
      if (!r.ok) throw new Error(r.reason);
      size = r.message.byteLength;
    }
    return { us_per_message: Math.round(((performance.now() - started) * 1000) / count), bytes: size };
  };
  const untracked = run(null);
  const tracked = run(tracking);
  return { phase: 'prepare', messages: count, html_kb: Math.round(raw.length / 1024), links: 20, dkim: 'rsa-2048', untracked, tracked, tracking_adds_us: tracked.us_per_message - untracked.us_per_message };
}

interface TernProcess {
  dataDir: string;
  trackingPort: number;
  pid: number;
  stop(): Promise<void>;
}

async function startTern(dir: string, keyFile: string, logLevel: string): Promise<TernProcess> {
  const [submission, control, inbound, tracking] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const dataDir = path.join(dir, 'data');
  const config = {
    hostname: 'tern.bench.tern.test',
    data_dir: dataDir,
    log: { level: logLevel, file: path.join(dir, 'tern.log') },
    listeners: {
      submission: { host: '127.0.0.1', port: submission },
      control: { host: '127.0.0.1', port: control },
      inbound: { host: '127.0.0.1', port: inbound },
      tracking: { host: '127.0.0.1', port: tracking },
    },
    smtp_users: [{ username: 'bench', password: 'bench-password', tenant: 'default' }],
    // the scanner window would flag every click of a token made a moment ago
    tracking: { enabled: true, base_url: `http://127.0.0.1:${tracking}`, keys: [keyFile], scanner_window: '0s' },
  };
  const node = await spawnTern(dir, config);
  return { dataDir, trackingPort: tracking, pid: node.pid, stop: node.stop };
}

async function load(url: string, paths: string[], connections: number, duration: number) {
  let next = 0;
  const result = await autocannon({
    url,
    connections,
    duration,
    headers: { 'user-agent': BROWSER },
    requests: [
      {
        setupRequest: (req: Record<string, unknown>) => {
          req.path = paths[next++ % paths.length];
          return req;
        },
      },
    ],
  });
  return {
    requests: result.requests.total,
    requests_per_s: Math.round(result.requests.average),
    latency_ms: { p50: result.latency.p50, p90: result.latency.p90, p99: result.latency.p99, max: result.latency.max },
    errors: result.errors,
    timeouts: result.timeouts,
    status_2xx: result['2xx'],
    status_3xx: result['3xx'],
    other_status: result.non2xx - result['3xx'],
  };
}

async function benchListener(kind: 'pixel' | 'click', opts: { tokens: number; connections: number; duration: number; rounds: number; log: string; dir: string }) {
  const dir = fs.mkdtempSync(path.join(opts.dir, `${kind}-`));
  const keyFile = path.join(dir, 'tracking.key');
  const key = crypto.randomBytes(32);
  fs.writeFileSync(keyFile, key.toString('hex') + '\n', { mode: 0o600 });
  const tokens = new TrackingTokens([key]);
  const paths: string[] = [];
  const sentAt = Date.now();
  for (let n = 0; n < opts.tokens; n++) {
    const who = { msgId: newMessageId(), rcptIndex: 0, rcpt: `reader-${n}@example.com`, tenant: 'default', campaign: 'spring-sale', sentAt };
    paths.push(kind === 'pixel' ? `/o/${tokens.open(who)}` : `/c/${tokens.click({ ...who, link: n % 20, url: `https://shop.example.com/products/item-${n % 20}?utm_source=newsletter&utm_medium=email#details` })}`);
  }
  const tern = await startTern(dir, keyFile, opts.log);
  const url = `http://127.0.0.1:${tern.trackingPort}`;
  const warmup = await load(url, paths.slice(0, 2000), opts.connections, 2); // JIT warm-up, not in the figures
  const runs = [];
  for (let r = 0; r < opts.rounds; r++) runs.push({ ...(await load(url, paths, opts.connections, opts.duration)), load_average: os.loadavg()[0]!.toFixed(2) });
  await tern.stop(); // flushes the last group commit
  const store = new Store(tern.dataDir);
  let recorded = 0;
  const type = kind === 'pixel' ? 'opened' : 'clicked';
  for (let after = 0; ; ) {
    const batch = store.events(after, 50_000);
    if (!batch.length) break;
    recorded += batch.filter((e) => e.type === type).length;
    after = batch.at(-1)!.seq;
  }
  await store.close();
  const byRate = [...runs].sort((a, b) => b.requests_per_s - a.requests_per_s);
  return {
    phase: kind,
    path: kind === 'pixel' ? '/o/TOKEN' : '/c/TOKEN (302)',
    distinct_tokens: opts.tokens,
    connections: opts.connections,
    duration_s: opts.duration,
    log: opts.log,
    best: byRate[0],
    median: byRate[Math.floor(byRate.length / 2)],
    runs,
    // every answered request (warm-up included) must have its event; a few more were in flight at each run's end
    answered: warmup.requests + runs.reduce((n, r) => n + r.requests, 0),
    events_recorded: recorded,
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      duration: { type: 'string', default: '15' },
      rounds: { type: 'string', default: '3' },
      connections: { type: 'string', default: '100' },
      tokens: { type: 'string', default: '20000' },
      log: { type: 'string', default: 'warn' },
      prepare: { type: 'string', default: '2000' },
      only: { type: 'string' },
    },
  });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-bench-tracking-'));
  const common = { tokens: Number(values.tokens), connections: Number(values.connections), duration: Number(values.duration), rounds: Number(values.rounds), log: values.log!, dir };
  console.log(JSON.stringify({ scenario: 'tracking', machine: machine(), load_average: os.loadavg().map((l) => Math.round(l * 100) / 100) }));
  if (!values.only || values.only === 'prepare') console.log(JSON.stringify(benchPrepare(Number(values.prepare), dir)));
  if (!values.only || values.only === 'pixel') console.log(JSON.stringify(await benchListener('pixel', common)));
  if (!values.only || values.only === 'click') console.log(JSON.stringify(await benchListener('click', common)));
  fs.rmSync(dir, { recursive: true, force: true });
}

await main();
