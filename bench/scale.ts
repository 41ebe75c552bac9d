/**
 * The `scale` scenario: does the cost of scheduling a message stay flat (O(log n)) as the queue grows?
 * For each backlog size N, a fresh Tern node gets N queued recipients that stay queued, then relays a fixed
 * batch of fresh messages to a fast sink while the backlog sits in the same spool and the same scheduler.
 * Prints one JSON line.
 *
 *   npx tsx bench/scale.ts [--queued 10000,1000000] [--messages 20000] [--rounds 3] [--backlog deferred|tarpit]
 *                          [--recipients 100] [--connections 50] [--size 5120] [--dkim] [--memory-queue-limit N]
 *                          [--timeout 600]
 *
 * --timeout (seconds) bounds the wait for one round's mail at the sink; lower it with --backlog tarpit, where
 * fresh mail can wait behind the backlog for as long as the backlog holds the memory tier.
 *
 * The backlog: N / --recipients messages of --recipients recipients each, every recipient of a message on its
 * own domain (d0…d99.backlog.tern.test, routed to a destination of their own), so that the spool's schedule
 * index holds one entry per recipient: N entries, as many recipient records, N/100 bodies. It is loaded over
 * SMTP like any mail (100 recipients a message keeps that fast), then left in one of two states:
 *
 *   deferred (default)  the destination answers 451 to every transaction; every recipient is tried once and
 *                       rescheduled 12 h ahead (±10 % jitter, so the entries are spread through the index).
 *                       This is what a large queue is in practice: mail waiting for its next retry. The memory
 *                       tier is empty again, because nothing in the backlog is due.
 *   tarpit              the destination accepts TCP and never greets (connect_timeout 1h): the backlog is due
 *                       and untried, the scheduler holds min(N, memory_queue_limit) of it in memory (ready
 *                       queue, connections stuck connecting) and the rest waits in the index. Fresh mail can
 *                       only be admitted while the memory tier has room, so once N exceeds the limit this
 *                       mode measures head-of-line blocking, not the cost of an operation (see RESULTS.md).
 *
 * What is measured, per node, after a warm-up: --messages fresh messages of --size bytes, one recipient each,
 * injected over --connections connections and delivered to a fast sink (a different site from the backlog's)
 * by the same node, --rounds times. The nodes of every size stay up and the rounds go round-robin over them,
 * so slow drift in the load of a shared machine falls on every size alike.
 *   - delivered_rate: messages at the sink per second, from the first MAIL to the last arrival
 *   - latency_ms: MAIL written by the generator → message accepted at the sink (p50/p99)
 *   - scheduling_ms: 250 to the generator → RCPT of that message at the sink (p50/p99): everything between
 *     the spool commit and the first byte of the delivery — enqueue or a scan of the schedule index,
 *     routing, the ready queue, a connection taking the job. The scheduler's part without reception and DKIM.
 *   - node_cpu_ms_per_msg: the node's CPU (all threads) per fresh message during the round; the least noisy
 *     number on a shared machine, since waiting for the CPU does not count.
 *   - accept_commit_ms, result_commit_ms: mean time to commit an accepted message to the spool (through its
 *     fsync) and a delivery outcome, from the node's histograms: the B-tree writes, where a deeper tree would
 *     show first
 *   - backlog_attempts: backlog deliveries tried during the round (0 expected: the backlog stays put)
 * and, for the pre-load: injection time and rate, time until the backlog has settled, RSS, spool file size;
 * at the end, the queued count the node reports (`queued_after`) and how long a restart takes with the backlog
 * in the spool (`restart_s`: start-up reads the whole schedule index once).
 *
 * Why this shows O(log n): per fresh message the node inserts and later removes one entry in each of the
 * spool's B-trees (schedule, recipients, messages, bodies) that hold the backlog, the scanner seeks into the
 * schedule index at its cursor, and the in-memory tier is bounded by memory_queue_limit whatever N is. If any
 * step were linear in the queue, going from 10k to 1M queued recipients (100×) would show as a 100× drop in
 * throughput or rise in CPU per message; a B-tree one or two levels deeper costs a few page reads, which
 * is lost in the noise. Flat numbers across N are the claim; the ratio large/small is printed.
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { startSink, type Sink } from './sink.js';
import { runLoad } from './loadgen.js';
import { cpuSeconds, currentRssMb, machine, peakRssMb, rssBreakdownMb, startTern, type TernProcess } from './relay.js';

type BacklogMode = 'deferred' | 'tarpit';

interface Options {
  sizes: number[];
  messages: number;
  rounds: number;
  backlog: BacklogMode;
  recipients: number;
  connections: number;
  size: number;
  dkim: boolean;
  memoryQueueLimit?: number;
  timeoutMs: number;
}

const AUTH = { user: 'bench', pass: 'bench-password' };
const now = () => performance.timeOrigin + performance.now();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function percentile(sorted: number[], p: number): number {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

function median(values: number[]): number {
  const s = values.filter(Number.isFinite).sort((a, b) => a - b);
  if (!s.length) return NaN;
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

const round2 = (n: number) => Math.round(n * 100) / 100;

/**
 * The fast sink for fresh mail (recording when each recipient's RCPT arrives) and the backlog's destination:
 * a sink answering 451 to every MAIL, or a listener that never greets.
 */
