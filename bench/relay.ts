/**
 * The `relay` scenario: sink + Tern node + load generator on this machine, one JSON line out.
 * When Postfix is installed the same load is relayed through a private Postfix to the same sink (plain, and
 * with OpenDKIM when installed), so the comparison is one command:
 *
 *   npm run bench -- [--count 20000] [--size 5120] [--connections 50] [--site-connections 50] [--no-dkim] [--no-postfix] [--log info]
 *
 * --connections is the generator's concurrency; --site-connections the relay's outbound concurrency to the
 * sink (Tern's shaping `connections` and Postfix's destination concurrency limit alike). The bench node
 * accepts up to 1,000 sessions from the generator's one address (`max_connections_per_ip`), so higher
 * concurrency can be tried (bench/RESULTS.md, 2026-12-04: 100 on each side was not clearly faster).
 *
 * For investigations: TERN_NODE_ARGS passes flags to the node process ("--cpu-prof"), TERN_DKIM_WORKERS sets
 * its signing threads, TERN_SHOW_METRICS=1 prints its spool commit latency histograms to stderr, TERN_STDERR=1
 * passes the node's own stderr through.
 *
 * Tern runs as its own process (`tern start`, as an operator runs it), with an RSA-2048 DKIM key for the
 * sender domain and the spool fsynced before every 250. The generator and the sink share this process.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import YAML from 'yaml';
import { startSink, type Sink } from './sink.js';
import { runLoad, type LoadResult } from './loadgen.js';
import { opendkimAvailable, postfixAvailable, startPostfix } from './postfix.js';
import { generateDkimKey } from '../src/mta/dkim.js';

const ROOT = path.resolve(import.meta.dirname, '..');

export interface RunSummary {
  messages: number;
  size: number;
  accepted: number;
  injection_rate: number;
  delivered_rate: number;
  latency_ms: { p50: number; p99: number };
  peak_rss_mb?: number;
  duration_s: number;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

export function machine() {
  return { cores: os.availableParallelism(), cpu: os.cpus()[0]?.model ?? 'unknown', mem_gb: Math.round(os.totalmem() / 1024 ** 3), node: process.version };
}

/** VmHWM (peak resident set) of a process, in MB. */
export function peakRssMb(pid: number): number | undefined {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const m = /VmHWM:\s+(\d+) kB/.exec(status);
    return m ? Math.round(Number(m[1]) / 1024) : undefined;
  } catch {
    return undefined;
  }
}

/** CPU seconds (user + system) a process has used so far, all its threads included. */
export function cpuSeconds(pid: number): number {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
}

/** Resident memory split into anonymous (heap, buffers) and file-backed (mapped spool pages), in MB. */
export function rssBreakdownMb(pid: number): { anon_mb?: number; file_mb?: number } {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (name: string) => Number(new RegExp(`${name}:\\s+(\\d+) kB`).exec(status)?.[1] ?? NaN);
    return { anon_mb: Math.round(kb('RssAnon') / 1024), file_mb: Math.round(kb('RssFile') / 1024) };
  } catch {
    return {};
  }
}

export function currentRssMb(pid: number): number | undefined {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Math.round(Number(m[1]) / 1024) : undefined;
  } catch {
    return undefined;
  }
}

