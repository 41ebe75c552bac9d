/**
 * The `queued` scenario: memory with a large queue. Injects `--messages` × `--recipients` recipients while
 * the destination answers 451 to everything (so all of it stays queued), then reports the node's resident
 * memory. Prints one JSON line.
 *
 *   npx tsx bench/queued.ts [--messages 10000] [--recipients 100]
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { startSink } from './sink.js';
import { runLoad } from './loadgen.js';
import { currentRssMb, machine, peakRssMb, startTern } from './relay.js';

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { messages: { type: 'string', default: '10000' }, recipients: { type: 'string', default: '100' } } });
  const messages = Number(values.messages);
  const perMessage = Number(values.recipients);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-queued-'));
  const sink = await startSink({ decide: (ctx) => (ctx.stage === 'mail' ? '451 4.3.2 Not accepting mail right now' : undefined) });
  const tern = await startTern({ sinkPort: sink.port, dkim: true, logLevel: 'warn', dir, extra: { retry: { schedule: ['1h'], max_age: '3d' } } });
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
    // let the first delivery attempt (all deferred) run through the queue
    let last = -1;
    for (let i = 0; i < 600; i++) {
      await new Promise((r) => setTimeout(r, 1000));
      const res = await fetch(`http://127.0.0.1:${tern.controlPort}/metrics`).then((r) => r.text());
      const deferred = Number(/tern_deliveries_total\{result="deferred"[^}]*\} (\d+)/.exec(res)?.[1] ?? 0);
      if (deferred >= load.accepted * perMessage || deferred === last) break;
      last = deferred;
    }
    const result = {
      scenario: 'queued',
      machine: machine(),
      queued_recipients: load.accepted * perMessage,
      messages: load.accepted,
      recipients_per_message: perMessage,
      injection_rate_msgs: Math.round(load.accepted / injectSeconds),
      injection_rate_recipients: Math.round((load.accepted * perMessage) / injectSeconds),
      rss_mb: currentRssMb(tern.pid),
      peak_rss_mb: peakRssMb(tern.pid),
      spool_mb: Math.round(fs.statSync(path.join(dir, 'data', 'tern.lmdb')).size / 1024 ** 2),
    };
    process.stdout.write(JSON.stringify(result) + '\n');
  } finally {
    await tern.stop();
    await sink.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