async function startDestinations(mode: BacklogMode) {
  const rcptAt = new Map<string, number>();
  const arrivals = new Map<string, number>();
  /** ids the running round still waits for */
  const waiting = new Set<string>();
  const fresh = await startSink({
    decide: (ctx) => {
      if (ctx.stage === 'rcpt') {
        const to = ctx.to![ctx.to!.length - 1]!;
        if (!rcptAt.has(to)) rcptAt.set(to, now());
      }
      return undefined;
    },
  });
  fresh.on('message', (m) => {
    if (m.id && !arrivals.has(m.id)) arrivals.set(m.id, m.receivedAt);
    if (m.id) waiting.delete(m.id);
  });
  let backlogPort: number;
  let closeBacklog: () => Promise<void>;
  if (mode === 'deferred') {
    const deferring = await startSink({ decide: (ctx) => (ctx.stage === 'mail' ? '451 4.3.2 Not accepting mail right now' : undefined) });
    backlogPort = deferring.port;
    closeBacklog = () => deferring.close();
  } else {
    const held: net.Socket[] = [];
    const pit = net.createServer((s) => held.push(s.on('error', () => {})));
    await new Promise<void>((r) => pit.listen(0, '127.0.0.1', r));
    backlogPort = (pit.address() as net.AddressInfo).port;
    closeBacklog = async () => {
      held.forEach((s) => s.destroy());
      await new Promise((r) => pit.close(r));
    };
  }
  return { fresh, rcptAt, arrivals, waiting, backlogPort, close: async () => Promise.all([fresh.close(), closeBacklog()]) };
}

type Destinations = Awaited<ReturnType<typeof startDestinations>>;

interface Health {
  queued_recipients: number;
  recipients_in_memory: number;
}

async function health(tern: TernProcess): Promise<Health> {
  return fetch(`http://127.0.0.1:${tern.controlPort}/healthz`).then((r) => r.json() as Promise<Health>);
}

const metricsText = (tern: TernProcess) => fetch(`http://127.0.0.1:${tern.controlPort}/metrics`).then((r) => r.text());

/** Delivery results of one kind so far, every site together. */
async function deliveries(tern: TernProcess, result: string): Promise<number> {
  let total = 0;
  for (const m of (await metricsText(tern)).matchAll(new RegExp(`^tern_deliveries_total\\{result="${result}"[^}]*\\} (\\d+)`, 'gm'))) total += Number(m[1]);
  return total;
}

/** Sum and count of the spool's commit histograms: accepted messages (to fsync) and delivery outcomes. */
async function commitTimes(tern: TernProcess) {
  const text = await metricsText(tern);
  const read = (name: string) => Number(new RegExp(`^${name} (\\S+)`, 'm').exec(text)?.[1] ?? NaN);
  return {
    accept: { sum: read('tern_spool_commit_seconds_sum'), count: read('tern_spool_commit_seconds_count') },
    result: { sum: read('tern_spool_result_commit_seconds_sum'), count: read('tern_spool_result_commit_seconds_count') },
  };
}

interface Node {
  queued: number;
  tern: TernProcess;
  dir: string;
  preload: Record<string, unknown>;
  rounds: Array<Awaited<ReturnType<typeof measure>>>;
}