function percentile(sorted: number[], p: number): number {
  if (!sorted.length) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** Drives `count` messages into host:port and waits until the sink has all of them. */
export async function drive(sink: Sink, port: number, opts: { count: number; size: number; connections: number; auth?: { user: string; pass: string }; idPrefix: string; timeoutMs?: number }): Promise<Omit<RunSummary, 'peak_rss_mb'> & { load: LoadResult }> {
  const arrived = new Map<string, number>();
  const onMessage = (m: { id: string | null; receivedAt: number }) => {
    if (m.id && !arrived.has(m.id)) arrived.set(m.id, m.receivedAt);
  };
  sink.on('message', onMessage);
  const started = performance.timeOrigin + performance.now();
  const load = await runLoad({
    host: '127.0.0.1',
    port,
    count: opts.count,
    size: opts.size,
    connections: opts.connections,
    auth: opts.auth,
    idPrefix: opts.idPrefix,
    from: 'sender@bench.tern.test',
    recipients: (n) => [`user${n}@sink.tern.test`],
  });
  const wanted = load.acceptedIds;
  await sink.waitFor(() => wanted.every((id) => arrived.has(id)), opts.timeoutMs ?? 600_000);
  const last = Math.max(...wanted.map((id) => arrived.get(id)!));
  const latencies = wanted.map((id) => arrived.get(id)! - load.sentAt.get(id)!).sort((a, b) => a - b);
  const seconds = (last - started) / 1000;
  return {
    load,
    messages: opts.count,
    size: opts.size,
    accepted: load.accepted,
    injection_rate: Math.round(load.rate),
    delivered_rate: Math.round(wanted.length / seconds),
    latency_ms: { p50: Math.round(percentile(latencies, 50)), p99: Math.round(percentile(latencies, 99)) },
    duration_s: Math.round(seconds * 100) / 100,
  };
}

export interface TernProcess {
  pid: number;
  port: number;
  controlPort: number;
  stop(): Promise<void>;
}

function writeShaping(dir: string, defaults: Record<string, unknown>): string {
  const file = path.join(dir, 'shaping.yaml');
  const shipped = YAML.parse(fs.readFileSync(path.join(ROOT, 'config/shaping.yaml'), 'utf8'));
  shipped.default = { ...shipped.default, ...defaults };
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(file, YAML.stringify(shipped));
  return file;
}

/** Starts `tern start` as a child process with a bench config and waits until it listens. */
export async function startTern(opts: { sinkPort: number; dkim: boolean; logLevel: string; dir: string; shaping?: Record<string, unknown>; extra?: Record<string, unknown> }): Promise<TernProcess> {
  const port = await freePort();
  const controlPort = await freePort();
  const keys = [];
  if (opts.dkim) {
    const k = generateDkimKey({ domain: 'bench.tern.test', selector: 'bench', type: 'rsa', bits: 2048, dir: path.join(opts.dir, 'dkim') });
    keys.push({ domain: 'bench.tern.test', selector: 'bench', key_file: k.keyFile });
  }
  const config = {
    hostname: 'tern.bench.tern.test',
    data_dir: path.join(opts.dir, 'data'),
    log: { level: opts.logLevel, file: path.join(opts.dir, 'tern.log') },
    // inbound on any free port: the default (2525) is the sink's default too, and benchmarks run several nodes
    // the generator opens all its sessions from one address
    listeners: { submission: { host: '127.0.0.1', port, max_connections_per_ip: 1000 }, control: { host: '127.0.0.1', port: controlPort }, inbound: { host: '127.0.0.1', port: 0 } },
    smtp_users: [{ username: 'bench', password: 'bench-password', tenant: 'default' }],
    routes: [{ domain: '*.tern.test', host: '127.0.0.1', port: opts.sinkPort }],
    dkim: { keys, ...(process.env.TERN_DKIM_WORKERS ? { workers: Number(process.env.TERN_DKIM_WORKERS) } : {}) },
    // the shipped shaping rules with the benchmark's concurrency towards the sink
    shaping: { file: writeShaping(opts.dir, opts.shaping ?? {}) },
    ...opts.extra,
  };
  const node = await spawnTern(opts.dir, config);
  return { pid: node.pid, port, controlPort, stop: node.stop };
}

/**
 * Writes `config` to `<dir>/tern.yaml`, runs `tern start` with it as a child process and waits until it
 * listens. TERN_NODE_ARGS passes extra flags to the node process (e.g. "--cpu-prof" to profile it).
 */
export async function spawnTern(dir: string, config: Record<string, unknown>): Promise<{ pid: number; stop(): Promise<void> }> {
  const file = path.join(dir, 'tern.yaml');
  fs.writeFileSync(file, YAML.stringify(config));
  const nodeArgs = (process.env.TERN_NODE_ARGS ?? '').split(' ').filter(Boolean);
  const proc = spawn(process.execPath, [...nodeArgs, '--import', 'tsx', path.join(ROOT, 'src/cli.ts'), 'start', '--config', file], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout.on('data', (d) => (out += d));
  proc.stderr.on('data', (d) => { out += d; if (process.env.TERN_STDERR) process.stderr.write(d); });
  const exited = new Promise((r) => proc.on('exit', r));
  const until = Date.now() + 30_000;
  while (!/Tern is running/.test(out)) {
    if (proc.exitCode !== null || Date.now() > until) throw new Error(`tern did not start:\n${out}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    pid: proc.pid!,
    stop: async () => {
      proc.kill('SIGTERM');
      await exited;
    },
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      count: { type: 'string', default: '20000' },
      size: { type: 'string', default: '5120' },
      connections: { type: 'string', default: '50' },
      'site-connections': { type: 'string', default: '50' },
      'no-dkim': { type: 'boolean', default: false },
      'no-postfix': { type: 'boolean', default: false },
      log: { type: 'string', default: 'info' },
    },
  });
  const count = Number(values.count);
  const size = Number(values.size);
  const connections = Number(values.connections);
  const siteConnections = Number(values['site-connections']);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-bench-'));
  const sink = await startSink();
  const result: Record<string, unknown> = { scenario: 'relay', machine: machine(), params: { count, size, connections, site_connections: siteConnections, dkim: !values['no-dkim'] ? 'rsa-2048' : 'none', log: values.log } };
  try {
    // a short warm-up lets the JIT settle, as it would on a node that has been running
    const tern = await startTern({ sinkPort: sink.port, dkim: !values['no-dkim'], logLevel: values.log!, dir, shaping: { connections: siteConnections } });
    try {
      await drive(sink, tern.port, { count: Math.min(2000, count), size, connections, auth: { user: 'bench', pass: 'bench-password' }, idPrefix: 'warm' });
      const cpuBefore = cpuSeconds(tern.pid);
      const benchBefore = process.cpuUsage();
      const { load: _load, ...run } = await drive(sink, tern.port, { count, size, connections, auth: { user: 'bench', pass: 'bench-password' }, idPrefix: 'tern' });
      const bench = process.cpuUsage(benchBefore);
      if (process.env.TERN_SHOW_METRICS) {
        const m = await fetch(`http://127.0.0.1:${tern.controlPort}/metrics`).then((r) => r.text());
        process.stderr.write(m.split('\n').filter((l) => /commit_seconds_(bucket|sum|count)/.test(l)).join('\n') + '\n');
      }
      result.tern = {
        ...run,
        peak_rss_mb: peakRssMb(tern.pid),
        // CPU per message: the node (all threads) and this process (generator + sink)
        node_cpu_ms_per_msg: Math.round(((cpuSeconds(tern.pid) - cpuBefore) * 1000 * 1000) / count) / 1000,
        bench_cpu_ms_per_msg: Math.round(((bench.user + bench.system) / 1000 / count) * 1000) / 1000,
      };
    } finally {
      await tern.stop();
    }
    if (!values['no-postfix'] && postfixAvailable() && process.getuid?.() === 0) {
      for (const dkim of opendkimAvailable() ? [false, true] : [false]) {
        const pf = await startPostfix({
          listenPort: await freePort(),
          sinkPort: sink.port,
          dkim,
          dkimDomain: 'bench.tern.test',
          extraMainCf: { default_destination_concurrency_limit: siteConnections, smtp_destination_concurrency_limit: siteConnections },
        });
        try {
          await drive(sink, pf.port, { count: Math.min(2000, count), size, connections, idPrefix: `pfwarm${dkim ? 'd' : ''}` });
          const { load: _load, ...run } = await drive(sink, pf.port, { count, size, connections, idPrefix: `pf${dkim ? 'd' : ''}` });
          result[dkim ? 'postfix_opendkim' : 'postfix'] = run;
        } finally {
          await pf.stop();
        }
      }
      const t = result.tern as RunSummary;
      const p = result.postfix as RunSummary | undefined;
      if (p) result.tern_vs_postfix = Math.round((t.delivered_rate / p.delivered_rate) * 100) / 100;
    } else result.postfix = null;
  } finally {
    await sink.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  process.stdout.write(JSON.stringify(result) + '\n');
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
