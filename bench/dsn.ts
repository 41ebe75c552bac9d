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
 * The "stored" part of "ingested" is not in this build yet.
 */
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadBounceRules, SHIPPED_BOUNCE_RULES_FILE, classifyResponse } from '../src/bounce/classify.js';
import { parseReport } from '../src/bounce/parse.js';
import { BounceParser } from '../src/bounce/parse-pool.js';
import { attributeReport, classifyReport } from '../src/bounce/report.js';
import { VerpCodec } from '../src/bounce/verp.js';
import { machine } from './relay.js';

const { values } = parseArgs({
  options: {
    count: { type: 'string', default: '20000' },
    threads: { type: 'string', default: '1' },
    concurrency: { type: 'string', default: '64' },
    'returned-kb': { type: 'string', default: '0' },
    'no-compare': { type: 'boolean', default: false },
  },
});
const count = Number(values.count);
const threads = Number(values.threads);
const concurrency = Number(values.concurrency);
const returnedKb = Number(values['returned-kb']);

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
process.stdout.write(JSON.stringify(result) + '\n');