/** Starts `tern start` on the node's directory with the bench's routes: backlog domains to their own destination. */
function launch(dir: string, opts: Options, dest: Destinations): Promise<TernProcess> {
  return startTern({
    sinkPort: dest.fresh.port,
    dkim: opts.dkim,
    logLevel: 'warn',
    dir,
    shaping: { connections: opts.connections, ...(opts.backlog === 'tarpit' ? { connect_timeout: '1h' } : {}) },
    extra: {
      routes: [
        { domain: '*.backlog.tern.test', host: '127.0.0.1', port: dest.backlogPort },
        { domain: '*.tern.test', host: '127.0.0.1', port: dest.fresh.port },
      ],
      retry: { schedule: ['12h'], max_age: '3d' },
      ...(opts.memoryQueueLimit ? { delivery: { memory_queue_limit: opts.memoryQueueLimit } } : {}),
    },
  });
}

/** Starts a node and gives it `queued` recipients that stay queued; resolves once the backlog has settled. */
async function startNode(queued: number, opts: Options, dest: Destinations, root: string): Promise<Node> {
  const dir = path.join(root, `queued-${queued}`);
  const tern = await launch(dir, opts, dest);
  try {
    return await preload(queued, tern, dir, opts);
  } catch (err) {
    await tern.stop();
    throw err;
  }
}

/** Stops the node and starts it again on its spool: how long a restart takes with the backlog queued. */
async function restart(node: Node, opts: Options, dest: Destinations) {
  await node.tern.stop();
  const started = now();
  node.tern = await launch(node.dir, opts, dest);
  const seconds = (now() - started) / 1000;
  return { restart_s: round2(seconds), queued_after_restart: (await health(node.tern)).queued_recipients };
}

async function preload(queued: number, tern: TernProcess, dir: string, opts: Options): Promise<Node> {
  const perMessage = opts.recipients;
  const messages = Math.ceil(queued / perMessage);
  const started = now();
  const load = await runLoad({
    host: '127.0.0.1',
    port: tern.port,
    count: messages,
    size: 1024,
    connections: 10,
    auth: AUTH,
    from: 'backlog@bench.tern.test',
    recipients: (m) => Array.from({ length: Math.min(perMessage, queued - m * perMessage) }, (_, i) => `b${m}.${i}@d${i}.backlog.tern.test`),
    idPrefix: `backlog${queued}`,
  });
  const injected = now();
  if (load.accepted !== messages)
    throw new Error(`pre-load: ${load.accepted} of ${messages} messages accepted: ${JSON.stringify(load.failures.slice(0, 3))} ${load.connectionErrors.slice(0, 3).join('; ')}`);
  // settled: deferred — every recipient tried once and rescheduled, none left in memory;
  // tarpit — the memory tier has stopped filling
  let last = -1;
  for (;;) {
    await sleep(1000);
    const h = await health(tern);
    if (opts.backlog === 'deferred' && h.recipients_in_memory === 0 && (await deliveries(tern, 'deferred')) >= queued) break;
    if (opts.backlog === 'tarpit' && h.recipients_in_memory === last) break;
    last = h.recipients_in_memory;
    if (now() - injected > 4 * 3600_000) throw new Error(`pre-load of ${queued} did not settle in 4 h: ${JSON.stringify(h)}`);
  }
  const settled = now();
  const h = await health(tern);
  return {
    queued,
    tern,
    dir,
    rounds: [],
    preload: {
      messages,
      recipients_per_message: perMessage,
      inject_s: round2((injected - started) / 1000),
      inject_recipients_per_s: Math.round(queued / ((injected - started) / 1000)),
      settle_s: round2((settled - injected) / 1000),
      queued_recipients: h.queued_recipients,
      recipients_in_memory: h.recipients_in_memory,
      rss_mb: currentRssMb(tern.pid),
      ...rssBreakdownMb(tern.pid),
      spool_mb: Math.round(fs.statSync(path.join(dir, 'data', 'tern.lmdb')).size / 1024 ** 2),
    },
  };
}

