/**
 * The `queued` scenario: memory with a large queue. Injects `--messages` × `--recipients` recipients that
 * cannot leave, then reports the node's resident memory. Prints one JSON line.
 *
 *   npx tsx bench/queued.ts [--messages 10000] [--recipients 100] [--destination tarpit|defer] [--keep]
 *
 * --keep leaves the data directory for inspection. The output's spool_breakdown_mb says where the spool
 * file's pages went, per sub-database.
 *
 * tarpit: the destination accepts TCP connections and never greets (everything stays queued, untried).
 * defer:  the destination answers 451 to every transaction (every recipient is deferred once: the spool also
 *         holds a deferral record and event per recipient — the worst case).
 */
import net from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { startSink } from './sink.js';
import { runLoad } from './loadgen.js';
import { open } from 'lmdb';
import { currentRssMb, machine, peakRssMb, rssBreakdownMb, startTern } from './relay.js';

/** Where the spool file's pages went: MB per sub-database (branch + leaf + overflow pages), and the rest (free pages). */
export function spoolBreakdownMb(file: string): Record<string, number> {
  const root = open({ path: file, readOnly: true, maxDbs: 64 });
  try {
    const mb = (pages: number) => Math.round((pages * 4096) / 1024 ** 2);
    const out: Record<string, number> = {};
    let used = 0;
    const names = [...root.getKeys()].filter((k): k is string => typeof k === 'string'); // read all before opening any
    for (const name of names) {
      const s = root.openDB({ name }).getStats() as { treeBranchPageCount: number; treeLeafPageCount: number; overflowPages: number; entryCount: number };
      const pages = s.treeBranchPageCount + s.treeLeafPageCount + s.overflowPages;
      used += pages;
      if (mb(pages) > 0) out[`${name} (${s.entryCount} entries)`] = mb(pages);
    }
    out['free or unused pages'] = mb((root.getStats() as { lastPageNumber: number }).lastPageNumber - used);
    return out;
  } finally {
    root.close();
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { messages: { type: 'string', default: '10000' }, recipients: { type: 'string', default: '100' }, destination: { type: 'string', default: 'tarpit' }, keep: { type: 'boolean', default: false } },
  });
  const tarpit = values.destination === 'tarpit';
  const messages = Number(values.messages);
  const perMessage = Number(values.recipients);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-queued-'));
  const sink = await startSink({ decide: (ctx) => (ctx.stage === 'mail' ? '451 4.3.2 Not accepting mail right now' : undefined) });
  const held: net.Socket[] = [];
  const pit = net.createServer((s) => held.push(s.on('error', () => {})));
  await new Promise<void>((r) => pit.listen(0, '127.0.0.1', r));
  const destinationPort = tarpit ? (pit.address() as net.AddressInfo).port : sink.port;
  const tern = await startTern({
    sinkPort: destinationPort,
    dkim: true,
    logLevel: 'warn',
    dir,
    shaping: { connect_timeout: '1h' },
    extra: { retry: { schedule: ['1h'], max_age: '3d' } },
  });
  try {
    const started = Date.now();
    const load = await runLoad({
      host: '127.0.0.1',
      port: tern.port,
      count: messages,
      size: 1024,
      connections: 10,
      auth: { user: 'bench', pass: 'bench-password' },
      recipients: (n) => Array.from({ length: perMessage }, (_, i) => `q${n}.${i}@sink.tern.test`),
      idPrefix: 'queued',
    });
    const injectSeconds = (Date.now() - started) / 1000;
    if (!load.accepted) throw new Error(`no message was accepted: ${JSON.stringify(load.failures.slice(0, 3))} ${load.connectionErrors.slice(0, 3).join('; ')}`);
    // defer: let the first delivery attempt (all deferred) run through the queue
    let last = -1;
    for (let i = 0; i < 600 && !tarpit; i++) {
      await new Promise((r) => setTimeout(r, 1000));
      const res = await fetch(`http://127.0.0.1:${tern.controlPort}/metrics`).then((r) => r.text());
      const deferred = Number(/tern_deliveries_total\{result="deferred"[^}]*\} (\d+)/.exec(res)?.[1] ?? 0);
      if (deferred >= load.accepted * perMessage || deferred === last) break;
      last = deferred;
    }
    const result = {
      scenario: 'queued',
      destination: values.destination,
      machine: machine(),
      queued_recipients: load.accepted * perMessage,
      messages: load.accepted,
      recipients_per_message: perMessage,
      injection_rate_msgs: Math.round(load.accepted / injectSeconds),
      injection_rate_recipients: Math.round((load.accepted * perMessage) / injectSeconds),
      rss_mb: currentRssMb(tern.pid),
      ...rssBreakdownMb(tern.pid),
      peak_rss_mb: peakRssMb(tern.pid),
      health: await fetch(`http://127.0.0.1:${tern.controlPort}/healthz`).then((r) => r.json()),
      spool_mb: Math.round(fs.statSync(path.join(dir, 'data', 'tern.lmdb')).size / 1024 ** 2),
    };
    await tern.stop();
    let breakdown: Record<string, number> | string;
    try {
      breakdown = spoolBreakdownMb(path.join(dir, 'data', 'tern.lmdb'));
    } catch (err) {
      breakdown = `could not read the spool: ${(err as Error).message}`;
    }
    process.stdout.write(JSON.stringify({ ...result, spool_breakdown_mb: breakdown }) + '\n');
  } finally {
    await tern.stop();
    await sink.close();
    held.forEach((s) => s.destroy());
    pit.close();
    if (values.keep) process.stderr.write(`spool kept in ${dir}\n`);
    else fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