/** Relays `count` fresh messages through the node and waits (bounded) until the sink has them all. */
async function measure(node: Node, dest: Destinations, opts: Options, label: string, count: number) {
  const { tern } = node;
  const cpuBefore = cpuSeconds(tern.pid);
  const backlogBefore = (await deliveries(tern, 'deferred')) + (await deliveries(tern, 'failed'));
  const commitsBefore = await commitTimes(tern);
  const started = now();
  const load = await runLoad({
    host: '127.0.0.1',
    port: tern.port,
    count,
    size: opts.size,
    connections: opts.connections,
    auth: AUTH,
    from: 'sender@bench.tern.test',
    recipients: (n) => [`${label}.${n}@fresh.tern.test`],
    idPrefix: label,
  });
  dest.waiting.clear();
  for (const id of load.acceptedIds) if (!dest.arrivals.has(id)) dest.waiting.add(id);
  let complete = true;
  await dest.fresh.waitFor(() => dest.waiting.size === 0, opts.timeoutMs).catch(() => (complete = false));
  const ended = now();
  const cpu = cpuSeconds(tern.pid) - cpuBefore;
  const backlogAttempts = (await deliveries(tern, 'deferred')) + (await deliveries(tern, 'failed')) - backlogBefore;
  const commits = await commitTimes(tern);
  const meanMs = (k: 'accept' | 'result') => round2(((commits[k].sum - commitsBefore[k].sum) * 1000) / (commits[k].count - commitsBefore[k].count));
  const latencies: number[] = [];
  const scheduling: number[] = [];
  let last = started;
  for (let n = 0; n < count; n++) {
    const id = `<${label}.${n}@bench.tern.test>`;
    const at = dest.arrivals.get(id);
    const acked = load.ackAt.get(id);
    const rcpt = dest.rcptAt.get(`${label}.${n}@fresh.tern.test`);
    if (at !== undefined) {
      latencies.push(at - load.sentAt.get(id)!);
      last = Math.max(last, at);
    }
    if (acked !== undefined && rcpt !== undefined) scheduling.push(rcpt - acked);
    dest.arrivals.delete(id);
    dest.rcptAt.delete(`${label}.${n}@fresh.tern.test`);
  }
  latencies.sort((a, b) => a - b);
  scheduling.sort((a, b) => a - b);
  const seconds = ((complete ? last : ended) - started) / 1000;
  return {
    complete,
    accepted: load.accepted,
    delivered: latencies.length,
    injection_rate: Math.round(load.rate),
    delivered_rate: Math.round(latencies.length / seconds),
    latency_p50_ms: Math.round(percentile(latencies, 50)),
    latency_p99_ms: Math.round(percentile(latencies, 99)),
    scheduling_p50_ms: round2(percentile(scheduling, 50)),
    scheduling_p99_ms: round2(percentile(scheduling, 99)),
    accept_commit_ms: meanMs('accept'),
    result_commit_ms: meanMs('result'),
    // per delivered message: meaningless when the round timed out with mail still queued
    node_cpu_ms_per_msg: complete ? Math.round((cpu * 1e6) / latencies.length) / 1000 : NaN,
    backlog_attempts: backlogAttempts,
    duration_s: round2(seconds),
  };
}

function summarize(node: Node) {
  const of = (k: keyof Node['rounds'][number]) => median(node.rounds.map((r) => r[k] as number));
  return {
    delivered_rate: Math.round(of('delivered_rate')),
    latency_p50_ms: Math.round(of('latency_p50_ms')),
    latency_p99_ms: Math.round(of('latency_p99_ms')),
    scheduling_p50_ms: round2(of('scheduling_p50_ms')),
    scheduling_p99_ms: round2(of('scheduling_p99_ms')),
    node_cpu_ms_per_msg: Math.round(of('node_cpu_ms_per_msg') * 1000) / 1000,
    accept_commit_ms: round2(of('accept_commit_ms')),
    result_commit_ms: round2(of('result_commit_ms')),
    all_complete: node.rounds.every((r) => r.complete),
    delivered_of_accepted: `${node.rounds.reduce((n, r) => n + r.delivered, 0)}/${node.rounds.reduce((n, r) => n + r.accepted, 0)}`,
  };
}

function parseOptions(): Options {
  const { values } = parseArgs({
    options: {
      queued: { type: 'string', default: '10000,1000000' },
      messages: { type: 'string', default: '20000' },
      rounds: { type: 'string', default: '3' },
      backlog: { type: 'string', default: 'deferred' },
      recipients: { type: 'string', default: '100' },
      connections: { type: 'string', default: '50' },
      size: { type: 'string', default: '5120' },
      dkim: { type: 'boolean', default: false },
      'memory-queue-limit': { type: 'string' },
      timeout: { type: 'string', default: '600' },
    },
  });
  const sizes = values.queued!.split(',').map((s) => Number(s.trim().replace(/_/g, '')));
  if (sizes.some((n) => !Number.isInteger(n) || n < 1)) throw new Error(`--queued: "${values.queued}" is not a list of recipient counts; write it like 10000,1000000`);
  if (values.backlog !== 'deferred' && values.backlog !== 'tarpit') throw new Error(`--backlog: "${values.backlog}" is not a backlog mode; use deferred or tarpit`);
  return {
    sizes,
    messages: Number(values.messages),
    rounds: Number(values.rounds),
    backlog: values.backlog,
    recipients: Number(values.recipients),
    connections: Number(values.connections),
    size: Number(values.size),
    dkim: values.dkim!,
    memoryQueueLimit: values['memory-queue-limit'] ? Number(values['memory-queue-limit']) : undefined,
    timeoutMs: Number(values.timeout) * 1000,
  };
}

async function main(): Promise<void> {
  const opts = parseOptions();
  const started = Date.now();
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-scale-'));
  const dest = await startDestinations(opts.backlog);
  const nodes: Node[] = [];
  try {
    for (const queued of opts.sizes) {
      const t = Date.now();
      const node = await startNode(queued, opts, dest, root);
      nodes.push(node);
      // a short warm-up lets the JIT settle, as it would on a node that has been running
      await measure(node, dest, opts, `warm${queued}`, Math.min(2000, opts.messages));
      node.preload.node_ready_s = Math.round((Date.now() - t) / 1000);
      process.stderr.write(`scale: ${queued} queued recipients loaded: ${JSON.stringify(node.preload)}\n`);
    }
    for (let r = 0; r < opts.rounds; r++) {
      // rotate the order so that no size always runs first after a pause
      for (let i = 0; i < nodes.length; i++) {
        const node = nodes[(i + r) % nodes.length]!;
        const round = await measure(node, dest, opts, `r${r}q${node.queued}`, opts.messages);
        node.rounds.push(round);
        process.stderr.write(`scale: round ${r + 1}, ${node.queued} queued: ${JSON.stringify(round)}\n`);
      }
    }
    const runs = [];
    for (const node of nodes) {
      const h = await health(node.tern);
      runs.push({
        queued_recipients: node.queued,
        preload: node.preload,
        median: summarize(node),
        rounds: node.rounds,
        queued_after: h.queued_recipients,
        rss_mb: currentRssMb(node.tern.pid),
        peak_rss_mb: peakRssMb(node.tern.pid),
        // start-up reads the whole schedule index once (to count what is queued)
        ...(await restart(node, opts, dest)),
      });
    }
    const first = runs[0]!.median;
    const lastRun = runs[runs.length - 1]!.median;
    process.stdout.write(
      JSON.stringify({
        scenario: 'scale',
        machine: machine(),
        load_average: os.loadavg().map(round2),
        params: {
          queued: opts.sizes,
          backlog: opts.backlog,
          backlog_recipients_per_message: opts.recipients,
          messages: opts.messages,
          rounds: opts.rounds,
          size: opts.size,
          connections: opts.connections,
          dkim: opts.dkim ? 'rsa-2048' : 'none',
          memory_queue_limit: opts.memoryQueueLimit ?? 'default',
        },
        runs,
        // largest backlog against the smallest: 1 means no cost from the queue's size
        throughput_ratio: round2(lastRun.delivered_rate / first.delivered_rate),
        cpu_per_msg_ratio: round2(lastRun.node_cpu_ms_per_msg / first.node_cpu_ms_per_msg),
        duration_s: Math.round((Date.now() - started) / 1000),
      }) + '\n',
    );
  } finally {
    for (const node of nodes) await node.tern.stop();
    await dest.close();
    fs.rmSync(root, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
